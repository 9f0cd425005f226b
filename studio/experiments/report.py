"""One self-contained HTML page per run: settings, data, curves (inline SVG), final metrics, evaluations,
checkpoints and exports. `python -m studio runs report ID` writes it; the Experiments tab offers it for
download. Nothing in the page is fetched from anywhere. No torch import.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from studio import paths
from studio.errors import RunError
from studio.experiments import compare
from studio.experiments.checkpoints import list_checkpoints
from studio.experiments.records import RunRecord, flat_settings, load, when
from studio.util import read_json

REPORT_FILE = "report.html"
DATA_KEYS = ("name", "format", "source_sha256", "max_len", "eval_split", "template", "cuts", "created")


def overview(record: RunRecord) -> list[dict]:
    s, parent = record.status, record.parent()
    rows = {"state": s.get("state", "?"), "method": record.method, "base model": record.base,
            "held in": (record.spec.get("model") or {}).get("quant", ""), "dataset": record.dataset,
            "dataset sha256": record.dataset_sha256, "steps": f"{s.get('step', 0)} of {s.get('total_steps') or '?'}",
            "created": when(s.get("created")), "started": when(s.get("started")), "finished": when(s.get("finished")),
            "train seconds": record.card.get("train_seconds", ""), "message": s.get("message", ""),
            "branched from": f"{parent['run']} at step {parent['step']}" if parent else "",
            "adapter": f"run:{record.name}" if (record.path / "adapter").is_dir() else "(none yet)"}
    return [{"": k, "value": v} for k, v in rows.items() if v not in ("", None)]


def data_rows(record: RunRecord) -> list[dict]:
    """What the dataset's meta.json says (names and numbers, no paths); empty when it was deleted since."""
    meta = read_json(paths.datasets_dir() / record.dataset / "meta.json", default=None) if record.dataset else None
    if not isinstance(meta, dict):
        return [{"": "dataset", "value": f"{record.dataset} (no longer prepared on this machine)"}]
    rows = {k: meta[k] for k in DATA_KEYS if k in meta}
    if meta.get("source_file"):
        rows["source file"] = Path(str(meta["source_file"])).name
    for group in ("counts", "token_stats"):
        for key, value in (meta.get(group) or {}).items():
            if not isinstance(value, (dict, list)):
                rows[f"{group}.{key}"] = value
    return [{"": k, "value": v} for k, v in rows.items()]


def _key_values(values: dict) -> list[dict]:
    return [{"": k, "value": round(v, 4) if isinstance(v, float) else v} for k, v in values.items()]


def build(record: RunRecord) -> str:
    comparison = compare.Comparison([record], "step", compare.curves([record], "step"))
    figures = "".join(compare.family_chart(comparison, f) for f in comparison.families())
    checkpoints = [{k: v for k, v in row.items() if k != "path"} for row in list_checkpoints(record.path)]
    exports = [{k: e.get(k) for k in ("kind", "created") if k in e} | {"to": Path(str(e.get("path", ""))).name}
               for e in record.exports()]
    sections = [(f"Run {record.name}", compare.html_table(overview(record))),
                ("Curves", figures or "<p><i>Nothing logged yet.</i></p>"),
                ("Final metrics", compare.html_table(_key_values(record.final_metrics))),
                ("Evaluations", compare.html_table(_key_values(record.evaluations))),
                ("Data", compare.html_table(data_rows(record))),
                ("Settings", compare.html_table(_key_values(flat_settings(record.spec)))),
                ("Checkpoints", compare.html_table(checkpoints)), ("Exports", compare.html_table(exports))]
    body = "".join(f"<h{1 if i == 0 else 2}>{escape(title)}</h{1 if i == 0 else 2}>{html}"
                   for i, (title, html) in enumerate(sections))
    return compare.page(f"Run {record.name}", body + "<p><small>Written by Tuning Studio.</small></p>")


def write(run_id: str, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the report: to runs/<id>/report.html (rewritten each time: it is made from the run's files), or
    to `out`, which is never overwritten unless asked."""
    record = load(run_id)
    target = Path(out) if out else record.path / REPORT_FILE
    if out and target.exists() and not overwrite:
        raise RunError(f"{target} already exists; it was left untouched.", "Give another --out, or add --overwrite.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_text(build(record), encoding="utf-8")
    tmp.replace(target)
    return target
