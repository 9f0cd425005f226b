"""GRPO reward presets on hand-made completions, the custom reward file (loaded, and refused when hosted), the
run spec's grpo / kto blocks and their validation, and KTO label detection."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml

from studio import rewards
from studio.config import ConfigError, RewardSpec, RunSpec, from_dict
from studio.data import kto
from studio.errors import StudioError

CHAT = [{"role": "user", "content": "Sam has 3 apples and buys 6 more. How many?"}]


def _as_messages(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_extraction_reads_the_last_number_a_boxed_answer_or_an_answer_tag():
    assert rewards.extract_answer("3 + 6 = 9. Sam has 9 apples.") == "9"
    assert rewards.extract_answer("It is 1,250 cm.") == "1,250"
    assert rewards.extract_answer("so \\boxed{\\frac{1}{2}} or 3", "boxed") == "\\frac{1}{2}"
    assert rewards.extract_answer("<answer> 42 </answer> then 7", "answer_tag") == "42"
    assert rewards.extract_answer("no number here") is None


def test_numeric_match_compares_numbers_and_handles_conversational_completions():
    fn = rewards.numeric_match()
    completions = [_as_messages("3 + 6 = 9."), _as_messages("It is 10."), "nine", "9.0"]
    assert fn([CHAT] * 4, completions, answer=["Sam has 9 apples."] * 4) == [1.0, 0.0, 0.0, 1.0]


def test_exact_match_compares_the_extracted_text():
    fn = rewards.exact_match("answer_tag")
    got = fn(["q"] * 3, ["<answer>Paris</answer>", "<answer>paris.</answer>", "Paris"],
             answer=["<answer>Paris</answer>"] * 3)
    assert got == [1.0, 1.0, 0.0]


def test_regex_length_and_json_presets():
    assert rewards.regex(r"\d+\s*$")(["q"] * 2, ["ends with 4", "4 ends with words"]) == [1.0, 0.0]
    assert rewards.length(4)(["q"] * 3, ["one two three four", "one two", "w " * 8]) == [1.0, 0.5, 0.0]
    assert rewards.valid_json()(["q"] * 3, ['{"a": 1}', '```json\n[1, 2]\n```', "{a: 1}"]) == [1.0, 1.0, 0.0]


def test_json_preset_checks_the_schema(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name"]}))
    assert rewards.valid_json(str(schema))(["q"] * 2, ['{"name": "x"}', '{"other": 1}']) == [1.0, 0.0]


def test_a_bad_regex_names_the_pattern_and_the_fix():
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        rewards.check([RewardSpec(preset="regex", pattern="(unclosed")])


class _Judge(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible endpoint: scores 8 when the answer holds 9, else 2."""

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        score = "8" if "Answer:\n9" in body["messages"][0]["content"] else "2"
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": score}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_judge_asks_an_openai_compatible_endpoint_and_scales_its_score():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = RewardSpec(preset="judge", endpoint=f"http://127.0.0.1:{server.server_port}/v1", model="m",
                          rubric="The right number.")
        assert rewards.judge(spec)([CHAT, CHAT], ["9", "12"]) == [0.8, 0.2]
    finally:
        server.shutdown()


def test_a_custom_reward_file_is_loaded_and_scored(tmp_path):
    file = tmp_path / "short.py"
    file.write_text("def reward(prompts, completions, **row):\n    return [1.0 if len(c) < 5 else 0.0 "
                    "for c in completions]\n")
    specs = [RewardSpec(preset="file", path=str(file), weight=2.0), RewardSpec(preset="numeric_match")]
    scores = rewards.score(specs, ["q", "q"], ["9", "it is 9 or so"], ["9", "8"])
    assert scores == {"file": [1.0, 0.0], "numeric_match": [1.0, 0.0], "total": [3.0, 0.0]}


def test_a_reward_file_without_reward_is_refused(tmp_path):
    file = tmp_path / "empty.py"
    file.write_text("def score(x):\n    return 1\n")
    with pytest.raises(ConfigError, match="defines no function named reward"):
        rewards.check([RewardSpec(preset="file", path=str(file))])


def test_custom_reward_files_are_refused_on_a_hosted_studio(tmp_path, monkeypatch):
    file = tmp_path / "r.py"
    file.write_text("def reward(prompts, completions, **row):\n    return [0.0] * len(completions)\n")
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    with pytest.raises(StudioError, match="off on a hosted studio"):
        rewards.check([RewardSpec(preset="file", path=str(file))])


GRPO_YAML = """
name: g
dataset: arith
method: grpo
grpo:
  num_generations: 4
  max_completion_length: 64
  beta: 0.04
  rewards:
    - {preset: numeric_match, weight: 1.0}
    - {preset: regex, pattern: "\\\\d+", weight: 0.2}
"""


def test_the_issue_yaml_shape_loads_and_round_trips():
    spec = from_dict(RunSpec, yaml.safe_load(GRPO_YAML))
    assert spec.train.method == "grpo" and spec.grpo.num_generations == 4
    assert [(r.preset, r.weight) for r in spec.grpo.rewards] == [("numeric_match", 1.0), ("regex", 0.2)]
    assert spec.grpo.rewards[1].pattern == "\\d+"
    again = from_dict(RunSpec, yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(
        __import__("dataclasses").asdict(spec))))))
    assert again == spec
    kto_spec = from_dict(RunSpec, {"name": "k", "dataset": "d", "method": "kto", "train": {"micro_batch": 2},
                                   "kto": {"desirable_weight": 1.0, "undesirable_weight": 1.5}})
    assert kto_spec.train.method == "kto" and kto_spec.kto.undesirable_weight == 1.5


@pytest.mark.parametrize("change, message", [
    ({"grpo": {"num_generations": 3}}, "does not divide the effective batch"),
    ({"grpo": {"num_generations": 1}}, "compares answers within a group"),
    ({"grpo": {"rewards": []}}, "nothing would score"),
    ({"grpo": {"rewards": [{"preset": "regex"}]}}, "has no pattern"),
    ({"grpo": {"rewards": [{"preset": "judge", "endpoint": "http://x/v1"}]}}, "has no rubric"),
    ({"grpo": {"rewards": [{"preset": "telepathy"}]}}, "not one of"),
    ({"method": "kto", "train": {"micro_batch": 1}}, "at least 2 rows per pass"),
])
def test_bad_grpo_and_kto_settings_are_refused_with_a_fix(change, message):
    data = {"name": "g", "dataset": "arith", "method": "grpo", "train": {"micro_batch": 1, "grad_accum": 8}}
    data.update(change)
    if "train" in change:
        data["train"] = change["train"]
    with pytest.raises(ConfigError, match=message) as info:
        from_dict(RunSpec, data)
    assert info.value.fix


@pytest.mark.parametrize("record, fmt", [
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "kto_tag": True},
     "llamafactory"),
    ({"prompt": "hi", "completion": "yo", "label": False}, "trl"),
    ({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}],
      "label": True}, "trl"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "label": "bad"},
     "sharegpt"),
])
def test_kto_formats_are_detected_and_converted(record, fmt):
    detection = kto.detect([record] * 3)
    assert detection.format == fmt
    row = kto.to_row(record, detection)
    assert row["prompt"] == [{"role": "user", "content": "hi"}] and row["completion"] == "yo"
    assert isinstance(row["label"], bool)


def test_rows_without_a_label_are_not_kto_data():
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert not kto.detect([plain] * 3).is_kto
    assert not kto.detect([{**plain, "label": "maybe"}] * 3).is_kto
