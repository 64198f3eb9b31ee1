#!/usr/bin/env python
"""Tensor-train layers as TVM int8 kernels: the real all-MiniLM-L6-v2, dense W8A8 against TT
(every attention and FFN linear, max rank r, materialized halves) W8A8, CPU, one process.

    python benchmarks/minilm_tt_tvm.py [--ranks 32,64] [--batch 1,8] [--seq 128]
        [--threads 2] [--iters 30] [--rounds 3] [--json FILE] [--student FILE]

Each variant is ``lowbit.quantize(..., W8A8)`` (TT: ``lowbit.tensor_train`` + ``materialize_tt``
first, so ``QuantizeTTHalves`` gives both halves of each layer int8 weights and static u8
inputs) then ``lowbit.compile(target="cpu")`` with default schedules (no tuning: the same for
every variant). Latency: ``lowbit.timing.measure`` medians, the variants measured in turn for
``--rounds`` rounds and the median of the rounds' medians kept (the machine is shared). The TT
weights are the TT-SVD start, untrained: this measures speed and size, not accuracy (the SST-2
accuracy after distillation is in docs/quantization.md). Agreement, as tests/test_minilm_tvm.py
measures it: TVM vs the FX fake-quant graph in steps of an 8-bit grid over the output's range
(a quantizer's rounding tie flips one step and later layers see it), mean and the fraction of
elements more than one step apart, on the timed batch.

``--student FILE`` (a ``benchmarks/minilm_tt_sst2.py --save`` file: trained cores, fine-tuned
encoder and head) adds the trained TT model, as ``benchmarks/tt_student.py`` rebuilds it
(materialized halves, W8A8; calibration: 64 SST-2 training sentences): its latency like the
other variants (the dense baseline keeps the pretrained weights: same shapes, same kernels),
and its SST-2 dev accuracy (872 sentences at [8, 64]) in the FX graph as trained, in the
deployable FX graph, and in TVM, and the bytes of the saved module (``--word-bits``: the
word table as 4-bit ``quantize_words`` codes, the student's own rounding; 0 keeps it fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import lowbit
from lowbit.config import TT
from lowbit.data import pydoc_sentences, text_batches
from lowbit.models import load_minilm
from lowbit.timing import load_average, measure


def _linear_bytes(gm) -> int:
    """int8 bytes of every quantized linear weight (what W8A8 stores) in the converted graph."""
    total = 0
    for name, buf in gm.named_buffers():
        if name.endswith("_i8"):
            total += buf.numel()
    return total


def _quantized(gm, rank: int | None, calib: list):
    g = gm
    if rank is not None:
        g = lowbit.materialize_tt(lowbit.tensor_train(gm, TT(ranks=rank), progress=False))
    return lowbit.quantize(g, lowbit.recipes.W8A8, calibration=calib, progress=False)


def _compiled(q, example: dict) -> tuple:
    """The module for ``example``'s shapes (modules are static), compile seconds, kernel kinds."""
    t0 = time.perf_counter()
    mod = lowbit.compile(q, target="cpu", example_inputs=example)
    return mod, time.perf_counter() - t0, [k for _, k in mod.meta["lowering"]]


def _student(path: str, word_bits: int) -> tuple[str, object, dict]:
    """The trained TT model (``--student``): its name, deployable graph and dev accuracies."""
    from tt_student import deployable, dev_accuracy, padded_batches, rebuild

    from lowbit.data import read_sst2

    student, head, info, tok = rebuild(pathlib.Path(path))
    dev = padded_batches(tok, *read_sst2("dev"), 8, 64)
    texts, labels = read_sst2("train")
    calib = [{"input_ids": i, "attention_mask": m}
             for i, m, _, _ in padded_batches(tok, texts[:64], labels[:64], 8, 64)]
    q = deployable(student, calib, word_bits=word_bits)
    acc = {"student": pathlib.Path(path).name, **info, "word_bits": word_bits or None,
           "fx_trained": dev_accuracy(lambda i, m: student(input_ids=i, attention_mask=m)[0],
                                      head, dev),
           "fx_deployable": dev_accuracy(lambda i, m: q(input_ids=i, attention_mask=m)[0],
                                         head, dev)}
    x = {"input_ids": dev[0][0], "attention_mask": dev[0][1]}
    mod, _, kinds = _compiled(q, x)
    acc["tvm_cpu"] = dev_accuracy(lambda i, m: mod(input_ids=i, attention_mask=m)[0], head,
                                  dev)
    acc["int8_linears"] = sum(k.startswith("linear_u8s8") for k in kinds)
    with tempfile.TemporaryDirectory() as d:
        acc["module_bytes"] = {p.name: p.stat().st_size for p in mod.save(pathlib.Path(d) / "m")
                               .iterdir()}
    print(f"[bench] trained student {acc}", file=sys.stderr)
    return f"tt r{info['rank']} trained", q, acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="32,64")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--student", default=None, help="a minilm_tt_sst2.py --save file")
    ap.add_argument("--word-bits", type=int, default=4,
                    help="the student's word table as quantize_words codes (0: fp32 table)")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    model, tok = load_minilm(quiet=True)
    calib = list(text_batches(tok, pydoc_sentences(16, words=60), batch_size=8,
                              seq_len=args.seq))
    gm = lowbit.capture(model, calib[0], dynamic=True)
    ranks = [None] + [int(r) for r in args.ranks.split(",")]
    quantized = {("dense" if r is None else f"tt r{r}"): _quantized(gm, r, calib) for r in ranks}
    accuracy = None
    if args.student:
        name, q_student, accuracy = _student(args.student, args.word_bits)
        quantized[name] = q_student
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        x = next(text_batches(tok, pydoc_sentences(batch, words=60, offset=100),
                              batch_size=batch, seq_len=args.seq))
        built = {}
        for name, q in quantized.items():
            mod, secs, kinds = _compiled(q, x)
            built[name] = (q, mod)
            print(f"[bench] {name} batch {batch}: compiled in {secs:.1f} s, "
                  f"{sum(k.startswith('linear_u8s8') for k in kinds)} int8 linear(s) of "
                  f"{len(kinds)}, {_linear_bytes(q) / 1e6:.2f} MB int8 weights", file=sys.stderr)
        medians: dict[str, list[float]] = {n: [] for n in built}
        for _ in range(args.rounds):
            for name, (_, mod) in built.items():
                medians[name].append(measure(lambda m=mod, x=x: m(**x), iters=args.iters,
                                             warmup=5).median_ms)
        dense_ms = float(np.median(medians["dense"]))
        for name, (q, mod) in built.items():
            want = q(**x).last_hidden_state.detach().numpy()
            got = mod(**x)[0].numpy()
            ms = float(np.median(medians[name]))
            step = (want.max() - want.min()) / 255       # as tests/test_minilm_tvm.py
            steps = np.abs(np.round(want / step) - np.round(got / step))
            rows.append({"variant": name, "batch": batch, "seq": args.seq, "ms": ms,
                         "round_medians_ms": medians[name], "vs_dense": dense_ms / ms,
                         "int8_weight_mb": _linear_bytes(q) / 1e6,
                         "mean_steps": float(steps.mean()), "beyond_one": float((steps > 1).mean()),
                         "load_average": load_average()})
    print("| variant | batch | int8 linear weights MB | TVM median ms | speed vs dense | "
          "TVM vs FX: mean steps, > 1 step |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['batch']} | {r['int8_weight_mb']:.2f} | {r['ms']:.2f} | "
              f"{r['vs_dense']:.2f}x | {r['mean_steps']:.2f}, {r['beyond_one']:.1%} |")
    flags = subprocess.run("grep -o -w -E 'avx512_vnni|avx_vnni|avx512bw|avx2' /proc/cpuinfo "
                           "| sort -u", shell=True, capture_output=True, text=True, check=False).stdout.split()
    result = {"command": "python benchmarks/minilm_tt_tvm.py " + shlex.join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                          "torch": torch.__version__}, "cpu_flags": flags,
              "threads": args.threads, "rows": rows, "student_accuracy": accuracy}
    print(f"cpu flags: {' '.join(flags)}; threads {args.threads}; {result['date']}")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
