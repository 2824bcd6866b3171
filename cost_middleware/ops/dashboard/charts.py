"""Charts drawn on the server as inline SVG: stacked columns over time and horizontal bars.

No script and no fonts or images to fetch; names are escaped like any other text
(:mod:`~cost_middleware.ops.dashboard.markup`), amounts shown in each shape's ``<title>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from cost_middleware.ops.dashboard.markup import Safe, clipped, join, money, tag
from cost_middleware.ops.dashboard.queries import Series

#: Distinct on light and dark backgrounds, and for the common kinds of colour blindness.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def stacked_columns(series: Series, *, width: int = 960, height: int = 260,
                    title: str = "") -> Safe:
    """One column per bucket, one segment per key, and a legend below."""
    left, bottom, top = 70, 28, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    totals = series.bucket_totals()
    peak = max(totals, default=Decimal(0))
    slot = plot_w / max(len(series.buckets), 1)
    bar = max(slot * 0.8, 1.0)
    fmt = "%H:00" if series.unit == "hour" else "%m-%d"
    every = max(1, len(series.buckets) // 12)  # at most a dozen axis labels
    shapes: list[Safe] = []
    for i, (start, row) in enumerate(zip(series.buckets, series.values, strict=True)):
        x = left + i * slot + (slot - bar) / 2
        y = float(top + plot_h)
        for j, amount in enumerate(row):
            if amount <= 0 or peak <= 0:
                continue
            h = float(amount / peak) * plot_h
            y -= h
            shapes.append(tag(
                '<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}">'
                "<title>{key} {when}: {amount}</title></rect>",
                x=f"{x:.1f}", y=f"{y:.1f}", w=f"{bar:.1f}", h=f"{h:.1f}", fill=colour(j),
                key=series.keys[j], when=start.strftime("%Y-%m-%d %H:00 UTC"),
                amount=money(amount)))
        if i % every == 0:
            shapes.append(tag('<text x="{x}" y="{y}" class="axis" text-anchor="middle">{t}'
                              "</text>", x=f"{x + bar / 2:.1f}", y=height - 10,
                              t=start.strftime(fmt)))
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        shapes.append(tag('<line x1="{l}" x2="{r}" y1="{y}" y2="{y}" class="grid"/>'
                          '<text x="{tx}" y="{ty}" class="axis" text-anchor="end">{v}</text>',
                          l=left, r=width - 10, y=f"{y:.1f}", tx=left - 6, ty=f"{y + 4:.1f}",
                          v=money(peak * Decimal(str(fraction)))))
    svg = tag('<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
              'aria-label="{label}">', w=width, h=height, label=title)
    return join([svg, *shapes, Safe("</svg>"), legend(series.keys)])


def legend(keys: Sequence[str]) -> Safe:
    # An SVG swatch, not a styled span: the page's policy allows no inline style.
    items = [tag('<li><svg class="swatch" width="10" height="10"><rect width="10" height="10" '
                 'fill="{c}"/></svg><span title="{full}">{name}</span></li>',
                 c=colour(i), full=key, name=clipped(key, 40)) for i, key in enumerate(keys)]
    return join([Safe('<ul class="legend">'), *items, Safe("</ul>")])


def hbars(rows: Sequence[tuple[str, Sequence[Decimal]]], *, width: int = 960,
          label_width: int = 260, shown: Callable[[Decimal], str] = money) -> Safe:
    """A bar per row, its parts stacked in palette order (one part: a plain bar)."""
    line, pad = 22, 4
    height = max(len(rows), 1) * line + pad
    peak = max((sum(parts, Decimal(0)) for _, parts in rows), default=Decimal(0))
    plot = width - label_width - 130
    shapes: list[Safe] = []
    for i, (name, parts) in enumerate(rows):
        y = pad + i * line
        shapes.append(tag('<text x="{x}" y="{y}" class="label" text-anchor="end">'
                          "<title>{full}</title>{name}</text>", x=label_width - 6, y=y + 14,
                          full=name, name=clipped(name, 36)))
        x = float(label_width)
        for j, amount in enumerate(parts):
            if amount <= 0 or peak <= 0:
                continue
            w = float(amount / peak) * plot
            shapes.append(tag('<rect x="{x}" y="{y}" width="{w}" height="16" fill="{fill}">'
                              "<title>{name}: {amount}</title></rect>", x=f"{x:.1f}", y=y + 2,
                              w=f"{max(w, 0.5):.1f}", fill=colour(j), name=name,
                              amount=shown(amount)))
            x += w
        shapes.append(tag('<text x="{x}" y="{y}" class="value">{v}</text>', x=f"{x + 6:.1f}",
                          y=y + 14, v=shown(sum(parts, Decimal(0)))))
    svg = tag('<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">',
              w=width, h=height)
    return join([svg, *shapes, Safe("</svg>")])
