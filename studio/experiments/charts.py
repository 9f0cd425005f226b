"""Line charts as inline SVG: no plotting library, no file beside the page (the run report and
`runs compare --html` embed them). Pure text; no torch, no matplotlib."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 820, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 250, 32, 40  # room for the y labels, the legend, the title and the x labels
COLORS = ("#f97316", "#2563eb", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777")


def _ticks(low: float, high: float, count: int = 5, whole: bool = False) -> list[float]:
    """`count` evenly spaced ticks; `whole`: whole numbers only (steps), no 1.5 between 1 and 2."""
    if high == low:
        return [low]
    ticks = [low + (high - low) * i / (count - 1) for i in range(count)]
    return sorted({round(t) for t in ticks}) if whole else ticks


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str) -> str:
    """One SVG: each named series a coloured line with its points, a shared x and y scale, a legend."""
    points = [p for values in series.values() for p in values]
    if not points:
        return f"<p><i>{escape(title)}: nothing logged yet.</i></p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pad = (max(ys) - min(ys)) * 0.05 or abs(max(ys)) * 0.05 or 1.0
    y0, y1 = min(ys) - pad, max(ys) + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> str:
        return f"{LEFT + (x - x0) / (x1 - x0) * plot_w:.1f},{TOP + (1 - (y - y0) / (y1 - y0)) * plot_h:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11" role="img">',
             f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    whole = all(float(x).is_integer() for x in xs)
    parts += _axes(x0, x1, y0, y1, at, x_label, y_label, whole)
    for i, (label, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        line = " ".join(at(x, y) for x, y in sorted(values))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{line}"/>')
        parts += [f'<circle cx="{at(x, y).split(",")[0]}" cy="{at(x, y).split(",")[1]}" r="2.5" fill="{color}">'
                  f"<title>{escape(label)}: {_fmt(x)}, {_fmt(y)}</title></circle>" for x, y in values]
        ly = TOP + 14 * i + 8
        parts.append(f'<rect x="{WIDTH - RIGHT + 12}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{WIDTH - RIGHT + 26}" y="{ly + 1}">{escape(label[:40])}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(x0, x1, y0, y1, at, x_label: str, y_label: str, whole: bool) -> list[str]:
    bottom = HEIGHT - BOTTOM
    parts = []
    for x in _ticks(x0, x1, whole=whole):
        px = at(x, y0).split(",")[0]
        parts.append(f'<text x="{px}" y="{bottom + 14}" text-anchor="middle">{_fmt(x)}</text>')
    for y in _ticks(y0, y1):
        py = at(x0, y).split(",")[1]
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py}" y2="{py}" stroke="#eee"/>'
                     f'<text x="{LEFT - 6}" y="{py}" text-anchor="end" dy="3">{_fmt(y)}</text>')
    parts.append(f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
                 f"{escape(x_label)}</text>")
    parts.append(f'<text x="14" y="{TOP + (HEIGHT - TOP - BOTTOM) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {TOP + (HEIGHT - TOP - BOTTOM) / 2})">{escape(y_label)}</text>')
    return parts
