"""Server-rendered SVG charts for the operator page (no script, no CDN, works offline).

Each function returns one ``<svg role="img">`` with a ``<title>`` and ``<desc>`` (what
a screen reader announces: the figures themselves) and every label escaped.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#2f6db5", "#e07b24", "#3a9a5b", "#c0392b", "#8e5cb5", "#7f8c8d", "#b8a018")
_ids = itertools.count(1)


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _open(title: str, desc: str, width: int, height: int) -> tuple[str, str]:
    n = next(_ids)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" '
        f'style="max-width:100%;height:auto" '
        f'aria-labelledby="chart{n}t chart{n}d" class="chart">'
        f'<title id="chart{n}t">{escape(title)}</title>'
        f'<desc id="chart{n}d">{escape(desc)}</desc>'
    )
    return head, "</svg>"


def _empty(title: str, width: int) -> str:
    head, tail = _open(title, "no data in this period", width, 40)
    return head + '<text x="8" y="24" class="muted">no data in this period</text>' + tail


def bars(
    title: str,
    values: Mapping[str, float],
    *,
    width: int = 520,
    unit: str = "",
    notes: Mapping[str, str] | None = None,
) -> str:
    """Horizontal bars, one per label, largest first as given; ``notes`` add text after
    a bar's value (e.g. a fallback rate)."""
    if not values:
        return _empty(title, width)
    notes = notes or {}
    row, label_w, value_w = 22, 150, 150
    height = row * len(values) + 10
    top = max(max(values.values()), 1e-9)
    desc = "; ".join(
        f"{k}: {_number(v)}{unit}{(' ' + notes[k]) if k in notes else ''}"
        for k, v in values.items()
    )
    head, tail = _open(title, desc, width, height)
    parts = [head]
    span = width - label_w - value_w
    for i, (label, value) in enumerate(values.items()):
        y = 5 + i * row
        w = max(span * value / top, 0 if value == 0 else 1)
        text = f"{_number(value)}{unit}" + (f" {notes[label]}" if label in notes else "")
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label[:24])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" '
            f'fill="{PALETTE[0]}"><title>{escape(label)}: {escape(text)}</title></rect>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 15}">{escape(text)}</text>'
        )
    return "".join(parts) + tail


def columns(title: str, labels: Sequence[str], values: Sequence[float], *, width: int = 520) -> str:
    """Vertical columns (a histogram): ``labels[i]`` under ``values[i]``."""
    if not values or not any(values):
        return _empty(title, width)
    height, bottom, left = 180, 30, 36
    top = max(values)
    step = (width - left - 8) / len(values)
    desc = "; ".join(f"{k}: {_number(v)}" for k, v in zip(labels, values, strict=True))
    head, tail = _open(title, desc, width, height)
    parts = [head, f'<text x="2" y="14" class="muted">{_number(top)}</text>']
    plot = height - bottom - 20
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = plot * value / top
        x = left + i * step
        parts.append(
            f'<rect x="{x + 2:.1f}" y="{height - bottom - h:.1f}" width="{step - 4:.1f}" '
            f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{escape(label)}: '
            f"{_number(value)}</title></rect>"
            f'<text x="{x + step / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle" '
            f'class="small">{escape(label)}</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 6}" y2="{height - bottom}" '
        'stroke="#999"/>'
    )
    return "".join(parts) + tail


def lines(
    title: str, x: Sequence[str], series: Mapping[str, Sequence[float]], *, width: int = 540
) -> str:
    """One line per series over ``x`` (days), with a legend."""
    if not x or not series or not any(any(v) for v in series.values()):
        return _empty(title, width)
    height, left, bottom, legend = 220, 40, 36, 18
    top = max(max(v) for v in series.values()) or 1
    plot_h = height - bottom - 12
    dx = (width - left - 10) / max(len(x) - 1, 1)
    desc = "; ".join(f"{name}: {_number(sum(v))} in total" for name, v in series.items())
    total_h = height + legend * ((len(series) + 3) // 4)
    head, tail = _open(title, desc, width, total_h)
    parts = [
        head,
        f'<text x="2" y="14" class="muted">{_number(top)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 6}" y2="{height - bottom}" '
        'stroke="#999"/>',
    ]
    for i in sorted({0, len(x) // 2, len(x) - 1}):
        anchor = "start" if i == 0 else "end" if i == len(x) - 1 else "middle"
        parts.append(
            f'<text x="{left + i * dx:.1f}" y="{height - bottom + 16}" text-anchor="{anchor}" '
            f'class="small">{escape(x[i])}</text>'
        )
    for n, (name, values) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        points = " ".join(
            f"{left + i * dx:.1f},{height - bottom - plot_h * v / top:.1f}"
            for i, v in enumerate(values)
        )
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2">'
            f"<title>{escape(name)}</title></polyline>"
        )
        lx, ly = 8 + (n % 4) * (width // 4), height + legend * (n // 4) + 4
        parts.append(
            f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{ly + 10}" class="small">{escape(name[:28])}</text>'
        )
    return "".join(parts) + tail
