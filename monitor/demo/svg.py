"""Inline SVG charts for the report: plain strings, no scripts, nothing fetched at view time.

Each function returns one ``<svg>`` element with a ``data-chart`` attribute (what the browser
test counts) and at least one drawn mark per series, so an empty plot is visible as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

W, H, PAD = 640, 260, 44
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _scale(lo: float, hi: float, a: float, b: float) -> tuple[float, float]:
    span = (hi - lo) or 1.0
    k = (b - a) / span
    return k, a - k * lo


def _frame(chart: str, title: str, xlabel: str, ylabel: str, body: list[str],
           xr: tuple[float, float], yr: tuple[float, float]) -> str:
    ticks = []
    for i in range(5):
        fx = xr[0] + (xr[1] - xr[0]) * i / 4
        fy = yr[0] + (yr[1] - yr[0]) * i / 4
        x = PAD + (W - 2 * PAD) * i / 4
        y = H - PAD - (H - 2 * PAD) * i / 4
        ticks.append(f'<text x="{x:.1f}" y="{H - PAD + 14}" font-size="10" '
                     f'text-anchor="middle">{fx:.3g}</text>')
        ticks.append(f'<text x="{PAD - 4}" y="{y + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{fy:.3g}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" data-chart="{escape(chart)}" width="{W}" '
        f'height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
        f'<rect width="{W}" height="{H}" fill="#fff"/>'
        f'<text x="{W / 2}" y="16" font-size="13" text-anchor="middle">{escape(title)}</text>'
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>'
        + "".join(ticks) +
        f'<text x="{W / 2}" y="{H - 8}" font-size="11" text-anchor="middle">{escape(xlabel)}</text>'
        f'<text x="12" y="{H / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {H / 2})">{escape(ylabel)}</text>'
        + "".join(body) + "</svg>"
    )


def _legend(names: Sequence[str]) -> list[str]:
    return [f'<rect x="{W - PAD - 150}" y="{PAD + 14 * i - 9}" width="10" height="10" '
            f'fill="{COLOURS[i % len(COLOURS)]}"/><text x="{W - PAD - 136}" y="{PAD + 14 * i}" '
            f'font-size="11">{escape(n)}</text>' for i, n in enumerate(names)]


def lines(chart: str, title: str, xlabel: str, ylabel: str,
          series: dict[str, Sequence[tuple[float, float]]],
          bands: Sequence[tuple[float, float, str]] = (),
          marks: Sequence[tuple[float, str]] = (), diagonal: bool = False) -> str:
    """Polylines (with points), optional shaded x-bands (phases) and vertical marks (alerts)."""
    pts = [p for s in series.values() for p in s]
    xs = [p[0] for p in pts] + [b[0] for b in bands] + [b[1] for b in bands]
    ys = [p[1] for p in pts]
    xr = (min(xs, default=0.0), max(xs, default=1.0))
    yr = (min(min(ys, default=0.0), 0.0), max(ys, default=1.0))
    if diagonal:
        xr, yr = (0.0, 1.0), (0.0, 1.0)
    kx, bx = _scale(*xr, PAD, W - PAD)
    ky, by = _scale(*yr, H - PAD, PAD)
    body = []
    for lo, hi, label in bands:
        body.append(f'<rect x="{kx * lo + bx:.1f}" y="{PAD}" width="{max(kx * (hi - lo), 1):.1f}"'
                    f' height="{H - 2 * PAD}" fill="#f3f3f3" stroke="#ddd"/>'
                    f'<text x="{kx * lo + bx + 3:.1f}" y="{PAD + 10}" font-size="9" '
                    f'fill="#777">{escape(label)}</text>')
    if diagonal:
        body.append(f'<line x1="{bx:.1f}" y1="{by:.1f}" x2="{kx + bx:.1f}" y2="{ky + by:.1f}" '
                    'stroke="#aaa" stroke-dasharray="4 3"/>')
    for x, label in marks:
        body.append(f'<line x1="{kx * x + bx:.1f}" y1="{PAD}" x2="{kx * x + bx:.1f}" '
                    f'y2="{H - PAD}" stroke="#d62728" stroke-dasharray="3 2"/>'
                    f'<text x="{kx * x + bx + 2:.1f}" y="{PAD + 22}" font-size="9" '
                    f'fill="#d62728">{escape(label)}</text>')
    for i, (name, s) in enumerate(series.items()):
        c = COLOURS[i % len(COLOURS)]
        xy = " ".join(f"{kx * x + bx:.1f},{ky * y + by:.1f}" for x, y in s)
        body.append(f'<polyline data-series="{escape(name)}" points="{xy}" fill="none" '
                    f'stroke="{c}" stroke-width="1.6"/>')
        if len(s) <= 80:
            body += [f'<circle cx="{kx * x + bx:.1f}" cy="{ky * y + by:.1f}" r="2.2" fill="{c}"/>'
                     for x, y in s]
    return _frame(chart, title, xlabel, ylabel, body + _legend(list(series)), xr, yr)


def histograms(chart: str, title: str, xlabel: str, groups: dict[str, Sequence[float]],
               threshold: float | None = None, bins: int = 30) -> str:
    """Overlaid histograms (as densities) of each group, with an optional threshold line."""
    vals = [v for g in groups.values() for v in g]
    lo, hi = min(vals, default=0.0), max(vals, default=1.0)
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    width = ((hi - lo) or 1.0) / bins
    dens: dict[str, list[float]] = {}
    for name, g in groups.items():
        counts = [0] * bins
        for v in g:
            counts[min(int((v - lo) / width), bins - 1)] += 1
        dens[name] = [c / (max(len(g), 1) * width) for c in counts]
    top = max((d for ds in dens.values() for d in ds), default=1.0) or 1.0
    kx, bx = _scale(lo, hi, PAD, W - PAD)
    ky, by = _scale(0.0, top, H - PAD, PAD)
    body = []
    for i, (name, ds) in enumerate(dens.items()):
        c = COLOURS[i % len(COLOURS)]
        for j, d in enumerate(ds):
            if d > 0:
                x0 = kx * (lo + j * width) + bx
                body.append(f'<rect data-series="{escape(name)}" x="{x0:.1f}" '
                            f'y="{ky * d + by:.1f}" width="{max(kx * width - 1, 1):.1f}" '
                            f'height="{(H - PAD) - (ky * d + by):.1f}" fill="{c}" '
                            'fill-opacity="0.45"/>')
    if threshold is not None:
        x = kx * threshold + bx
        body.append(f'<line x1="{x:.1f}" y1="{PAD}" x2="{x:.1f}" y2="{H - PAD}" stroke="#000" '
                    f'stroke-dasharray="5 3"/><text x="{x + 3:.1f}" y="{PAD + 10}" '
                    'font-size="10">threshold</text>')
    return _frame(chart, title, xlabel, "density", body + _legend(list(groups)), (lo, hi),
                  (0.0, top))


def timeline(chart: str, title: str, spans: Sequence[tuple[float, float, str]],
             events: Sequence[tuple[float, str, str]]) -> str:
    """Phases as bars along seconds since start, alerts as labelled ticks above them."""
    end = max([s[1] for s in spans] + [e[0] for e in events] + [1.0])
    kx, bx = _scale(0.0, end, PAD, W - PAD)
    body = []
    for i, (lo, hi, label) in enumerate(spans):
        body.append(f'<rect x="{kx * lo + bx:.1f}" y="{H - PAD - 40}" '
                    f'width="{max(kx * (hi - lo), 1):.1f}" height="30" '
                    f'fill="{COLOURS[i % len(COLOURS)]}" fill-opacity="0.3"/>'
                    f'<text x="{kx * lo + bx + 3:.1f}" y="{H - PAD - 21}" '
                    f'font-size="10">{escape(label)}</text>')
    for j, (t, label, colour) in enumerate(events):
        x = kx * t + bx
        y = PAD + 16 * (j % 6)
        body.append(f'<line data-series="alert" x1="{x:.1f}" y1="{y + 4}" x2="{x:.1f}" '
                    f'y2="{H - PAD}" stroke="{colour}"/><circle cx="{x:.1f}" cy="{y:.1f}" r="4" '
                    f'fill="{colour}"/><text x="{x + 6:.1f}" y="{y + 4:.1f}" '
                    f'font-size="10">{escape(label)}</text>')
    return _frame(chart, title, "seconds since the demo's first request", "", body,
                  (0.0, end), (0.0, 1.0))
