"""Numbers for people: rounded, with units, never a raw float like 5.092022895812988."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"<[^<>\s]+>")  # <end_of_turn>, <|im_end|>, <bos>: special tokens as they are written


def number(value) -> str:
    """3 significant digits for small values (loss 5.09, lr 0.000179), thousands separators for big ones."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def megabytes(value) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.1f} GB" if value >= 1024 else f"{value:.0f} MB"


def duration(seconds) -> str:
    seconds = int(round(seconds or 0))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def rounded(value: float, digits: int = 4) -> float:
    """`digits` significant digits, still a number (tables sort and compare it): 27.18281828 -> 27.18."""
    return float(f"{value:.{digits}g}")


def table(frame):
    """A copy of a DataFrame with every float column rounded to 4 significant digits."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype.kind == "f":
            out[column] = out[column].map(rounded)
    return out


def md(text: str, in_table: bool = False) -> str:
    """Text for gr.Markdown with special tokens shown as code: raw, `<start_of_turn>` is taken for an HTML tag
    and everything after it disappears. In a table cell the pipes of `<|im_end|>` are escaped too."""
    shown = _TOKEN.sub(lambda m: f"`{m.group(0)}`", str(text))
    return shown.replace("|", "\\|") if in_table else shown
