"""Runs side by side: curves on a shared step or token axis, the settings that differ, final metrics,
evaluations, throughput, and each run's dataset (name and hash) and base. Reads run folders only, so it
works across methods (an SFT run beside a DPO run: each draws the curves it logged). No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from studio.errors import RunError
from studio.experiments import charts
from studio.experiments.records import RunRecord, flat_settings, load

AXES = {"step": "optimizer step", "tokens": "tokens seen"}
NOT_CURVES = {"type", "time", "step", "epoch", "lr", "grad_norm", "tokens_per_sec", "memory_mb", "eta_sec", "tokens"}
SAME_ANYWAY = {"name", "dataset_sha256"}  # differ by design; the runs table shows the dataset hash


@dataclass
class Comparison:
    records: list[RunRecord]
    axis: str = "step"
    curves: list[dict] = field(default_factory=list)  # {run, metric, series, x, value}
    differences: list[dict] = field(default_factory=list)  # {setting, <run>: value, ...}
    summary: list[dict] = field(default_factory=list)  # one row a run

    def families(self) -> list[str]:
        """The curve families logged by any run: loss first, then reward margin, accuracy, ... as logged."""
        found = list(dict.fromkeys(row["family"] for row in self.curves))
        return sorted(found, key=lambda f: (f != "loss", found.index(f)))


def family(metric: str) -> str:
    """eval_loss and loss are one family (drawn together); eval_reward_margin goes with reward_margin."""
    return metric[len("eval_"):] if metric.startswith("eval_") else metric


def curves(records: list[RunRecord], axis: str = "step") -> list[dict]:
    """Every numeric value each run logged, one row a point: train and eval loss, reward margin, accuracy..."""
    if axis not in AXES:
        raise RunError(f"There is no {axis!r} axis.", f"Use one of: {', '.join(AXES)}.")
    rows = []
    for record in records:
        for event in record.logs:
            x = event.get(axis)
            if not isinstance(x, (int, float)):
                continue  # runs from before the token count was logged have no token axis
            for metric, value in event.items():
                if metric in NOT_CURVES or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                kind = "eval" if metric.startswith("eval_") else "train"
                rows.append({"run": record.name, "metric": metric, "family": family(metric),
                             "series": f"{record.name} · {kind}", "x": x, "value": value})
    return rows


def differences(records: list[RunRecord]) -> list[dict]:
    """The settings whose values are not the same in every run: one row a setting, one column a run."""
    flats = [flat_settings(r.spec) for r in records]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    rows = []
    for key in keys:
        values = [flat.get(key, "") for flat in flats]
        if key not in SAME_ANYWAY and len({repr(v) for v in values}) > 1:
            rows.append({"setting": key, **{r.name: v for r, v in zip(records, values, strict=True)}})
    return rows


def summary_row(record: RunRecord) -> dict:
    parent = record.parent()
    row = {"run": record.name, "method": record.method, "state": record.status.get("state", "?"),
           "base": record.base, "dataset": record.dataset, "dataset_sha256": record.dataset_sha256[:12],
           "steps": record.status.get("step", 0)}
    row.update({k: _round(v) for k, v in record.final_metrics.items() if k != "steps"})
    row.update({f"eval: {k}": _round(v) for k, v in record.evaluations.items()})
    speed = record.throughput()
    row["tokens/s"] = round(speed) if speed else None
    row["parent"] = f"{parent['run']} @ step {parent['step']}" if parent else ""
    return row


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def summary(records: list[RunRecord]) -> list[dict]:
    rows = [summary_row(r) for r in records]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{c: row.get(c) for c in columns} for row in rows]


def compare(run_ids: list[str], axis: str = "step") -> Comparison:
    """The comparison of the named runs (each read from its folder)."""
    names = list(dict.fromkeys(r for r in run_ids if r))
    if not names:
        raise RunError("No runs to compare.", "Pick two or more runs (python -m studio runs list shows them).")
    records = [load(name) for name in names]
    return Comparison(records, axis, curves(records, axis), differences(records), summary(records))


# ---------------------------------------------------------------- as text and HTML


def table_text(rows: list[dict]) -> str:
    """A plain text table, columns padded to their widest cell."""
    if not rows:
        return "(none)"
    columns = list(rows[0])
    cells = [[str(c) for c in columns]] + [["" if r.get(c) is None else str(r.get(c)) for c in columns]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in cells)


def as_text(comparison: Comparison) -> str:
    last = {}
    for row in comparison.curves:  # the last value of each curve, as a quick read of where it ended
        last[(row["run"], row["metric"])] = row
    ends = [{"run": run, "curve": metric, comparison.axis: row["x"], "last value": _round(row["value"])}
            for (run, metric), row in last.items()]
    return "\n\n".join([f"Runs\n{table_text(comparison.summary)}",
                        f"Settings that differ\n{table_text(comparison.differences)}",
                        f"Last point of each curve (by {comparison.axis})\n{table_text(ends)}"])


def family_chart(comparison: Comparison, name: str) -> str:
    series: dict[str, list[tuple[float, float]]] = {}
    for row in comparison.curves:
        if row["family"] == name:
            series.setdefault(row["series"], []).append((row["x"], row["value"]))
    return charts.line_chart(series, name.replace("_", " "), AXES[comparison.axis], name.replace("_", " "))


def html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    head = "".join(f"<th>{escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape('' if v is None else str(v))}</td>" for v in row.values())
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def as_html(comparison: Comparison) -> str:
    names = ", ".join(r.name for r in comparison.records)
    charts_html = "".join(family_chart(comparison, f) for f in comparison.families())
    return page(f"Compare {names}", f"<h1>Compare {escape(names)}</h1><h2>Runs</h2>{html_table(comparison.summary)}"
                f"<h2>Curves</h2>{charts_html}<h2>Settings that differ</h2>{html_table(comparison.differences)}")


STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
         "text-align:left}th{background:#f4f4f4}svg{display:block;margin:1em 0}code{background:#f4f4f4}")


def page(title: str, body: str) -> str:
    """A self-contained HTML page: inline style, inline SVG, nothing fetched from anywhere."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
