#!/usr/bin/env python
"""The BCQ bit-plane kernel (``bcq_linear``, kernels/bcq.py) alone, 2 threads:

1. GEMV (M=1, group 128) for q = 2, 3, 4 planes on K x N = 4096 x 4096, 4096 x 11008 and
   11008 x 4096, both GEMV forms (``lut``: table lookup, ``vpermps``, AVX-512 only; ``bits``:
   bit-plane masked adds), against lowbit's own W4A16 GEMV (``linear_w4a16``) on the same
   shape. Effective bandwidth = bytes the kernel must read (packed planes + fp32 alphas; int4
   weights + fp32 scales for W4A16) / median time, against the read bandwidth measured in the
   same process (``kernels_cpu._bandwidth``: torch.sum over 512 MB).
2. Which kernel for which M: the GEMV forms against the strip-decoding GEMM schedule at
   M = 1, 2, 4, 8, 16, 32 (4096 x 4096, q = 3), what ``bcq.GEMV_MAX_M`` was chosen from, and
   lowbit's W4A16 (its default schedule at that M) beside them.

The read bandwidth is measured again at the end; a drift over 15% (a neighbour on the
memory system, which the load average does not show on a VM) is flagged. Every call reads
weights from memory, not cache: the kernel cycles through enough copies of
its operands to cover ``--cold-mb`` (default 256 MB, 8x the 32 MB L3 here); a call's time is
the wall time of one pass over the copies divided by their number (median of ``repeat``
passes; the Python call overhead, a few microseconds, is included for every kernel alike).

    python benchmarks/kernels_bcq.py [--threads 2] [--repeat 7] [--target cpu|x86-64-v3|...]
                                     [--bits 2,3,4] [--skip-m-sweep]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

SHAPES = ((4096, 4096), (4096, 11008), (11008, 4096))     # K x N
GROUP = 128


def _cold_time(func, target, arrays, cold_mb: float, repeat: int) -> float:
    """Median seconds per call of the scheduled ``func``, weights always from memory."""
    import numpy as np
    import tvm

    lib = tvm.compile(func.with_attr("global_symbol", "main"), target)
    dev = tvm.cpu()
    nbytes = sum(a.nbytes for a in arrays)
    copies = max(2, int(cold_mb * 1e6 // nbytes) + 1)
    sets = [[tvm.runtime.tensor(a, dev) for a in arrays] for _ in range(copies)]
    run = lib["main"]
    for s in sets:
        run(*s)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for s in sets:
            run(*s)
        ts.append((time.perf_counter() - t0) / copies)
    return float(np.median(ts))


def _checked(func, sched, target):
    from lowbit.backends.tvm.check import check_schedule

    res = check_schedule(func, sched, target)
    if not res.ok:
        raise SystemExit(f"{func.attrs['lowbit.kernel']}: schedule disagrees with the reference: "
                         f"{res.detail}")
    return sched


def _bcq(m, n, k, q, form, target):
    """(the scheduled kernel, its random arguments, bytes of planes + alphas)."""
    from lowbit.backends.tvm.check import random_args
    from lowbit.backends.tvm.kernels import bcq

    func = bcq.bcq_linear(m, n, k, q, GROUP, offset=False)
    if form == "gemm":
        from tvm import s_tir

        sched = bcq.schedule_gemm(s_tir.Schedule(func)).mod["main"]
    else:
        sched = bcq.bcq_gemv(m, n, k, q, GROUP, False, bcq.block_width(n), form)
    args = random_args(func)
    return _checked(func, sched, target), args, args[1].nbytes + args[2].nbytes


def _w4a16(n, k, target, m=1):
    from lowbit.backends.tvm import kernels
    from lowbit.backends.tvm.check import random_args

    func = kernels.linear_w4a16(m, n, k, GROUP)
    sched = kernels.default_schedule(func, target).mod["main"]
    args = random_args(func)
    return _checked(func, sched, target), args, args[1].nbytes + args[2].nbytes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--target", default="cpu", help="cpu (this host) or an LLVM CPU name")
    p.add_argument("--bits", default="2,3,4", help="plane counts q (default 2,3,4)")
    p.add_argument("--cold-mb", type=float, default=256.0)
    p.add_argument("--skip-m-sweep", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(pathlib.Path(__file__).parent))

    from kernels_cpu import _bandwidth

    from lowbit.backends.tvm.kernels import bcq
    from lowbit.backends.tvm.target import host_target, resolve_target
    from lowbit.hostcpu import host_x86_features

    target = (host_target(args.threads) if args.target in ("cpu", "host") else
              resolve_target({"kind": "llvm", "mcpu": args.target, "num-cores": args.threads}))
    forms = ["lut", "bits"] if bcq.has_avx512(target) else ["bits"]
    flags = sorted(host_x86_features() & {"avx2", "avx512f", "avx512bw", "avx512_vnni",
                                          "avx_vnni"})
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, host CPU flags {' '.join(flags)}, target "
          f"{target.attrs.get('mcpu')}, GEMV form used by default: {bcq.gemv_form(target)}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    read_bw, copy_bw = _bandwidth(args.threads)
    print(f"\nmemory bandwidth ({args.threads} threads): torch.sum read {read_bw:.1f} GB/s, "
          f"numpy copy (read + write) {copy_bw:.1f} GB/s; every kernel timed from memory "
          f"(operand copies over {args.cold_mb:.0f} MB)\n")
    print("| GEMV M=1, g=128, K x N | kernel | MB read | median ms | GB/s | of read bw | "
          "vs W4A16 time | load |")
    print("|---|---|---|---|---|---|---|---|")
    for k, n in SHAPES:
        func, arrs, nb = _w4a16(n, k, target)
        t4 = _cold_time(func, target, arrs, args.cold_mb, args.repeat)
        print(f"| {k} x {n} | W4A16 | {nb / 1e6:.1f} | {t4 * 1e3:.3f} | {nb / t4 / 1e9:.1f} | "
              f"{nb / t4 / 1e9 / read_bw:.0%} | 1.00 | {os.getloadavg()[0]:.2f} |")
        for q in (int(b) for b in args.bits.split(",")):
            for form in forms:
                func, arrs, nb = _bcq(1, n, k, q, form, target)
                t = _cold_time(func, target, arrs, args.cold_mb, args.repeat)
                print(f"| {k} x {n} | BCQ q={q} {form} | {nb / 1e6:.1f} | {t * 1e3:.3f} | "
                      f"{nb / t / 1e9:.1f} | {nb / t / 1e9 / read_bw:.0%} | {t / t4:.2f} | "
                      f"{os.getloadavg()[0]:.2f} |")
    if not args.skip_m_sweep:
        k = n = 4096
        print(f"\n| BCQ q=3, {k} x {n}, M | " + " | ".join(f"{f} ms" for f in forms)
              + " | gemm ms | W4A16 ms | load |")
        print("|---|" + "---|" * (len(forms) + 3))
        for m in (1, 2, 4, 8, 16, 32):
            runs = [_bcq(m, n, k, 3, form, target) for form in [*forms, "gemm"]]
            runs.append(_w4a16(n, k, target, m))
            cells = [f"{_cold_time(f, target, a, args.cold_mb, args.repeat) * 1e3:.3f}"
                     for f, a, _ in runs]
            print(f"| {m} | " + " | ".join(cells) + f" | {os.getloadavg()[0]:.2f} |")
    end_bw = _bandwidth(args.threads)[0]
    drift = abs(end_bw - read_bw) / read_bw
    print(f"\nload avg at the end {os.getloadavg()[0]:.2f}; read bandwidth at the end "
          f"{end_bw:.1f} GB/s ({drift:.0%} from the start"
          + ("; the memory system was shared during the run: repeat it)" if drift > 0.15 else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
