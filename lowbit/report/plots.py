"""The report's PNG plots, drawn with matplotlib's object API (``Figure``, the Agg canvas: no
display, no pyplot state)::

    outliers.png        per site: largest channel / median channel, the outlier line at
                        OUTLIER_FACTOR
    ranges_<block>.png  per block, one panel per site: each channel's [min, max] on the
                        calibration text, outliers in red (largest three numbered), the
                        quantizer's grid dashed, the outlier line (OUTLIER_FACTOR x the
                        median |x|) dotted where it falls within the data
    bits.png            per linear: weight bits and activation bits
    lowering.png        linears per kernel (or per reason they stayed float)
    sizes.png           bytes by component, float vs quantized

``draw`` returns ``Plot(section, file, caption)`` for each file written.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path

import numpy as np

from lowbit import progress
from lowbit.report.data import OUTLIER_FACTOR, Report, Site

__all__ = ["Plot", "draw"]

DPI = 100
BLUE, RED, GREY, GREEN, ORANGE = "#4c72b0", "#c44e52", "#8c8c8c", "#55a868", "#dd8452"
_MB = 1e6


@dataclasses.dataclass(frozen=True)
class Plot:
    section: str              # "ranges", "bits", "lowering", "sizes"
    file: str                 # a file name in the report folder
    caption: str


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, min(height, 60.0)), dpi=DPI, layout="constrained")


def _save(fig, folder: Path, name: str) -> str:
    fig.savefig(folder / name)
    return name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "x"


def _ranges(folder: Path, group: str, sites: list[Site]) -> str:
    fig = _figure(10, 2.4 * len(sites) + 0.4)
    axes = fig.subplots(len(sites), 1, squeeze=False)[:, 0]
    for ax, s in zip(axes, sites):
        c = np.arange(s.lo.size)
        out = s.outliers
        mask = np.zeros(s.lo.size, bool)
        mask[out] = True
        ax.vlines(c[~mask], s.lo[~mask], s.hi[~mask], color=BLUE, lw=0.8, label="channel range")
        if out:
            ax.vlines(c[mask], s.lo[mask], s.hi[mask], color=RED, lw=1.6,
                      label=f"outlier (> {OUTLIER_FACTOR:g}x median |x|)")
            for ch in out[:3]:
                y = s.hi[ch] if abs(s.hi[ch]) >= abs(s.lo[ch]) else s.lo[ch]
                ax.annotate(str(ch), (ch, y), fontsize=7, color=RED, ha="center",
                            va="bottom" if y >= 0 else "top")
        t = OUTLIER_FACTOR * s.median
        ax.axhline(t, color=GREY, ls=":", lw=0.8,
                   label=f"outlier line ±{OUTLIER_FACTOR:g}x median |x| = ±{t:.3g}")
        ax.axhline(-t, color=GREY, ls=":", lw=0.8)
        lo, hi = float(s.lo.min()), float(s.hi.max())
        if s.grid is not None:
            ax.axhline(s.grid[0], color=ORANGE, ls="--", lw=0.9,
                       label=f"{s.quantizer} grid [{s.grid[0]:.3g}, {s.grid[1]:.3g}]")
            ax.axhline(s.grid[1], color=ORANGE, ls="--", lw=0.9)
            lo, hi = min(lo, s.grid[0]), max(hi, s.grid[1])
        pad = 0.08 * (hi - lo) or 1.0           # the data and the grid, not the outlier line
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(-1, s.lo.size)
        ax.set_title(f"{s.label}: {s.lo.size} channels, {len(out)} outlier(s), largest "
                     f"{s.ratio:.1f}x median ({s.quantizer})", fontsize=8, loc="left")
        ax.set_ylabel("value", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right", ncol=2)
    axes[-1].set_xlabel("channel", fontsize=8)
    return _save(fig, folder, f"ranges_{_slug(group)}.png")


def _outliers(folder: Path, sites: list[Site]) -> str:
    from matplotlib.ticker import NullLocator

    fig = _figure(9, 0.26 * len(sites) + 1.2)
    ax = fig.subplots()
    y = np.arange(len(sites))[::-1]
    ratio = [s.ratio for s in sites]
    ax.barh(y, ratio, color=[RED if s.outliers else BLUE for s in sites])
    ax.axvline(OUTLIER_FACTOR, color=GREY, ls="--", lw=1,
               label=f"outlier line: {OUTLIER_FACTOR:g}x the median channel")
    ax.set_yticks(y, [f"{s.label}  [{len(s.outliers)}]" for s in sites], fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    top = max(max(ratio), OUTLIER_FACTOR) * 1.3
    ticks = [t for t in (1, 1.5, 2, 3, 4, 6, 10, 20, 50, 100, 200, 500, 1000) if t <= top]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.set_xlim(1, top)
    ax.set_xlabel("largest channel |x| / median channel |x|  (log; [n]: outlier channels)",
                  fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, folder, "outliers.png")


def _bits(folder: Path, report: Report) -> str:
    lin = report.linears
    fig = _figure(9, 0.2 * len(lin) + 1.4)
    ax = fig.subplots()
    y = np.arange(len(lin))[::-1]
    ax.barh(y + 0.2, [x.weight_bits for x in lin], 0.4, color=BLUE, label="weight bits")
    ax.barh(y - 0.2, [x.activation_bits for x in lin], 0.4, color=ORANGE,
            label="activation bits (32: float)")
    for yy, x in zip(y, lin):
        ax.text(x.weight_bits + 0.3, yy + 0.2, x.weight, fontsize=6, va="center")
        ax.text(x.activation_bits + 0.3, yy - 0.2, x.activation, fontsize=6, va="center")
    ax.set_yticks(y, [x.name for x in lin], fontsize=6 if len(lin) > 40 else 7)
    ax.set_xlim(0, 48)
    ax.set_xticks([0, 2, 4, 8, 16, 32])
    ax.set_xlabel("bits", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, folder, "bits.png")


def _lowering(folder: Path, report: Report) -> str:
    counts = collections.Counter(x.kernel if x.kernel != "fp32" else f"fp32: {x.why}"
                                 for x in report.linears)
    rows = counts.most_common()
    fig = _figure(9, 0.4 * len(rows) + 1.2)
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [n for _, n in rows], color=[GREY if k.startswith("fp32") else GREEN
                                            for k, _ in rows])
    ax.set_yticks(y, [k if len(k) < 70 else k[:67] + "..." for k, _ in rows], fontsize=7)
    for yy, (_, n) in zip(y, rows):
        ax.text(n, yy, f" {n}", va="center", fontsize=7)
    ax.set_xlabel("linears", fontsize=8)
    ax.set_title(f"integer kernels: {report.lowering.kernel_family or 'none for ' + report.lowering.target}",
                 fontsize=8, loc="left")
    return _save(fig, folder, "lowering.png")


def _sizes(folder: Path, report: Report) -> str:
    fig = _figure(9, 2.2 + 0.15 * len(report.sizes))
    ax = fig.subplots()
    colors = [BLUE, ORANGE, GREEN, RED, "#8172b3", "#937860", "#da8bc3", GREY]
    left = np.zeros(2)
    for i, row in enumerate(report.sizes):
        mb = np.array([row.float_bytes, row.quant_bytes]) / _MB
        ax.barh([1, 0], mb, left=left, color=colors[i % len(colors)], label=row.component)
        left += mb
    for yy, total in zip([1, 0], left):
        ax.text(total, yy, f" {total:.2f} MB", va="center", fontsize=8)
    ax.set_yticks([1, 0], ["float", f"quantized ({report.recipe})"], fontsize=8)
    ax.set_xlim(0, left.max() * 1.2)
    ax.set_xlabel("MB (1e6 bytes)", fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    return _save(fig, folder, "sizes.png")


def draw(report: Report, folder: Path) -> list[Plot]:
    """Draw every plot of ``report`` into ``folder``."""
    measured = [s for s in report.sites if s.lo is not None]
    groups: dict[str, list[Site]] = {}
    for s in measured:
        groups.setdefault(s.group, []).append(s)
    jobs = []
    if measured:
        jobs.append(("ranges", lambda: _outliers(folder, measured),
                     (f"largest over median channel of each linear input; red: has "
                      f"channels beyond {OUTLIER_FACTOR:g}x the median")))
    for g, sites in groups.items():
        jobs.append(("ranges", lambda g=g, sites=sites: _ranges(folder, g, sites),
                     f"{g}: per-channel range of each linear input on the calibration text"))
    if report.linears:
        jobs.append(("bits", lambda: _bits(folder, report),
                     "weight and activation bits per linear"))
    if report.lowering is not None and report.lowering.error is None:
        jobs.append(("lowering", lambda: _lowering(folder, report), "linears per kernel"))
    if report.sizes:
        jobs.append(("sizes", lambda: _sizes(folder, report), "bytes by component"))
    plots = []
    for section, fn, caption in progress.bar(jobs, desc="drawing plots", unit="plot"):
        plots.append(Plot(section, fn(), caption))
    return plots
