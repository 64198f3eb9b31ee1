#!/usr/bin/env python
"""Plot SST-2 dev accuracy against model bytes for the tensor-train MiniLM runs (issue 18).

    python benchmarks/plot_tt.py [--json benchmarks/results/minilm_tt_sst2_h200.json]
        [--out docs/img/tt_minilm_sst2.png]

One point per student row of the results file (rank, core bits, end-to-end epochs), at its
model bytes (``model_bytes``: cores at their bits + fp32 scales, the word embedding at its
bits, the rest fp32), and the fine-tuned FP32 teacher at ``model_fp32_bytes``; a dashed line
at the issue's goal (2 points under the teacher) and one at 10x smaller than FP32.
"""

from __future__ import annotations

import argparse
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=pathlib.Path,
                    default=REPO / "benchmarks/results/minilm_tt_sst2_h200.json")
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "docs/img/tt_minilm_sst2.png")
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = json.loads(args.json.read_text())["runs"]
    teacher = runs[0]["meta"]["teacher_dev_accuracy"]
    fp32_mb = runs[0]["rows"][0]["model_fp32_bytes"] / 1e6
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.scatter([fp32_mb], [teacher], marker="*", s=120, color="black", label="FP32 teacher")
    for run in runs:
        cmd = run["meta"]["command"]
        epochs = cmd.split("--e2e-epochs ")[1].split()[0] if "--e2e-epochs" in cmd else "1"
        for r in run["rows"]:
            label = f"r{r['rank']} int{r['bits']} cores, {epochs} epoch"
            ax.scatter([r["model_bytes"] / 1e6], [r["acc_e2e"]], label=label)
    ax.axhline(teacher - 2, ls="--", color="grey", lw=1, label="goal: teacher - 2 points")
    ax.axvline(fp32_mb / 10, ls=":", color="grey", lw=1, label="10x smaller than FP32")
    ax.set_xscale("log")
    ax.set_xlabel("model bytes (MB, log scale)")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.set_title("Tensor-train all-MiniLM-L6-v2 on SST-2 (H200 training)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = args.out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
