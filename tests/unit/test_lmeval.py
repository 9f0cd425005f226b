"""lm-eval benchmark tasks (studio.lmeval): local task YAMLs (data beside them, no code), run as an evaluation task
in its own process for the base and an adapter on one loaded tiny model, shown side by side."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studio.errors import ConfigError

TASK_YAML = """task: my_quiz
dataset_path: json
dataset_kwargs:
  data_files:
    test: items/my_quiz.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{question}}\\nA:"
doc_to_choice: "{{choices}}"
doc_to_target: answer
"""


def _user_task(workspace: Path) -> Path:
    folder = workspace / "lm_eval_tasks"
    (folder / "items").mkdir(parents=True)
    (folder / "items" / "my_quiz.jsonl").write_text('{"question": "2+2?", "choices": ["4", "5"], "answer": 0}\n')
    (folder / "my_quiz.yaml").write_text(TASK_YAML)
    return folder


def test_user_and_bundled_tasks_are_found_and_relative_data_files_resolve_beside_the_yaml(workspace):
    from studio.lmeval import available_tasks, resolve_tasks

    folder = _user_task(workspace)
    found = available_tasks()
    assert {"studio_tiny_mc", "studio_tiny_arith", "my_quiz"} <= set(found)
    specs, _ = resolve_tasks(["my_quiz", "studio_tiny_mc"])
    assert specs[0]["dataset_kwargs"]["data_files"]["test"] == str(folder / "items" / "my_quiz.jsonl")
    assert Path(specs[1]["dataset_kwargs"]["data_files"]["test"]).is_file()


def test_unknown_tasks_missing_data_and_python_tags_are_refused_with_a_fix(workspace):
    from studio.lmeval import resolve_tasks

    folder = _user_task(workspace)
    with pytest.raises(ConfigError, match="no lm-eval task named 'hellaswag'") as err:
        resolve_tasks(["hellaswag"])
    assert "studio_tiny_mc" in err.value.message and "lm_eval_tasks" in err.value.fix
    (folder / "items" / "my_quiz.jsonl").unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_tasks(["my_quiz"])
    (folder / "code.yaml").write_text("task: code_task\nprocess_docs: !function utils.process\n")
    with pytest.raises(ConfigError) as err:
        from studio.lmeval import task_config

        task_config(folder / "code.yaml")
    assert "!function" in err.value.fix


def test_cli_parses_eval_lm_eval_and_lists_the_tiny_tasks(capsys):
    from studio.cli import build_parser, main
    from studio.commands.lm_eval import lm_eval_cmd

    args = build_parser().parse_args(["eval", "lm-eval", "--tasks", "studio_tiny_mc", "--adapters", "a", "b"])
    assert args.func is lm_eval_cmd and args.adapters == ["a", "b"] and args.tasks == ["studio_tiny_mc"]
    assert main(["eval", "lm-eval", "--list"]) == 0
    assert "studio_tiny_mc" in capsys.readouterr().out
    assert main(["eval"]) == 2  # plain eval still needs its dataset, and says so


def test_tiny_task_runs_for_base_and_an_adapter_in_a_task_process(tiny_model_dir, workspace, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.adapters import get_adapter, import_adapter
    from studio.commands.lm_eval import format_table
    from studio.jobs import tasks

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(tmp_path / "lora")
    import_adapter(tmp_path / "lora", "quiz-adapter")

    folder = tasks.start("lm_eval", ref=str(tiny_model_dir), quant="fp32", tasks=["studio_tiny_mc"],
                         adapters=["quiz-adapter"], limit=8, batch_size=8)
    final = tasks.wait(folder, timeout=300)
    assert final["state"] == "completed", (final, (folder / tasks.LOG).read_text()[-3000:])
    assert final["pid"] != os.getpid()
    report = tasks.result(folder)
    assert report["samples"] == {"studio_tiny_mc": 8}
    rows = {row["metric"]: row for row in report["table"]}
    assert set(rows) == {"acc", "acc_norm"} and {"base", "quiz-adapter"} <= set(rows["acc"])
    for name in ("base", "quiz-adapter"):
        assert 0.0 <= report["results"][name]["studio_tiny_mc"]["acc"] <= 1.0
    text = format_table(report)
    assert "base" in text.splitlines()[0] and "quiz-adapter" in text.splitlines()[0]
    card = get_adapter("quiz-adapter").card
    assert card["metrics"]["lm_eval.studio_tiny_mc.acc"] == report["results"]["quiz-adapter"]["studio_tiny_mc"]["acc"]
    assert list((get_adapter("quiz-adapter").path / "eval").glob("lm_eval-*.json"))
