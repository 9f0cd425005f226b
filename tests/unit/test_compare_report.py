"""Compare and report on synthetic run folders: an SFT run beside a DPO run (different curves, settings,
metrics), the CLI twins, and a self-contained HTML report."""

from __future__ import annotations

import json
import re

import pytest

from studio import paths
from studio.cli import main
from studio.experiments import compare, report
from tests.integration.experiment_helpers import synthetic_run


@pytest.fixture
def two_methods():
    synthetic_run("sft-a", "sft", 2e-4, {"train_loss": 1.8, "eval_loss": 1.6, "steps": 3},
         [{"step": s, "loss": 2.0 - s / 10, "tokens": 100 * s, "tokens_per_sec": 50.0} for s in (1, 2, 3)]
         + [{"step": 3, "eval_loss": 1.6, "tokens": 300}])
    synthetic_run("dpo-b", "dpo", 5e-5, {"train_loss": 0.6, "reward_margin": 0.4, "steps": 3},
         [{"step": s, "loss": 0.7 - s / 50, "reward_margin": s / 10, "reward_accuracy": 0.5 + s / 10,
           "tokens": 80 * s, "tokens_per_sec": 40.0} for s in (1, 2, 3)], parent="sft-a")


def test_compare_an_sft_run_with_a_dposynthetic_run(two_methods):
    result = compare.compare(["sft-a", "dpo-b"])
    assert result.families()[:2] == ["loss", "reward_margin"]
    series = {row["series"] for row in result.curves if row["family"] == "loss"}
    assert series == {"sft-a · train", "sft-a · eval", "dpo-b · train"}  # overlaid on one step axis
    assert {row["run"] for row in result.curves if row["family"] == "reward_margin"} == {"dpo-b"}
    differ = {row["setting"]: (row["sft-a"], row["dpo-b"]) for row in result.differences}
    assert differ["train.method"] == ("sft", "dpo") and differ["train.lr"] == (2e-4, 5e-5)
    assert differ["dataset"] == ("sft-data", "dpo-data") and "train.max_seq_len" not in differ
    rows = {row["run"]: row for row in result.summary}
    assert rows["sft-a"]["eval_loss"] == 1.6 and rows["sft-a"]["eval: perplexity"] == 7.5
    assert rows["dpo-b"]["reward_margin"] == 0.4 and rows["dpo-b"]["eval_loss"] is None
    assert rows["dpo-b"]["parent"] == "sft-a @ step 2" and rows["sft-a"]["tokens/s"] == 50
    assert rows["dpo-b"]["dataset_sha256"] == "dpodpodpodpo" and rows["dpo-b"]["base"] == "bundled"
    by_tokens = compare.compare(["sft-a", "dpo-b"], axis="tokens")
    assert max(r["x"] for r in by_tokens.curves if r["run"] == "dpo-b") == 240


def test_compare_cli_prints_tables_and_writes_html(two_methods, capsys, tmp_path):
    out_file = tmp_path / "compare.html"
    assert main(["runs", "compare", "sft-a", "dpo-b", "--html", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "Settings that differ" in out and "train.method" in out and "dpo-b · train" not in out
    page = out_file.read_text()
    assert page.count("<svg") == len(compare.compare(["sft-a", "dpo-b"]).families())
    assert main(["runs", "compare", "sft-a", "nope"]) == 2
    assert "no run named 'nope'" in capsys.readouterr().err


def test_report_is_one_self_contained_page(two_methods, capsys):
    assert main(["runs", "report", "dpo-b"]) == 0
    page = (paths.runs_dir() / "dpo-b" / report.REPORT_FILE).read_text()
    assert "wrote" in capsys.readouterr().out
    for text in ("Run dpo-b", "reward margin", "sft-a at step 2", "train.beta", "perplexity", "<svg"):
        assert text in page, text
    assert not re.search(r"""(src|href)=["']?(https?:|//|/)""", page)  # nothing fetched from elsewhere
    assert "<td>2</td><td>1.5</td>" in page  # the checkpoint of step 2 with its loss
    assert "no longer prepared" in page  # the dataset was never prepared here: said, not a crash


def test_report_out_file_is_never_overwritten(two_methods, tmp_path, capsys):
    out = tmp_path / "r.html"
    out.write_text("mine")
    assert main(["runs", "report", "sft-a", "--out", str(out)]) == 2
    assert out.read_text() == "mine" and "--overwrite" in capsys.readouterr().err
    assert main(["runs", "report", "sft-a", "--out", str(out), "--overwrite"]) == 0
    assert "Run sft-a" in out.read_text()


def test_compare_json_lists_curves(two_methods, capsys):
    assert main(["runs", "compare", "sft-a", "dpo-b", "--json", "--axis", "tokens"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["run"] for r in data["runs"]} == {"sft-a", "dpo-b"} and data["curves"][0]["x"] == 100
