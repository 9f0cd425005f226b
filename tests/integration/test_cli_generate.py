"""End to end through the CLI: the bundled model (converted from its GGUF) answers on topic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=600)


def test_generate_answers_a_medical_question_on_topic(bundled_dir):
    out = _cli("generate", "--model", "bundled", "--max-new-tokens", "60",
               "What are the symptoms of type 2 diabetes?")
    assert out.returncode == 0, out.stderr[-2000:]
    answer = out.stdout.lower()
    assert len(answer.split()) >= 15
    topic = ("thirst", "urination", "fatigue", "blurred", "hunger", "weight", "blood sugar", "glucose", "insulin",
             "hyperglycemia")
    assert sum(word in answer for word in topic) >= 2


def test_conversion_from_the_gguf_shows_progress_and_is_reused(tmp_path, bundled_dir):
    env = dict(os.environ, STUDIO_HOME=str(tmp_path / "home"))
    first = _cli("model", "info", "--model", "bundled", "--quant", "fp32", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Converting SmolLM2-135M-Instruct.Q4_1.gguf" in first.stderr
    assert "LlamaForCausalLM" in first.stdout and "134.5 M" in first.stdout
    second = _cli("model", "info", "--model", "bundled", "--quant", "fp32", env=env)
    assert "Converting" not in second.stderr  # later loads use the converted folder


def test_cli_errors_say_what_to_do(tmp_path):
    out = _cli("model", "info", "--model", str(tmp_path / "missing"))
    assert out.returncode == 2 and "does not exist" in out.stderr and "fix:" in out.stderr
    (tmp_path / "empty").mkdir()
    out = _cli("generate", "--model", str(tmp_path / "empty"), "hi")
    assert out.returncode == 2 and "no config.json" in out.stderr


def test_hardware_command():
    out = _cli("hardware")
    assert out.returncode == 0 and "CPU" in out.stdout and "RAM" in out.stdout
