"""Tuning lowbit's CUDA kernels without a GPU on the build machine.

The candidates are the tile configurations of the hand-written kernels (kernels/cuda.py:
U8S8_CONFIGS for the int8 tensor-core GEMM, GEMV_CONFIGS for the int4 GEMV). Three steps:

    # 1. here (nvcc, no GPU): every candidate of every workload, built into ONE library
    python scripts/gpu_tune.py build [--out .gpu_bundle/tune] [--shapes bench|SPEC ...]
    # 2. on the GPU machine (TVM runtime only): check each candidate against a float64 torch
    #    reference, time it (and torch._int_mm / HBM copy bandwidth for comparison)
    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=<tvm runtime>:. python scripts/gpu_tune.py time \
        [--dir .gpu_bundle/tune] --json results.json
    # 3. here: the fastest correct candidate per workload into the tuning database folder
    python scripts/gpu_tune.py record results.json [more.json ...] --db lowbit-tuning

Step 3 writes ``<db>/cuda_kernels.json`` (kernels.cuda.CONFIG_TABLE), keyed like
``u8s8|4096,768,3072|sm_90`` (kind | shape | target arch; ``build --arch sm_90a`` times the wgmma
configurations, recorded as ``u8s8|...|sm_90a``); ``lowbit.compile(q, "cuda",
tune=lowbit.Tune(trials=0, db=<db>))`` then builds each integer kernel with its recorded
configuration (kernels without a record keep the default of kernels.cuda.default_*).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INT8_NK = ((768, 768), (3072, 768), (768, 3072), (384, 384), (1536, 384), (384, 1536))
INT8_M = (128, 1024, 4096)
GEMV_NK = ((768, 768), (3072, 768), (768, 3072), (4096, 4096), (8192, 8192), (16384, 8192),
           (28672, 8192), (8192, 28672))


def workloads() -> list[tuple[str, tuple]]:
    out = [("u8s8", (m, n, k)) for n, k in INT8_NK for m in INT8_M]
    out += [("w4a16", (1, n, k, 128)) for n, k in GEMV_NK]
    return out


def build(out: Path, configs: str = "", kinds: str = "", arch: str = "") -> None:
    import tvm

    from lowbit.backends.tvm.pipelines.cuda import _env
    from lowbit.backends.tvm.cuda_env import load_cuda_backend
    from lowbit.backends.tvm.kernels.cuda import (
        GEMV_CONFIGS,
        U8S8_CONFIGS,
        WGMMA_CONFIGS,
        cuda_source_hook,
        shell_u8s8,
        shell_u8s8_wgmma,
        shell_w4a16,
        wgmma_arch,
    )
    from lowbit.backends.tvm.target import cuda_target

    load_cuda_backend(allow_stub=True)
    tgt = cuda_target(arch) if arch else cuda_target()
    wgmma = wgmma_arch(tgt)      # sm_90a: the u8s8 candidates are the wgmma configurations
    funcs, index = {}, []
    keep = set(filter(None, configs.split(",")))
    for kind, shape in workloads():
        if kinds and kind not in kinds.split(","):
            continue
        if kind == "u8s8" and wgmma:
            cands = [(c, shell_u8s8_wgmma(*shape, config=c, target=tgt)) for c in WGMMA_CONFIGS
                     if not keep or c in keep]
        elif kind == "u8s8":
            cands = [(c, shell_u8s8(*shape, config=c)) for c in U8S8_CONFIGS]
        else:
            cands = [(c, shell_w4a16(*shape, config=c)) for c in GEMV_CONFIGS
                     if shape[1] % int(c.split("_")[0][1:]) == 0]
        for cfg, f in cands:
            if keep and cfg not in keep:
                continue
            name = f"c{len(index)}"
            funcs[name] = f.with_attr("global_symbol", name)
            index.append({"func": name, "kind": kind, "shape": list(shape), "config": cfg})
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _env(TVM_CUDA_COMPILE_MODE="nvcc"), cuda_source_hook(), tgt:
        lib = tvm.compile(tvm.IRModule(funcs), tgt)
    lib.export_library(str(out / "candidates.so"))
    (out / "candidates.json").write_text(json.dumps(
        {"target": str(tgt.attrs["arch"]), "candidates": index}, indent=1))
    print(f"{len(index)} candidates built in "
          f"{time.perf_counter() - t0:.0f} s -> {out}/candidates.so")


def time_all(folder: Path, out_json: str | None) -> None:
    import gpu_check as gc  # scripts/gpu_check.py: runtime-only import of lowbit, references
    import numpy as np
    import torch
    import tvm

    gc.load_cuda_backend()
    info = json.loads((folder / "candidates.json").read_text())
    lib = tvm.runtime.load_module(str(folder / "candidates.so"))
    dev = tvm.cuda(0)
    g = torch.Generator(device="cuda").manual_seed(0)
    bw = gc.bandwidth()
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {bw:.0f} GB/s", flush=True)
    results, by_shape = [], {}
    for c in info["candidates"]:
        key = (c["kind"], tuple(c["shape"]))
        if key not in by_shape:          # inputs, reference and torch baselines once a shape
            if c["kind"] == "u8s8":
                m, n, k = c["shape"]
                x, w, wp, corr, scale, bias = gc.u8s8_inputs(m, n, k, g)
                if info["target"] == "sm_90a":   # wgmma shells read row-major [Np, K] bytes
                    wp = torch.zeros(wp.numel(), dtype=torch.int8, device="cuda")
                    wp[:w.numel()] = w.reshape(-1)
                    wp = wp.reshape(-1, k // 4, 16, 4)
                ref = gc.u8s8_ref(x, w, corr, scale, bias)
                xi8 = (x.int() - 128).to(torch.int8)
                base = {"int_mm_ms": gc.bench_ms(lambda: torch._int_mm(xi8, w.t()))}
                ins = [x, wp, corr, scale, bias]
            else:
                m, n, k, grp = c["shape"]
                x, w, scale, bias = gc.w4_inputs(m, n, k, grp, g)
                ref = gc.w4_ref(x, w, scale, bias)
                nbytes = (w.numel() + scale.numel() * 4 + x.numel() * 4 + 2 * m * n * 4
                          + bias.numel() * 4)
                base = {"bytes": nbytes, "copy_GBps": bw}
                ins = [x, w, scale, bias]
            y = torch.full(ref.shape, float("nan"), device="cuda")
            args = [gc.t_(a) for a in (*ins, y)]
            by_shape[key] = (args, ref, base)
        args, ref, base = by_shape[key]
        f = lib[c["func"]]
        args[-1].copyfrom(np.full(ref.shape, np.nan, dtype=np.float32))
        try:
            f(*args)
            dev.sync()
            got = gc.back(args[-1])
            err = gc.rel(got, ref)
            ok = bool(torch.isfinite(got).all()) and err < (1e-6 if c["kind"] == "u8s8" else 1e-5)
            ms = gc.bench_ms(lambda: f(*args), iters=100) if ok else None
        except Exception as e:  # noqa: BLE001  (a candidate that fails to launch is dropped)
            ok, err, ms = False, None, None
            print(f"  {c['func']} {c['config']}: {type(e).__name__}: {str(e)[:200]}")
        r = dict(c, ok=ok, rel_err=err, ms=ms, **base)
        results.append(r)
        extra = ""
        if ms and c["kind"] == "u8s8":
            m, n, k = c["shape"]
            extra = (f"{2 * m * n * k / ms / 1e9:.0f} TOP/s, _int_mm {base['int_mm_ms']:.4f} ms "
                     f"= {base['int_mm_ms'] / ms:.2f}x")
        elif ms:
            extra = f"{base['bytes'] / ms / 1e6:.0f} GB/s = {base['bytes'] / ms / 1e6 / bw:.2f}"
        print(f"{c['kind']} {c['shape']} {c['config']:>16}: ok={ok} err={err} "
              f"ms={ms if ms is None else round(ms, 5)} {extra}", flush=True)
    if out_json:
        Path(out_json).write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                              "target": info["target"], "copy_GBps": bw,
                                              "results": results}, indent=1))
    gc.FAILS.extend(f"{r['func']} {r['config']}" for r in results if not r["ok"])
    print(f"{sum(not r['ok'] for r in results)} candidate(s) failed the check")


def record(results_json: list[str], db: str) -> None:
    """The fastest correct candidate per workload over all the results files given."""
    from lowbit.backends.tvm.kernels.cuda import (
        CONFIG_TABLE,
        default_gemv,
        default_u8s8,
        default_wgmma,
    )

    files = [json.loads(Path(p).read_text()) for p in results_json]
    res = dict(files[0], results=[r for f in files for r in f["results"]])
    folder = Path(db)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_TABLE
    table = json.loads(path.read_text()) if path.is_file() else {}
    groups: dict[str, list] = {}
    for r in res["results"]:
        key = f"{r['kind']}|{','.join(map(str, r['shape']))}|{res['target']}"
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        good = [r for r in rs if r["ok"] and r["ms"]]
        if not good:
            continue
        best = min(good, key=lambda r: r["ms"])
        shape = best["shape"]
        du8 = default_wgmma if res["target"] == "sm_90a" else default_u8s8
        dflt = du8(*shape) if best["kind"] == "u8s8" else default_gemv(*shape)
        dms = next((r["ms"] for r in good if r["config"] == dflt), None)
        table[key] = {"config": best["config"], "ms": best["ms"], "default": dflt,
                      "default_ms": dms, "device": res["device"],
                      "candidates": {r["config"]: r["ms"] for r in rs}}
        print(f"{key}: {best['config']} {best['ms']:.4f} ms (default {dflt} "
              f"{dms if dms is None else round(dms, 4)} ms)")
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    os.replace(tmp, path)
    print(f"{len(groups)} workloads -> {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", default=str(REPO / ".gpu_bundle" / "tune"))
    b.add_argument("--configs", default="", help="comma list (default: all candidates)")
    b.add_argument("--kinds", default="", help="u8s8,w4a16 (default: both)")
    b.add_argument("--arch", default="", help="target arch (default: the CUDA default, sm_90); "
                   "sm_90a: the u8s8 candidates are the wgmma configurations (WGMMA_CONFIGS)")
    t = sub.add_parser("time")
    t.add_argument("--dir", default=str(REPO / ".gpu_bundle" / "tune"))
    t.add_argument("--json", default=None)
    r = sub.add_parser("record")
    r.add_argument("results", nargs="+")
    r.add_argument("--db", default="lowbit-tuning")
    a = p.parse_args()
    if a.cmd == "build":
        build(Path(a.out), a.configs, a.kinds, a.arch)
    elif a.cmd == "time":
        sys.path.insert(0, str(REPO / "scripts"))
        time_all(Path(a.dir), a.json)
    else:
        record(a.results, a.db)


if __name__ == "__main__":
    main()
