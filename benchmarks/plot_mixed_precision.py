#!/usr/bin/env python
"""Pareto plot of the mixed-precision benchmarks: quality vs bytes of the searched weights.

    python benchmarks/plot_mixed_precision.py [--minilm benchmarks/results/minilm_mixed_precision.json]
        [--gemma benchmarks/results/gemma_mixed_precision.json]
        [--out docs/img/mixed_precision_pareto.png]

Left: all-MiniLM-L6-v2 SST-2 dev accuracy (``benchmarks/minilm_mixed_precision.py``); right:
Gemma-3-270M wikitext-2 perplexity (``benchmarks/gemma_mixed_precision.py``, log scale when the
range is wide; perplexities above ``--ppl-cap`` sit on the top edge, their value written next to
them). x: ``plan.total_bytes`` of the searched weights in MB. One marker per method
(ilp = integer program, ilp-mean / ilp-taylor = the same with pruning priced at the measured
mean / by the Taylor estimate, ilp-fast = with int8 inputs and a latency budget, dnas,
dnas-noprune, dnas-gpu-kl = KL distillation on the H200, uniform), the FP32 value as a dashed
line. Reads only the two JSON files (rows as those
scripts write them); needs matplotlib (``pip install lowbit[bench]``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
STYLE = {"ilp": ("o", "C0", "integer program (ilp)"),
         "ilp-mean": ("P", "C5", "integer program, pruning at the measured mean"),
         "ilp-taylor": ("v", "C4", "integer program, Taylor-priced pruning"),
         "dnas": ("s", "C1", "DNAS"),
         "dnas-noprune": ("D", "C3", "DNAS, no pruned candidate"),
         "ilp-fast": ("X", "C6", "integer program, int8 inputs + latency budget"),
         "dnas-gpu-kl": ("*", "C7", "DNAS, KL distillation (H200)"),
         "uniform": ("^", "C2", "uniform")}


def method(row: dict) -> str:
    if "method" in row:
        return row["method"]
    name = row["name"]
    return "fp" if name == "FP32" else name.split(" ")[0]


def label(row: dict) -> str:
    """A short point label: the budget for searched plans, the format for uniform ones."""
    if method(row) == "uniform":
        return row["name"].split(" ")[1]
    return f"{row['budget']:g}"


def load_rows(path: pathlib.Path, metric: str) -> tuple[list[dict], float]:
    """(rows with bytes and the metric, the FP32 value) from a results file: a list of rows
    (MiniLM) or ``{"meta", "rows"}`` (Gemma)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = data["rows"] if isinstance(data, dict) else data
    value = (lambda r: r["m"]["acc"]) if metric == "acc" else (lambda r: r["ppl"])
    fp = next(value(r) for r in rows if method(r) == "fp")
    pts = [{**r, "y": value(r)} for r in rows
           if method(r) in STYLE and "bytes" in r and "failed" not in r]
    return pts, fp


def panel(ax, rows: list[dict], fp: float, ylabel: str, title: str, log: bool,
          cap: float | None = None) -> None:
    """One panel; points above ``cap`` are drawn on the top edge (ringed) with their value
    written under them."""
    ax.axhline(fp, color="gray", linestyle="--", linewidth=1, label=f"FP32 ({fp:.4g})")
    for m, (marker, color, name) in STYLE.items():
        pts = sorted((r for r in rows if method(r) == m), key=lambda r: r["bytes"])
        if not pts:
            continue
        x = [r["bytes"] / 1e6 for r in pts]
        y = [r["y"] if cap is None else min(r["y"], cap) for r in pts]
        off = [cap is not None and r["y"] > cap for r in pts]
        ax.plot(x, y, marker=marker, color=color, label=name, markersize=7,
                linestyle="-" if m != "uniform" and not any(off) else "", linewidth=1)
        for r, xi, yi, o in zip(pts, x, y, off):
            if o:
                ax.plot([xi], [yi], marker=marker, markersize=11, fillstyle="none",
                        color=color)
            text = label(r) + (f": {r['y']:.0e}" if o else "")
            xy = (-14, -13) if m == "uniform" else (-10, -14) if o else (5, 4)
            ax.annotate(text, (xi, yi), textcoords="offset points", xytext=xy, fontsize=7,
                        color=color)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.08)
    if cap is not None:
        ax.set_ylim(top=cap * (2 if log else 1.05))
        title += f"\n(ringed: above {cap:g}, drawn at {cap:g}, value written under)"
    ax.set_xlabel("bytes of the searched weights (MB; codes + scales)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minilm", type=pathlib.Path,
                   default=REPO / "benchmarks/results/minilm_mixed_precision.json")
    p.add_argument("--gemma", type=pathlib.Path,
                   default=REPO / "benchmarks/results/gemma_mixed_precision.json")
    p.add_argument("--out", type=pathlib.Path, default=REPO / "docs/img/mixed_precision_pareto.png")
    p.add_argument("--ppl-cap", type=float, default=1e4,
                   help="perplexities above this are drawn on the panel's top edge")
    args = p.parse_args(argv)
    try:
        import matplotlib
    except ImportError as e:
        sys.exit(f"plot_mixed_precision: needs matplotlib (pip install lowbit[bench]): {e}")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    rows, fp = load_rows(args.minilm, "acc")
    panel(left, rows, fp, "SST-2 dev accuracy % (frozen probe)",
          "all-MiniLM-L6-v2: encoder linears, per head", log=False)
    rows, fp = load_rows(args.gemma, "ppl")
    ys = [min(r["y"], args.ppl_cap) for r in rows] + [fp]
    log = max(ys) > 4 * min(ys)
    panel(right, rows, fp, "wikitext-2 perplexity" + (" (log scale)" if log else ""),
          "Gemma-3-270M: decoder linears (embedding / head fp32, not counted)", log=log,
          cap=args.ppl_cap if any(r["y"] > args.ppl_cap for r in rows) else None)
    fig.suptitle("Mixed-precision plans (points labelled by budget in bits/weight) vs uniform "
                 "formats", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
