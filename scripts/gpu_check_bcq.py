"""On the GPU machine, with the TVM runtime only: check lowbit's CUDA BCQ GEMV (``bcq_linear``,
kernels/cuda.py ``shell_bcq``) against a float64 torch reference, and time it against torch
fp16 ``x @ W^T`` (cuBLAS) and the HBM bandwidth.

    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=<tvm runtime bundle>:. python scripts/gpu_check_bcq.py \\
        [--bundle .gpu_bundle] [--json out.json]

Reads .gpu_bundle/bcq (``python scripts/gpu_prepare.py --skip kernels,models``). Exits non-zero
when a check fails. Bandwidth: bytes of planes + alphas (+ offsets) per call over the median
time; "of copy" divides by a 1 GiB device-to-device copy (read + write) of the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check as gc  # (sets up the runtime-only lowbit package)
import tvm


def operands(m, n, k, q, group, offset, width, g):
    """Random signs / alphas / offset / bias, and the kernel layout (lowering/bcq.py pack_bcq)."""
    n_pad = -(-n // width) * width
    nb, ng = n_pad // width, k // group
    bits = torch.randint(0, 2, (q, n_pad, k), dtype=torch.uint8, device="cuda", generator=g)
    bits[:, n:] = 0
    planes = (bits.reshape(q, n_pad, k // 8, 8) << torch.arange(8, dtype=torch.uint8,
                                                                device="cuda")).sum(-1)
    planes = planes.to(torch.uint8)                                    # [q, Np, K/8]
    alpha = torch.rand(n_pad, ng, q, device="cuda", generator=g) * 0.02 + 0.001
    alpha[n:] = 0
    off = torch.randn(n_pad, ng, device="cuda", generator=g) * 0.01 if offset else None
    bias = torch.randn(n, device="cuda", generator=g)
    x = torch.randn(m, k, device="cuda", generator=g)
    kp = [planes.reshape(q, nb, width, k // 8).permute(1, 3, 0, 2).contiguous(),
          alpha.reshape(nb, width, ng, q).permute(0, 2, 3, 1).contiguous()]
    if offset:
        kp.append(off.reshape(nb, width, ng).permute(0, 2, 1).contiguous())
    return x, bits[:, :n], alpha[:n], None if off is None else off[:n], bias, kp


def reference(x, bits, alpha, off, bias):
    """float64 y = x W'^T + bias, W' = sum_i alpha_i (2 B_i - 1) (+ offset), plane by plane."""
    q, n, k = bits.shape
    grp = k // alpha.shape[1]
    w = torch.zeros(n, k, dtype=torch.float64, device="cuda")
    for i in range(q):
        w += (bits[i].double() * 2 - 1) * alpha[:, :, i].double().repeat_interleave(grp, 1)
    if off is not None:
        w += off.double().repeat_interleave(grp, 1)
    return (x.double() @ w.t() + bias.double()).float(), w


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", default=str(gc.REPO / ".gpu_bundle"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA backend: "
          f"{gc.load_cuda_backend()}", flush=True)
    folder = Path(args.bundle) / "bcq"
    index = json.loads((folder / "bcq.json").read_text())
    g = torch.Generator(device="cuda").manual_seed(0)
    bw = gc.bandwidth()
    print(f"device-to-device copy: {bw:.0f} GB/s (read + write)", flush=True)
    rows = []
    shapes: dict = {}
    for e in index:
        shapes.setdefault(tuple(e["shape"]) + (e["width"],), []).append(e)
    for (m, n, k, q, grp, off, width), entries in shapes.items():
        x, bits, alpha, offv, bias, kp = operands(m, n, k, q, grp, bool(off), width, g)
        ref, w = reference(x, bits, alpha, offv, bias)
        del bits
        ms_t = None
        if any(e["role"] != "check" for e in entries):
            wh16, xh = w.half(), x.half()
            del w
            ms_t = gc.bench_ms(lambda xh=xh, wh=wh16: xh @ wh.t(), iters=200)
        else:
            del w
        nbytes = sum(a.numel() * a.element_size() for a in kp)
        for e in entries:
            f = tvm.runtime.load_module(str(folder / e["file"]))["main"]
            y = torch.full((m, n), float("nan"), device="cuda")
            targs = [gc.t_(a) for a in (x, *kp, bias, y)]
            f(*targs)
            tvm.cuda(0).sync()
            got = gc.back(targs[-1])
            err = gc.rel(got, ref)
            gc.check(bool(torch.isfinite(got).all()) and err < 1e-5,
                     f"bcq M={m} {n}x{k} q={q} g{grp} offset={off} ({e['config']}): "
                     f"rel err {err:.2e}")
            if e["role"] != "check":
                ms = gc.bench_ms(lambda f=f, targs=targs: f(*targs), iters=200)
                rows.append({"role": e["role"], "M": m, "N": n, "K": k, "q": q,
                             "config": e["config"], "lowbit_ms": ms, "torch_fp16_ms": ms_t,
                             "speedup": ms_t / ms, "MB": nbytes / 1e6,
                             "GBps": nbytes / ms / 1e6, "of_copy": nbytes / ms / 1e6 / bw})
        if ms_t is not None:    # torch timed again after lowbit's; the faster of the two counts
            ms_t2 = gc.bench_ms(lambda xh=xh, wh=wh16: xh @ wh.t(), iters=200)
            for r in rows:
                if (r["M"], r["N"], r["K"], r["q"]) == (m, n, k, q):
                    r["torch_fp16_ms"] = min(ms_t, ms_t2)
                    r["speedup"] = r["torch_fp16_ms"] / r["lowbit_ms"]
            del wh16
        torch.cuda.empty_cache()
    print(f"\n| M x N x K | q | config | weights MB | lowbit ms | torch fp16 ms | speedup | GB/s |"
          f" of copy {bw:.0f} GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['M']}x{r['N']}x{r['K']} | {r['q']} | {r['config']} | {r['MB']:.1f} | "
              f"{r['lowbit_ms']:.4f} | {r['torch_fp16_ms']:.4f} | {r['speedup']:.2f} | "
              f"{r['GBps']:.0f} | {r['of_copy']:.2f} |" + (" sweep" if r["role"] == "sweep" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_GBps": bw, "rows": rows,
                                               "fails": gc.FAILS}, indent=1))
    print(f"\n{len(gc.FAILS)} check(s) failed" + (": " + "; ".join(gc.FAILS) if gc.FAILS else ""))
    sys.exit(1 if gc.FAILS else 0)


if __name__ == "__main__":
    main()
