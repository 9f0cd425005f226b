"""Reward functions for GRPO: presets with TRL's signature, `f(prompts, completions, **row) -> list[float]`.

TRL calls each with the prompts, the sampled completions (plain strings, or `[{"role": "assistant", "content":
...}]` for conversational data) and every other dataset column, repeated per completion: the studio's GRPO rows
carry `answer`, the reference answer of the prepared dataset. The same functions score the held-out answers in
`studio.evaluation` (mean reward, exact-match accuracy) and the Train tab's reward preview, so what a run is
rewarded for is what Evaluate measures.

Presets (`RewardSpec.preset`): numeric_match, exact_match (final answer against the reference, read by
`extract_answer`), regex, length, json, judge (an OpenAI-compatible endpoint and a rubric), file (your
`reward(prompts, completions, **row)`; run in the worker; refused on a hosted studio).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from studio.config import RewardSpec
from studio.errors import ConfigError, StudioError

RewardFn = Callable[..., list[float]]
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
JUDGE_SCORE = re.compile(r"\b(10|\d)(?:\.\d+)?\b")


def text_of(completion) -> str:
    """A completion as text: TRL passes strings, or message lists for conversational prompts."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text: str, how: str = "last_number") -> str | None:
    """The final answer in a completion: the last number, the last \\boxed{} or the last <answer> tag."""
    if how == "boxed":
        found = _boxed(text)
    elif how == "answer_tag":
        tags = ANSWER_TAG.findall(text)
        found = tags[-1] if tags else None
    else:
        numbers = NUMBER.findall(text)
        found = numbers[-1] if numbers else None
    return found.strip() if found is not None else None


def as_number(text: str | None) -> float | None:
    if text is None:
        return None
    numbers = NUMBER.findall(text)
    if not numbers:
        return None
    try:
        return float(numbers[-1].replace(",", ""))
    except ValueError:
        return None


def _normal(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def _references(row: dict, n: int) -> list[str]:
    answers = row.get("answer")
    if answers is None:
        raise StudioError("The match reward needs a reference answer, and the rows have none.",
                          "Use a dataset whose rows end with the assistant's answer (any SFT format).")
    return [str(a) for a in answers][:n]


def numeric_match(extract: str = "last_number") -> RewardFn:
    def reward(prompts, completions, **row) -> list[float]:
        scores = []
        for completion, reference in zip(completions, _references(row, len(completions)), strict=True):
            got, want = as_number(extract_answer(text_of(completion), extract)), as_number(reference)
            scores.append(1.0 if got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6,
                                                                                        abs_tol=1e-9) else 0.0)
        return scores
    return reward


def exact_match(extract: str = "last_number") -> RewardFn:
    def reward(prompts, completions, **row) -> list[float]:
        scores = []
        for completion, reference in zip(completions, _references(row, len(completions)), strict=True):
            got = extract_answer(text_of(completion), extract)
            want = extract_answer(reference, extract) or reference
            scores.append(1.0 if got is not None and _normal(got) == _normal(want) else 0.0)
        return scores
    return reward


def regex(pattern: str) -> RewardFn:
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise ConfigError(f"The regex reward's pattern {pattern!r} is not a valid regular expression: {exc}.",
                          "Fix the pattern (Python `re` syntax); test it on an answer in the reward preview.") from exc

    def reward(prompts, completions, **row) -> list[float]:
        return [1.0 if compiled.search(text_of(c)) else 0.0 for c in completions]
    return reward


def length(target: int) -> RewardFn:
    """1 at `target` words, falling linearly to 0 at 0 words and at twice the target."""
    def reward(prompts, completions, **row) -> list[float]:
        words = [len(text_of(c).split()) for c in completions]
        return [max(0.0, 1.0 - abs(n - target) / target) for n in words]
    return reward


def _load_schema(path: str) -> dict | None:
    if not path:
        return None
    file = Path(path).expanduser()
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"The json reward's schema {file} cannot be read: {exc}.",
                          "Point schema at a JSON Schema file, or leave it empty to reward any valid JSON.") from exc


def _json_text(text: str) -> str:
    """The JSON inside a completion: a ```json fenced block when there is one, else the whole text."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    return (fenced.group(1) if fenced else text).strip()


def valid_json(schema_path: str = "") -> RewardFn:
    import jsonschema

    schema = _load_schema(schema_path)

    def score(text: str) -> float:
        try:
            value = json.loads(_json_text(text))
        except ValueError:
            return 0.0
        if schema is None:
            return 1.0
        return 1.0 if jsonschema.Draft202012Validator(schema).is_valid(value) else 0.0

    def reward(prompts, completions, **row) -> list[float]:
        return [score(text_of(c)) for c in completions]
    return reward


def _judge_prompt(rubric: str, prompt, completion: str) -> str:
    question = text_of(prompt[-1:]) if isinstance(prompt, list) else str(prompt)
    return (f"Score the answer from 0 (bad) to 10 (perfect) by this rubric:\n{rubric}\n\n"
            f"Question:\n{question}\n\nAnswer:\n{completion}\n\nReply with the score only, a whole number.")


def judge(spec: RewardSpec) -> RewardFn:
    """An LLM behind any OpenAI-compatible endpoint (the studio's own /v1 included) scores 0-10; scaled to 0-1."""
    from openai import OpenAI

    key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
    client = OpenAI(base_url=spec.endpoint, api_key=key or "none", timeout=60.0, max_retries=1)

    def score(prompt, completion: str) -> float:
        try:
            reply = client.chat.completions.create(
                model=spec.model or "default", max_tokens=8, temperature=0.0,
                messages=[{"role": "user", "content": _judge_prompt(spec.rubric, prompt, completion)}])
        except Exception as exc:  # noqa: BLE001 - the openai client raises many kinds; all mean the same here
            raise StudioError(f"The judge at {spec.endpoint} did not answer: {type(exc).__name__}: {exc}",
                              "Check the endpoint URL, the model name and the API key variable; the studio's own "
                              "API is http://127.0.0.1:7860/v1 with a model loaded in the Model tab.") from exc
        found = JUDGE_SCORE.search(reply.choices[0].message.content or "")
        return min(float(found.group(1)), 10.0) / 10.0 if found else 0.0

    def reward(prompts, completions, **row) -> list[float]:
        return [score(p, text_of(c)) for p, c in zip(prompts, completions, strict=True)]
    return reward


# ---------------------------------------------------------------- a custom reward file


def check_file(path: str) -> Path:
    """The reward file, parsed (not run) to check it defines `reward`; refused on a hosted studio."""
    from studio import policy

    if policy.hosted():
        raise StudioError("Custom reward files are off on a hosted studio: they run arbitrary Python.",
                          "Use a preset reward (numeric_match, exact_match, regex, length, json, judge).")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"The reward file {file} does not exist.", "Check the path in the reward's path setting.")
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise ConfigError(f"The reward file {file.name} does not parse: {exc}.", "Fix the Python syntax.") from exc
    if not any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "reward" for n in tree.body):
        raise ConfigError(f"The reward file {file.name} defines no function named reward.",
                          "Define def reward(prompts, completions, **row) -> list[float] at the top level.")
    return file.resolve()


def load_file(path: str) -> RewardFn:
    """Import the reward file and return its `reward` (errors in the import say which file and why)."""
    file = check_file(path)
    spec = importlib.util.spec_from_file_location(f"studio_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in user code is reported with its file
        raise ConfigError(f"Importing the reward file {file.name} failed: {type(exc).__name__}: {exc}",
                          "Fix the file (run `python " + str(file) + "` to see the error), then start again.") from exc
    return module.reward


# ---------------------------------------------------------------- building a run's rewards


def build_one(spec: RewardSpec) -> RewardFn:
    if spec.preset == "numeric_match":
        return numeric_match(spec.extract)
    if spec.preset == "exact_match":
        return exact_match(spec.extract)
    if spec.preset == "regex":
        return regex(spec.pattern)
    if spec.preset == "length":
        return length(spec.target)
    if spec.preset == "json":
        return valid_json(spec.schema)
    if spec.preset == "judge":
        return judge(spec)
    return load_file(spec.path)


def names(specs: list[RewardSpec]) -> list[str]:
    """One name per reward, as the curves and the completions table show them (numeric_match, regex, regex_2...)."""
    seen: dict[str, int] = {}
    out = []
    for spec in specs:
        seen[spec.preset] = seen.get(spec.preset, 0) + 1
        out.append(spec.preset if seen[spec.preset] == 1 else f"{spec.preset}_{seen[spec.preset]}")
    return out


def build(specs: list[RewardSpec]) -> list[RewardFn]:
    """The run's reward functions, each named for TRL's logs (rewards/<name>/mean); file rewards are imported now."""
    functions = []
    for spec, name in zip(specs, names(specs), strict=True):
        inner = build_one(spec)

        def named(prompts, completions, _inner=inner, **row) -> list[float]:
            return [float(x) if x is not None else None for x in _inner(prompts, completions, **row)]

        named.__name__ = name
        functions.append(named)
    return functions


def check(specs: list[RewardSpec], run_code: bool = False) -> None:
    """Everything about the rewards that can fail before the model loads: patterns, schema files, reward files
    (parsed; imported too with `run_code`, which only the worker asks for: user code never runs in the app)."""
    for spec in specs:
        if spec.preset == "file":
            load_file(spec.path) if run_code else check_file(spec.path)
        elif spec.preset in ("regex", "json"):
            build_one(spec)


def score(specs: list[RewardSpec], prompts: list, completions: list, answers: list[str]) -> dict[str, list[float]]:
    """Each reward's scores for the completions (and `total`, the weighted sum TRL trains on)."""
    scores = {name: fn(prompts, completions, answer=answers)
              for name, fn in zip(names(specs), build(specs), strict=True)}
    weights = [s.weight for s in specs]
    scores["total"] = [sum(w * (v if v is not None else 0.0) for w, v in zip(weights, column, strict=True))
                       for column in zip(*[scores[n] for n in names(specs)], strict=True)]
    return scores
