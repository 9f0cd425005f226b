"""The one place that decides how a model sees a conversation: chat template, BOS, end of turn, stops.

Data rendering, the worker, chat, evaluation, the API and export all ask `choose`, so training and
inference never drift apart. The order of preference:
1. the tokenizer's own chat template (what the model's authors trained with); a tokenizer with several
   named templates (transformers keeps them as a dict: additional_chat_templates/*.jinja beside chat_template.jinja,
   or a list in tokenizer_config.json) uses its `default`, and its `tool_use` one when tools are given;
2. the model family's own format, recognised from the vocabulary and config (Gemma turns,
   Llama-3 headers, Phi-3 tags, ChatML for Qwen/SmolLM, Mistral [INST]), written with the real
   special tokens the vocabulary already has;
3. a generic ChatML fallback whose two markers are added to the vocabulary as special tokens
   (as TRL's clone_chat_template does), with the new embedding rows trained by the LoRA run.

BOS: the rendered ids start with BOS exactly when the tokenizer adds one to plain text (never twice).
Stops: every end-of-turn id plus EOS, as a list (generation_config.eos_token_id takes a list).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

_SYSTEM_FIRST = (  # families without a system role put the system text at the top of the first user turn
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first = '' -%}{%- set loop_messages = messages -%}{%- endif -%}")

FAMILY_TEMPLATES = {
    # Gemma 1/2/3: <start_of_turn>user ... <end_of_turn>, the assistant is "model", no system role.
    "gemma": _SYSTEM_FIRST + (
        "{{ bos_token }}{%- for message in loop_messages -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "{{ '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + message['content'] | trim"
        " + '<end_of_turn>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"),
    # Llama 3.x: header tokens around the role, <|eot_id|> ends every turn.
    "llama3": (
        "{{ bos_token }}{%- for message in messages -%}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
        " + '<|eot_id|>' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"),
    # Phi-3: <|user|> / <|assistant|> / <|system|> tags, <|end|> ends every turn.
    "phi3": (
        "{%- for message in messages -%}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"),
    # ChatML (Qwen, SmolLM, ...): <|im_start|>role ... <|im_end|>.
    "chatml": (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"),
    # Mistral v0.x: [INST] ... [/INST] answer</s>; the system text opens the first instruction.
    "mistral": _SYSTEM_FIRST + (
        "{{ bos_token }}{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'user' -%}{{ '[INST] ' + (first if loop.first else '') + message['content']"
        " | trim + ' [/INST]' }}{%- else -%}{{ ' ' + message['content'] | trim + eos_token }}{%- endif -%}"
        "{%- endfor -%}"),
}

# The tokens that show a family's format is native to this vocabulary (each must be one token).
_FAMILY_MARKERS = {
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "phi3": ("<|user|>", "<|assistant|>", "<|end|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
}
_END_OF_TURN = {"gemma": "<end_of_turn>", "llama3": "<|eot_id|>", "phi3": "<|end|>", "chatml": "<|im_end|>"}
_MODEL_TYPE_FAMILY = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma",
                      "phi3": "phi3", "qwen2": "chatml", "qwen3": "chatml", "mistral": "mistral",
                      "mixtral": "mistral"}
FALLBACK_MARKERS = ("<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class TemplateChoice:
    template: str  # the Jinja chat template used for training and inference
    source: str  # "tokenizer", "family", or "fallback"
    family: str  # gemma, llama3, phi3, chatml, mistral, or "own" for the tokenizer's template
    end_of_turn: str | None  # the token that ends an assistant turn (trained), None when EOS does
    add_bos: bool  # the ids must start with BOS (the tokenizer adds one to plain text)
    stop_ids: list[int] = field(default_factory=list)  # generation stops on any of these
    added_tokens: list[str] = field(default_factory=list)  # fallback markers added to the vocabulary
    tool_template: str | None = None  # the tokenizer's own `tool_use` template, used when tools are given

    def for_tools(self, tools: bool) -> str:
        """The template text for a conversation with (`tools`) or without tool definitions."""
        return self.tool_template if tools and self.tool_template else self.template

    @property
    def trained_tokens(self) -> list[str]:
        """Marker tokens whose embedding rows a LoRA run trains beside the adapter.

        The fallback's markers are new rows. A family format chosen because the tokenizer has no chat
        template usually means a base model whose turn tokens exist but were never trained (Gemma-3
        270M base: p(<end_of_turn>) < 1e-4 after 20 LoRA-only steps, so answers never stop); LoRA on
        the linear layers barely moves their logits, training the rows makes the turn end learnable.
        """
        if self.source == "fallback":
            return list(self.added_tokens)
        return list(_FAMILY_MARKERS.get(self.family, ())) if self.source == "family" else []

    def why(self) -> str:
        """One human sentence: which template, and why."""
        bos = "BOS added once at the start" if self.add_bos else "no BOS (the tokenizer adds none)"
        stops = f"stops on ids {self.stop_ids}"
        if self.source == "tokenizer":
            head = "The tokenizer's own chat template"
        elif self.source == "family":
            head = (f"The tokenizer has no chat template, so the {self.family} family's own format is used "
                    "(recognised from its vocabulary/config, with its real special tokens"
                    + (f"; their embedding rows are trained with the adapter: {', '.join(self.trained_tokens)})"
                       if self.trained_tokens else ")"))
        else:
            added = ", ".join(self.added_tokens) or "none"
            head = ("The tokenizer has no chat template and no known family format, so ChatML is used with "
                    f"its markers as special tokens (added to the vocabulary: {added}; their embedding rows "
                    "are trained with the adapter). A model never trained on ChatML must learn it")
        return f"{head}; {bos}; end of turn {self.end_of_turn or 'EOS'}; {stops}."


def _single_token_id(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return int(ids[0])
    return None


def _family(tokenizer, model_type: str | None) -> str | None:
    for family, markers in _FAMILY_MARKERS.items():
        if all(_single_token_id(tokenizer, m) is not None for m in markers):
            return family
    return _MODEL_TYPE_FAMILY.get(model_type or "")


def _model_type(tokenizer, config) -> str | None:
    if config is not None:
        return getattr(config, "model_type", None)
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if (folder / "config.json").is_file():
        import json

        try:
            return json.loads((folder / "config.json").read_text()).get("model_type")
        except (OSError, ValueError):
            return None
    return None


def adds_bos(tokenizer) -> bool:
    """True when the tokenizer puts BOS in front of plain text (what the model saw in pre-training)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _end_of_turn_after(tokenizer, template: str) -> str | None:
    """The special token the template writes right after an assistant answer (its end of turn)."""
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "ANSWER7"}]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    after = text[text.rfind("ANSWER7") + len("ANSWER7"):].lstrip(" \t")
    specials = sorted({*map(str, tokenizer.all_special_tokens),
                       *(t.content for t in tokenizer.added_tokens_decoder.values())}, key=len, reverse=True)
    return next((s for s in specials if s and after.startswith(s)), None)


def own_templates(tokenizer) -> dict[str, str]:
    """The tokenizer's own chat templates by name ({"default": ...} for a single one; {} for none).

    A dict without a `default` that holds one template uses that one as the default.
    """
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str):
        return {"default": own} if own.strip() else {}
    if not isinstance(own, dict):
        return {}
    named = {str(k): v for k, v in own.items() if isinstance(v, str) and v.strip()}
    if "default" not in named and len(named) == 1:
        named["default"] = next(iter(named.values()))
    return named


def choose(tokenizer, config=None) -> TemplateChoice:
    """Decide the template, BOS, end-of-turn token and stop ids for this tokenizer (and model config)."""
    own = own_templates(tokenizer)
    if "default" in own:
        template, source, family = own["default"], "tokenizer", "own"
        end = _end_of_turn_after(tokenizer, template)
    else:
        family = _family(tokenizer, _model_type(tokenizer, config))
        if family:
            template, source = FAMILY_TEMPLATES[family], "family"
            end = _END_OF_TURN.get(family)
        else:
            template, source, family, end = FAMILY_TEMPLATES["chatml"], "fallback", "chatml", "<|im_end|>"
    added = [m for m in FALLBACK_MARKERS if source == "fallback" and _single_token_id(tokenizer, m) is None]
    tool_template = own.get("tool_use") if source == "tokenizer" else None
    return TemplateChoice(template, source, family, end, adds_bos(tokenizer), stop_ids(tokenizer, end, config), added,
                          tool_template)


def stop_ids(tokenizer, end_of_turn: str | None = None, config=None) -> list[int]:
    """EOS, the end-of-turn token and any stop ids the model's generation config already lists."""
    ids: list[int] = []
    candidates = [tokenizer.eos_token_id, _single_token_id(tokenizer, end_of_turn) if end_of_turn else None]
    gen = getattr(config, "eos_token_id", None) if config is not None else None
    candidates += gen if isinstance(gen, list) else [gen]
    for i in candidates:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


# ---------------------------------------------------------------- using the choice


def prepare_tokenizer(tokenizer, config=None) -> TemplateChoice:
    """Set the chosen template on the tokenizer (and add fallback markers as special tokens), so
    every later apply_chat_template and every saved copy carries it. Returns the choice."""
    choice = choose(tokenizer, config)
    if choice.added_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(choice.added_tokens)},
                                     replace_extra_special_tokens=False)
        choice = replace(choice, stop_ids=stop_ids(tokenizer, choice.end_of_turn, config))
    if isinstance(tokenizer.chat_template, dict):  # named templates stay (a saved copy keeps tool_use too)
        tokenizer.chat_template = {**tokenizer.chat_template, "default": choice.template}
    else:
        tokenizer.chat_template = choice.template
    tokenizer.studio_template = choice  # later lookups give the same answer, with the same "why"
    return choice


def current(tokenizer) -> TemplateChoice:
    """The choice made for this tokenizer (made now if it was loaded outside load_tokenizer)."""
    cached = getattr(tokenizer, "studio_template", None)
    if cached is not None and own_templates(tokenizer).get("default") == cached.template:
        return cached
    return choose(tokenizer)  # never prepared, or its template was changed since


def prepare_model(model, tokenizer) -> None:
    """Make the model fit the tokenizer: room for fallback markers, stop ids in its generation config."""
    choice = current(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.eos_token_id = stop_ids(tokenizer, choice.end_of_turn, gen)
        if gen.pad_token_id is None:
            gen.pad_token_id = tokenizer.pad_token_id


def apply(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text through the chosen template (BOS included where the template writes it)."""
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(clean, chat_template=current(tokenizer).template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def with_bos(tokenizer, ids: list[int]) -> list[int]:
    """`ids` starting with exactly one BOS where the tokenizer expects one, else unchanged."""
    if not current(tokenizer).add_bos:
        return list(ids)
    bos = tokenizer.bos_token_id
    start = 0
    while start < len(ids) and ids[start] == bos:
        start += 1
    return [bos, *ids[start:]]


def encode(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    text = apply(tokenizer, messages, add_generation_prompt)
    return with_bos(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])


def describe(tokenizer) -> str:
    """The one-line "which template and why" every tab and command shows."""
    return current(tokenizer).why()


def save(tokenizer, folder: str | Path, model_config=None) -> None:
    """Write chat_template.jinja and a generation_config.json with the stop ids beside a model/adapter."""
    import json

    folder = Path(folder)
    choice = current(tokenizer)
    (folder / "chat_template.jinja").write_text(choice.template, encoding="utf-8")
    gen_path = folder / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    gen.update(eos_token_id=choice.stop_ids, pad_token_id=tokenizer.pad_token_id)
    if choice.add_bos:
        gen["bos_token_id"] = tokenizer.bos_token_id
    gen_path.write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
