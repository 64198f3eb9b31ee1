#!/usr/bin/env python
"""lowbit's CPU kernels alone, default (hand-written) schedules, 2 threads:

0. The W8A8 GEMM (``linear_u8s8``, exact u8 x s8 -> s32) for every instruction set of the
   registry this host can execute (isa/: AVX-512 VNNI, AVX-VNNI, AVX-512BW, AVX2, each built
   for its example CPU, with the weight dtype its compiled modules use: int16, pre-widened,
   for the pair form), against torch's fp32 matmul on the same shapes and threads (GOP/s
   counts 2 M N K). The pair-form sets also run with s8 weights widened per block in the
   inner loop (the "s8 w" columns: what they ran before the weights were pre-widened).
1. int4 weight-only GEMV (M=1, group 128) against this machine's measured memory bandwidth:
   effective bandwidth = bytes the kernel must read (packed int4 weights + fp32 group scales)
   / median time, with weights far larger than the last-level cache. Bandwidth is measured in
   the same process with ``torch.sum`` over a 512 MB fp32 tensor (a vectorized, threaded
   streaming read) and with a numpy copy (read + write).
2. PEG group-wise int8 GEMM (G groups) against the plain W8A8 GEMM on the same shapes
   (BERT-base layer: 128 x 768 x 768, 128 x 3072 x 768, 128 x 768 x 3072).

    python benchmarks/kernels_cpu.py [--threads 2] [--repeat 7] [--target cpu|x86-64-v3|...]

``--target`` is the CPU sections 1 and 2 are built for (default: this host).

Times are medians of ``repeat`` timings of ``number`` calls each (``check.time_kernels``); the
1-minute load average is printed because this machine is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _bandwidth(threads: int) -> tuple[float, float]:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    a = torch.empty(128 * 1024 * 1024, dtype=torch.float32).uniform_()
    for _ in range(3):
        a.sum()
    ts = []
    for _ in range(11):
        t0 = time.perf_counter()
        a.sum()
        ts.append(time.perf_counter() - t0)
    read = a.numel() * 4 / sorted(ts)[len(ts) // 2] / 1e9
    src = np.ones(64 * 1024 * 1024, np.float32)
    dst = np.empty_like(src)
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        ts.append(time.perf_counter() - t0)
    copy = 2 * src.nbytes / sorted(ts)[len(ts) // 2] / 1e9
    return read, copy


GEMM_SHAPES = ((128, 768, 768), (128, 3072, 768), (128, 768, 3072))   # M x N x K, BERT-base


def _gemm_per_isa(args) -> None:
    import torch

    from lowbit.backends.tvm import kernels
    from lowbit.backends.tvm.check import check_schedule, time_kernels
    from lowbit.backends.tvm.kernels.isa import ISAS, example_target, host_runs

    torch.set_num_threads(args.threads)
    cols = [(i, w) for i in ISAS for w in ((i.weight_dtype, "int8") if i.pairs else ("int8",))]
    print("\n| W8A8 GEMM M x N x K | torch fp32 ms | "
          + " | ".join(f"{i.name}{' s8 w' if i.pairs and w == 'int8' else ''} ms (GOP/s)"
                       for i, w in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for m, n, k in GEMM_SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        ts = []
        for _ in range(args.repeat * 3):
            t0 = time.perf_counter()
            for _ in range(10):
                a @ b
            ts.append((time.perf_counter() - t0) / 10)
        cells = [f"{sorted(ts)[len(ts) // 2] * 1e3:.3f}"]
        for isa, w_dtype in cols:
            target = example_target(isa, args.threads)
            if not host_runs(target):
                cells.append("(host cannot run)")
                continue
            func = kernels.linear_u8s8(m, n, k, w_dtype=w_dtype)
            sched = kernels.default_schedule(func, target).mod["main"]
            assert check_schedule(func, sched, target).ok
            t = time_kernels([sched], target, repeat=args.repeat, number=10)[0]
            cells.append(f"{t * 1e3:.3f} ({2 * m * n * k / t / 1e9:.0f})")
        print(f"| {m} x {n} x {k} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--groups", type=int, default=6, help="PEG groups (default 6)")
    p.add_argument("--target", default="cpu", help="cpu (this host) or an LLVM CPU name")
    args = p.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    from lowbit.backends.tvm import kernels
    from lowbit.backends.tvm.check import check_schedule, time_kernels
    from lowbit.backends.tvm.kernels.cpu import for_target
    from lowbit.backends.tvm.kernels.isa import isa_of
    from lowbit.backends.tvm.kernels.peg import linear_u8s8_peg
    from lowbit.backends.tvm.target import host_target, resolve_target
    from lowbit.hostcpu import host_x86_features

    target = (host_target(args.threads) if args.target in ("cpu", "host") else
              resolve_target({"kind": "llvm", "mcpu": args.target, "num-cores": args.threads}))
    flags = sorted(host_x86_features() & {"avx2", "avx512f", "avx512bw", "avx512_vnni",
                                          "avx_vnni"})
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, host CPU flags {' '.join(flags)}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    _gemm_per_isa(args)
    isa = isa_of(target)
    print(f"\nsections 1-2 built for {target} (int8 family {isa.family if isa else None})")
    read_bw, copy_bw = _bandwidth(args.threads)
    print(f"\nmemory bandwidth ({args.threads} threads): torch.sum read {read_bw:.1f} GB/s, "
          f"numpy copy (read + write) {copy_bw:.1f} GB/s\n")
    print("| int4 GEMV (M=1, g=128) K x N | weight MB | median ms | GB/s | of read bandwidth |")
    print("|---|---|---|---|---|")
    for k, n in ((4096, 4096), (8192, 8192), (4096, 16384)):
        func = kernels.linear_w4a16(1, n, k, 128)
        sched = kernels.default_schedule(func, target).mod["main"]
        assert check_schedule(func, sched, target).ok
        t = time_kernels([sched], target, repeat=args.repeat, number=5)[0]
        nbytes = k * n // 2 + (k // 128) * n * 4
        print(f"| {k} x {n} | {nbytes / 1e6:.1f} | {t * 1e3:.3f} | {nbytes / t / 1e9:.1f} | "
              f"{nbytes / t / 1e9 / read_bw:.0%} |")

    print(f"\n| W8A8 GEMM M x N x K | plain ms | PEG (G={args.groups}) ms | PEG / plain |")
    print("|---|---|---|---|")
    for m, n, k in ((128, 768, 768), (128, 3072, 768), (128, 768, 3072)):
        plain = kernels.default_schedule(for_target(kernels.linear_u8s8(m, n, k), target),
                                         target).mod["main"]
        pf = for_target(linear_u8s8_peg(m, n, k, args.groups), target)
        peg = kernels.default_schedule(pf, target).mod["main"]
        assert check_schedule(pf, peg, target).ok
        tp, tg = [], []
        for _ in range(3):   # different signatures: alternate single timings
            tp.append(time_kernels([plain], target, repeat=args.repeat, number=10)[0])
            tg.append(time_kernels([peg], target, repeat=args.repeat, number=10)[0])
        a, b = sorted(tp)[1], sorted(tg)[1]
        print(f"| {m} x {n} x {k} | {a * 1e3:.3f} | {b * 1e3:.3f} | {b / a:.2f} |")
    print(f"\nload avg at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
