"""On the GPU machine, with the TVM runtime only: check lowbit's CUDA kernels and sm_90 models
against references, and time them against torch (fp32, bf16, torch._int_mm) and HBM bandwidth.

    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=<tvm runtime bundle>:. python scripts/gpu_check.py \
        [--bundle .gpu_bundle] [--json out.json]

Reads what scripts/gpu_prepare.py wrote. Exits non-zero when a check fails. Timings: CUDA
events or a device sync around many calls, after warm-up; medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if "lowbit" not in sys.modules:
    # the runtime needs lowbit/backends/tvm/{runtime,cuda_env}.py and lowbit/errors.py only:
    # skip lowbit/__init__.py, which imports the quantization passes (they need the torch
    # version lowbit is developed with, not the one on the GPU machine)
    import types

    _pkg = types.ModuleType("lowbit")
    _pkg.__path__ = [str(REPO / "lowbit")]
    sys.modules["lowbit"] = _pkg

import tvm  # noqa: E402

from lowbit.backends.tvm.cuda_env import load_cuda_backend  # noqa: E402
from lowbit.backends.tvm.runtime import load  # noqa: E402

FAILS: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILS.append(what)


def t_(x: torch.Tensor) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(x.cpu().numpy(), tvm.cuda(0))


def back(t: tvm.runtime.Tensor) -> torch.Tensor:
    return torch.from_numpy(t.numpy()).cuda()


def bench_ms(fn, iters: int = 50, warm: int = 10) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / iters)
    return float(np.median(ts))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- kernels --------------------------------------------------------------------------------
def u8s8_inputs(m, n, k, g):
    n_pad = -(-n // 16) * 16
    x = torch.randint(0, 256, (m, k), dtype=torch.uint8, device="cuda", generator=g)
    w = torch.randint(-127, 128, (n_pad, k), dtype=torch.int8, device="cuda", generator=g)
    w[n:] = 0
    wp = w.reshape(n_pad // 16, 16, k // 4, 4).permute(0, 2, 1, 3).contiguous()
    corr = torch.randint(-5000, 5000, (n,), dtype=torch.int32, device="cuda", generator=g)
    scale = torch.rand(n, device="cuda", generator=g) * 1e-4
    bias = torch.randn(n, device="cuda", generator=g)
    return x, w[:n], wp, corr, scale, bias


def u8s8_ref(x, w, corr, scale, bias):
    acc = x.double() @ w.double().t()          # exact: |acc| < 2^53
    return ((acc - corr.double()).float() * scale + bias)


def w4_inputs(m, n, k, grp, g):
    x = torch.randn(m, k, device="cuda", generator=g)
    w = torch.randint(0, 256, (k // 2, n), dtype=torch.uint8, device="cuda", generator=g)
    scale = torch.rand(k // grp, n, device="cuda", generator=g) * 0.02 + 0.001
    bias = torch.randn(n, device="cuda", generator=g)
    return x, w, scale, bias


def w4_ref(x, w, scale, bias):
    lo = (w & 15).double() - 8
    hi = (w >> 4).double() - 8
    wk = torch.stack([lo, hi], 1).reshape(-1, w.shape[1])            # [K, N]
    grp = wk.shape[0] // scale.shape[0]
    wk = wk * scale.double().repeat_interleave(grp, 0)
    return (x.double() @ wk + bias.double()).float()


def kernels(bundle: Path, rows: list) -> None:
    index = json.loads((bundle / "kernels" / "kernels.json").read_text())
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = tvm.cuda(0)
    for e in index:
        mod = tvm.runtime.load_module(str(bundle / "kernels" / e["file"]))
        f = mod["main"]
        if e["kind"] == "u8s8":
            m, n, k = e["shape"]
            x, w, wp, corr, scale, bias = u8s8_inputs(m, n, k, g)
            y = torch.full((m, n), float("nan"), device="cuda")
            args = [t_(a) for a in (x, wp, corr, scale, bias, y)]
            f(*args)
            dev.sync()
            y = back(args[-1])
            ref = u8s8_ref(x, w, corr, scale, bias)
            err = rel(y, ref)
            check(bool(torch.isfinite(y).all()) and err < 1e-6,
                  f"u8s8 {m}x{n}x{k}: rel err {err:.2e} (fp32 epilogue)")
            if e["role"] == "bench":
                ms = bench_ms(lambda: f(*args))
                xi8 = (x.int() - 128).to(torch.int8)
                ms_t = bench_ms(lambda: torch._int_mm(xi8, w.t()))
                ms_tb = bench_ms(lambda: torch.nn.functional.linear(
                    x.to(torch.bfloat16), w.to(torch.bfloat16)))
                top = 2 * m * n * k / 1e12
                rows.append({"what": "int8 GEMM", "M": m, "N": n, "K": k,
                             "lowbit_ms": ms, "int_mm_ms": ms_t, "bf16_ms": ms_tb,
                             "lowbit_TOPS": top / ms * 1e3, "int_mm_TOPS": top / ms_t * 1e3,
                             "ratio": ms_t / ms})
        else:
            m, n, k, grp = e["shape"]
            x, w, scale, bias = w4_inputs(m, n, k, grp, g)
            y = torch.full((m, n), float("nan"), device="cuda")
            args = [t_(a) for a in (x, w, scale, bias, y)]
            f(*args)
            dev.sync()
            y = back(args[-1])
            err = rel(y, w4_ref(x, w, scale, bias))
            # the M > 4 tensor-core kernel ("tc*") rounds x to fp16 (scripts/gpu_check_gemv.py
            # TC_BOUND, docs/gpu.md "Prefill"); the GEMV and the SIMT kernel keep fp32 x
            bound = 2e-3 if str(e.get("config", "")).startswith("tc") else 1e-5
            check(bool(torch.isfinite(y).all()) and err < bound,
                  f"w4a16 M={m} {n}x{k} g{grp} {e.get('config', '')}: rel err {err:.2e}")
            if e["role"] == "bench":
                ms = bench_ms(lambda: f(*args), iters=200)
                nbytes = w.numel() + scale.numel() * 4 + x.numel() * 4 + 2 * y.numel() * 4 \
                    + bias.numel() * 4
                rows.append({"what": "int4 GEMV", "M": m, "N": n, "K": k, "lowbit_ms": ms,
                             "GBps": nbytes / ms / 1e6})


def bandwidth() -> float:
    a = torch.empty(2**28, dtype=torch.float32, device="cuda")   # 1 GiB
    b = torch.empty_like(a)
    ms = bench_ms(lambda: b.copy_(a), iters=20, warm=3)
    return 2 * a.numel() * 4 / ms / 1e6


# ---- models ---------------------------------------------------------------------------------
def _torch_model(name: str):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    if name == "minilm":
        cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, vocab_size=30522)
    else:
        cfg = BertConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                         intermediate_size=3072, vocab_size=1024)
    return BertModel(cfg).eval().cuda()


def models(bundle: Path, rows: list, save: Path | None = None, only: str = "") -> None:
    folder = bundle / "models"
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        name, b = d.name.rsplit("_b", 1)
        if (only and d.name not in only.split(",")) or "@" in name:
            continue                # <name>@<arch>...: variants, see scripts/gpu_check_e2e.py
        link = d / "params.bin"
        if not link.exists():
            os.symlink((folder / f"params_{name}.bin").resolve(), link)
        t0 = time.perf_counter()
        mod = load(d)
        z = np.load(d / "io.npz")
        out = mod(z["input_ids"], z["attention_mask"])[0]
        t_load = time.perf_counter() - t0
        got = torch.from_numpy(np.asarray(out))
        if save is not None:
            np.save(save / f"{d.name}.npy", np.asarray(out))
        for ref in ("cpu", "fx", "fp32"):
            if ref not in z:
                continue
            r = torch.from_numpy(z[ref])
            err = rel(got, r)
            cos = float(torch.nn.functional.cosine_similarity(got.double().flatten(1),
                                                              r.double().flatten(1)).mean())
            what = f"{d.name} vs {ref}: rel err {err:.2e}, mean cosine {cos:.6f}"
            if ref == "cpu":
                check(err < 1e-2 and cos > 0.9999, what + " (bounds 1e-2, 0.9999)")
            elif ref == "fx":
                check(cos > 0.999, what + " (bound 0.999)")
            else:
                print("info " + what)
            per_row = torch.nn.functional.cosine_similarity(got.double().flatten(1),
                                                            r.double().flatten(1))
            worst = torch.argsort(per_row)[:3].tolist()
            print(f"     per-row cosine vs {ref}: min {float(per_row.min()):.6f} (rows {worst}: "
                  f"{', '.join(f'{float(per_row[i]):.6f}' for i in worst)}), median "
                  f"{float(per_row.median()):.6f}")
        vm = mod._ready()
        ins = [mod._to_device(v, s) for v, s in zip((z["input_ids"], z["attention_mask"]),
                                                    mod.meta["inputs"])]
        ms = bench_ms(lambda: vm["main"](*ins, *mod._params), iters=20)
        tm = _torch_model(name)
        ids = torch.from_numpy(z["input_ids"]).cuda() % tm.config.vocab_size
        mask = torch.from_numpy(z["attention_mask"]).cuda()
        with torch.no_grad():
            ms32 = bench_ms(lambda: tm(input_ids=ids, attention_mask=mask), iters=20)
            tb = tm.to(torch.bfloat16)
            msbf = bench_ms(lambda: tb(input_ids=ids, attention_mask=mask), iters=20)
        rows.append({"what": f"model {name}", "batch": int(b), "lowbit_w8a8_ms": ms,
                     "torch_fp32_ms": ms32, "torch_bf16_ms": msbf, "load_s": t_load})
        print(f"{d.name}: lowbit W8A8 {ms:.3f} ms, torch fp32 {ms32:.3f} ms, bf16 {msbf:.3f} ms "
              f"(load + first call {t_load:.1f} s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", default=str(REPO / ".gpu_bundle"))
    p.add_argument("--json", default=None)
    p.add_argument("--skip", default="")
    p.add_argument("--models", default="", help="comma list of model folders (default: all)")
    p.add_argument("--save", default=None, help="folder for the models' outputs (.npy)")
    args = p.parse_args()
    bundle = Path(args.bundle)
    print(f"tvm {tvm.__version__} (runtime only: {os.environ.get('TVM_USE_RUNTIME_LIB') == '1'}),"
          f" torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"CUDA backend: {load_cuda_backend()}", flush=True)
    try:
        __import__("tvm.relax")
        print("note: tvm.relax imports (compiler present)")
    except Exception:  # noqa: BLE001
        print("tvm.relax not importable: runtime only")
    rows: list = []
    bw = bandwidth()
    print(f"device-to-device copy: {bw:.0f} GB/s (read + write)")
    if "kernels" not in args.skip:
        kernels(bundle, rows)
    if "models" not in args.skip:
        models(bundle, rows, Path(args.save) if args.save else None, args.models)
    print("\n| shape | lowbit ms | torch._int_mm ms | torch bf16 ms | lowbit TOP/s | "
          "_int_mm TOP/s | lowbit / _int_mm |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["what"] == "int8 GEMM":
            print(f"| {r['M']}x{r['N']}x{r['K']} | {r['lowbit_ms']:.4f} | {r['int_mm_ms']:.4f} | "
                  f"{r['bf16_ms']:.4f} | {r['lowbit_TOPS']:.0f} | {r['int_mm_TOPS']:.0f} | "
                  f"{r['ratio']:.2f} |")
    print(f"\n| int4 GEMV M=1, N x K | ms | GB/s | of copy bandwidth {bw:.0f} GB/s |")
    print("|---|---|---|---|")
    for r in rows:
        if r["what"] == "int4 GEMV":
            print(f"| {r['N']}x{r['K']} | {r['lowbit_ms']:.4f} | {r['GBps']:.0f} | "
                  f"{r['GBps'] / bw:.2f} |")
    print("\n| model | batch | lowbit W8A8 ms | torch fp32 ms | torch bf16 ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["what"].startswith("model"):
            print(f"| {r['what'][6:]} | {r['batch']} | {r['lowbit_w8a8_ms']:.3f} | "
                  f"{r['torch_fp32_ms']:.3f} | {r['torch_bf16_ms']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_GBps": bw, "rows": rows,
                                               "fails": FAILS}, indent=1))
    print(f"\n{len(FAILS)} check(s) failed" + (": " + "; ".join(FAILS) if FAILS else ""))
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
