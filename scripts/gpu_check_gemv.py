"""The int4 weight-only GEMV (``linear_w4a16``, M <= 4) of kernels/cuda.py: every candidate
configuration built here, checked and timed on the GPU machine (issue 20, item 2).

    # 1. here (nvcc, no GPU): the bench shapes (M = 1, group 128) and the odd shapes (M = 1..4,
    #    groups 32 / 128 / one per row, N not a multiple of the tile) x every valid candidate
    python scripts/gpu_check_gemv.py build [--out .gpu_bundle/gemv] [--configs A,B]
    # 2. on the GPU machine (TVM runtime only)
    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=<tvm runtime>:. python3 scripts/gpu_check_gemv.py time \
        [--dir .gpu_bundle/gemv] --json out.json
    # 3. here: the fastest correct candidate per bench shape into the tuning database
    python scripts/gpu_tune.py record out.json --db lowbit-tuning

Checks: each candidate against a float64 torch reference, the output poisoned with NaN before
the call; again after the timing loops (the split-K counters must be back at zero after
every launch), and once more after a CUDA-graph replay of 50 calls. Timing (bench shapes):
medians of 5 x 200 back-to-back calls between CUDA events (includes the per-call host work of
a TVM packed call), and of 5 replays of a CUDA graph holding 50 calls (kernel time, launch gaps
only). Bandwidth: bytes = packed weights + scales + x + bias + y, against a 1 GiB
device-to-device copy (read + write) timed in the same run; torch fp16 ``x @ W^T`` (cuBLAS) on
the decoded weight for comparison. The JSON rows have the fields ``gpu_tune.py record`` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BENCH = ((768, 768), (3072, 768), (768, 3072), (4096, 4096), (8192, 8192), (16384, 8192),
         (28672, 8192), (8192, 28672))
ODD = ((1, 264, 512, 32), (2, 264, 512, 128), (3, 1000, 768, 32), (4, 4104, 1024, 128),
       (3, 4096, 4096, 128), (2, 8192, 8192, 32), (4, 8192, 8192, 128), (1, 4096, 4096, 32),
       (1, 512, 1024, 1024), (1, 776, 96, 32), (2, 28672, 8192, 128), (1, 12296, 4096, 128))


def workloads() -> list[tuple[tuple, str]]:
    return ([((1, n, k, 128), "bench") for n, k in BENCH] + [(s, "odd") for s in ODD])


def build(out: Path, configs: str = "") -> None:
    import tvm

    from lowbit.backends.tvm.cuda_env import load_cuda_backend
    from lowbit.backends.tvm.kernels.cuda import (
        GEMV_CONFIGS,
        cuda_source_hook,
        default_gemv,
        shell_w4a16,
    )
    from lowbit.backends.tvm.pipelines.cuda import _env
    from lowbit.backends.tvm.target import cuda_target

    load_cuda_backend(allow_stub=True)
    tgt = cuda_target()
    keep = set(filter(None, configs.split(",")))
    funcs, index = {}, []
    for shape, role in workloads():
        for cfg in GEMV_CONFIGS:
            if (keep and cfg not in keep) or shape[1] % int(cfg.split("_")[0][1:]):
                continue
            f = shell_w4a16(*shape, config=cfg)
            name = f"c{len(index)}"
            funcs[name] = f.with_attr("global_symbol", name)
            index.append({"func": name, "kind": "w4a16", "shape": list(shape), "config": cfg,
                          "role": role, "default": cfg == default_gemv(*shape)})
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _env(TVM_CUDA_COMPILE_MODE="nvcc"), cuda_source_hook(), tgt:
        lib = tvm.compile(tvm.IRModule(funcs), tgt)
    lib.export_library(str(out / "candidates.so"))
    (out / "candidates.json").write_text(json.dumps(
        {"target": str(tgt.attrs["arch"]), "candidates": index}, indent=1))
    print(f"{len(index)} candidates built in {time.perf_counter() - t0:.0f} s -> {out}")
    build_baseline(out)


def build_baseline(out: Path) -> None:
    """The kernel before this work (git HEAD's kernels/cuda.py and cuda_kernels.cu: a y = bias
    launch, then the split-K GEMV) on the bench shapes, its default configurations, for a
    comparison in the same run: ``<out>/baseline.so``."""
    import importlib.util
    import subprocess
    import tempfile

    import tvm

    from lowbit.backends.tvm.cuda_env import load_cuda_backend
    from lowbit.backends.tvm.pipelines.cuda import _env
    from lowbit.backends.tvm.target import cuda_target

    tmp = Path(tempfile.mkdtemp())
    for f in ("cuda.py", "cuda_kernels.cu", "cuda_wgmma.cu"):
        (tmp / f).write_bytes(subprocess.run(
            ["git", "show", f"HEAD:lowbit/backends/tvm/kernels/{f}"], cwd=REPO,
            capture_output=True, check=True).stdout)
    spec = importlib.util.spec_from_file_location("lowbit_gemv_baseline", tmp / "cuda.py")
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    load_cuda_backend(allow_stub=True)
    tgt = cuda_target()
    funcs, index = {}, []
    for n, k in BENCH:
        cfg = old.default_gemv(1, n, k, 128)
        name = f"b{len(index)}"
        funcs[name] = old.shell_w4a16(1, n, k, 128, config=cfg).with_attr("global_symbol", name)
        index.append({"func": name, "kind": "w4a16_old", "shape": [1, n, k, 128], "config": cfg,
                      "role": "baseline"})
    with _env(TVM_CUDA_COMPILE_MODE="nvcc"), old.cuda_source_hook(), tgt:
        lib = tvm.compile(tvm.IRModule(funcs), tgt)
    lib.export_library(str(out / "baseline.so"))
    (out / "baseline.json").write_text(json.dumps({"candidates": index}, indent=1))
    print(f"baseline: {len(index)} kernels -> {out}/baseline.so")


def graph_ms(torch, tvm_ffi, fn, iters: int = 50):
    """Median of 5 replays of a CUDA graph holding ``iters`` calls, per call."""
    import numpy as np

    gr = torch.cuda.CUDAGraph()
    with tvm_ffi.use_torch_stream(torch.cuda.graph(gr)):
        for _ in range(iters):
            fn()
    torch.cuda.synchronize()
    gr.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        gr.replay()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / iters)
    return float(np.median(ts)), gr


def time_all(folder: Path, out_json: str | None, only: str = "") -> int:
    import gpu_check as gc  # scripts/gpu_check.py: runtime-only import of lowbit, references
    import torch
    import tvm
    import tvm_ffi

    gc.load_cuda_backend()
    info = json.loads((folder / "candidates.json").read_text())
    libs = {"c": tvm.runtime.load_module(str(folder / "candidates.so"))}
    cands = list(info["candidates"])
    if (folder / "baseline.so").is_file():
        libs["b"] = tvm.runtime.load_module(str(folder / "baseline.so"))
        base_c = json.loads((folder / "baseline.json").read_text())["candidates"]
        cands = ([c for c in cands if c["role"] == "bench"] + base_c
                 + [c for c in cands if c["role"] != "bench"])
    g = torch.Generator(device="cuda").manual_seed(0)
    bw = gc.bandwidth()
    drv = torch.cuda.get_device_properties(0)
    head = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "target": info["target"], "copy_GBps": bw,
            "sms": drv.multi_processor_count,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{head}", flush=True)
    results, shapes = [], {}

    def dump():
        if out_json:
            Path(out_json).write_text(json.dumps(dict(head, results=results), indent=1))

    for c in sorted(cands, key=lambda c: (c["role"] == "odd", c["shape"])):
        if only and c["config"] not in only.split(",") and c["role"] != "baseline":
            continue
        key = tuple(c["shape"])
        if key not in shapes:
            shapes.clear()                   # one shape's tensors at a time
            torch.cuda.empty_cache()
            m, n, k, grp = key
            x, w, scale, bias = gc.w4_inputs(m, n, k, grp, g)
            ref = gc.w4_ref(x, w, scale, bias)
            y = torch.full(ref.shape, float("nan"), device="cuda")
            args = [tvm_ffi.from_dlpack(a) for a in (x, w, scale, bias, y)]
            nbytes = (w.numel() + scale.numel() * 4 + x.numel() * 4 + bias.numel() * 4
                      + y.numel() * 4)
            base = {"bytes": nbytes, "copy_GBps": bw}
            if c["role"] != "odd":           # cuBLAS fp16 on the decoded weight, for reference
                lo = (w & 15).half() - 8
                hi = (w >> 4).half() - 8
                wk = torch.stack([lo, hi], 1).reshape(-1, n) * scale.half().repeat_interleave(
                    grp, 0)
                wt = wk.t().contiguous()
                xh = x.half()
                del lo, hi, wk
                def mm(xh=xh, wt=wt):
                    return torch.mm(xh, wt.t())

                base["fp16_ms"] = gc.bench_ms(mm, iters=200)
                try:
                    base["fp16_graph_ms"] = graph_ms(torch, tvm_ffi, mm)[0]
                except Exception as e:  # noqa: BLE001
                    base["fp16_graph_error"] = f"{type(e).__name__}: {e}"[:200]
                del wt, xh
            shapes[key] = (x, w, scale, bias, y, ref, args, base)
        x, w, scale, bias, y, ref, args, base = shapes[key]
        f = libs[c["func"][0]][c["func"]]

        def call(f=f, args=args):
            f(*args)

        def run_check(y=y, ref=ref, call=call) -> float:
            y.fill_(float("nan"))           # poisoned: every element must be written
            call()
            torch.cuda.synchronize()
            return gc.rel(y, ref) if bool(torch.isfinite(y).all()) else float("inf")

        r = dict(c, **base)
        try:
            err = run_check()
            r["rel_err"] = err
            ok = err < 1e-5
            if ok and c["role"] != "odd":
                r["ms"] = gc.bench_ms(call, iters=200)
                r["err_after_timing"] = run_check()
                try:
                    r["graph_ms"], gr = graph_ms(torch, tvm_ffi, call)
                    y.fill_(float("nan"))
                    gr.replay()
                    torch.cuda.synchronize()
                    r["err_after_graph"] = (gc.rel(y, ref) if bool(torch.isfinite(y).all())
                                            else float("inf"))
                    del gr
                except Exception as e:  # noqa: BLE001
                    r["graph_error"] = f"{type(e).__name__}: {e}"[:300]
                ok = r["err_after_timing"] < 1e-5 and r.get("err_after_graph", 0.0) < 1e-5
            elif ok:                          # odd shapes: events only, fewer calls
                r["ms"] = gc.bench_ms(call, iters=50)
                r["err_after_timing"] = run_check()
                ok = r["err_after_timing"] < 1e-5
        except Exception as e:  # noqa: BLE001
            ok = False
            r["error"] = f"{type(e).__name__}: {e}"[:300]
        r["ok"] = ok
        r.setdefault("ms", None)
        results.append(r)
        extra = ""
        if r["ms"]:
            extra = (f"{r['ms']:.4f} ms {nbytes_gbps(r, 'ms'):.0f} GB/s "
                     f"({nbytes_gbps(r, 'ms') / bw:.2f})")
            if r.get("graph_ms"):
                extra += (f", graph {r['graph_ms']:.4f} ms {nbytes_gbps(r, 'graph_ms'):.0f} GB/s "
                          f"({nbytes_gbps(r, 'graph_ms') / bw:.2f})")
        print(f"{c['shape']} {c['config']:>12}: ok={ok} err={r.get('rel_err')} {extra}",
              flush=True)
        dump()
    fails = [f"{r['shape']} {r['config']} {r['role']}" for r in results if not r["ok"]]
    print(f"{len(results)} candidates, {len(fails)} failed: {fails}")
    dump()
    summary(dict(head, results=results))
    summary_odd(dict(head, results=results))
    return len(fails)


def nbytes_gbps(r: dict, field: str) -> float:
    return r["bytes"] / r[field] / 1e6


def summary(res: dict) -> None:
    """Best configuration per bench shape (by graph-replay time, events as the tie-break), and
    the kernel before this work (baseline) on the same shape."""
    bw = res["copy_GBps"]
    print(f"\n| N x K | config | ms events | ms graph | GB/s (graph) | of copy ({bw:.0f} GB/s) | "
          f"events GB/s | fp16 ms events / graph |")
    print("|---|---|---|---|---|---|---|---|")
    by: dict = {}
    for r in res["results"]:
        if r["role"] == "bench" and r["ok"] and r.get("ms"):
            by.setdefault(tuple(r["shape"]), []).append(r)
    for shape, rs in by.items():
        best = min(rs, key=lambda r: (r.get("graph_ms") or r["ms"], r["ms"]))
        gms = best.get("graph_ms")
        old = next((r for r in res["results"] + res.get("baseline", []) if r["role"] == "baseline"
                    and tuple(r["shape"]) == shape and r.get("ms")), None)
        if old:
            print(f"| {shape[1]}x{shape[2]} | baseline {old['config']} | {old['ms']:.4f} | "
                  f"{old.get('graph_ms')} | "
                  f"{nbytes_gbps(old, 'graph_ms') if old.get('graph_ms') else 0:.0f} | | "
                  f"{nbytes_gbps(old, 'ms'):.0f} | |")
        print(f"| {shape[1]}x{shape[2]} | {best['config']} | {best['ms']:.4f} | "
              f"{gms if gms is None else round(gms, 4)} | "
              f"{nbytes_gbps(best, 'graph_ms') if gms else 0:.0f} | "
              f"{(nbytes_gbps(best, 'graph_ms') if gms else 0) / bw:.2f} | "
              f"{nbytes_gbps(best, 'ms'):.0f} | {best.get('fp16_ms', 0):.4f} / "
              f"{best.get('fp16_graph_ms', 0):.4f} |")


def summary_odd(res: dict) -> None:
    bw = res["copy_GBps"]
    print("\n| M, N, K, group | best config | ms events | GB/s | of copy | default ms |")
    print("|---|---|---|---|---|---|")
    odd: dict = {}
    for r in res["results"]:
        if r["role"] == "odd" and r["ok"] and r.get("ms"):
            odd.setdefault(tuple(r["shape"]), []).append(r)
    for shape, rs in odd.items():
        best = min(rs, key=lambda r: r["ms"])
        d = next((r["ms"] for r in rs if r.get("default")), None)
        print(f"| {shape} | {best['config']} | {best['ms']:.4f} | {nbytes_gbps(best, 'ms'):.0f} | "
              f"{nbytes_gbps(best, 'ms') / bw:.2f} | {d if d is None else round(d, 4)} |")


# ---- prefill (M > 4): lowbit_w4a16_gemm (simt) vs lowbit_w4a16_gemm_tc (tc) -----------------
PF_M = (16, 128, 1000, 4096)
PF_NK = ((768, 768), (3072, 768), (768, 3072), (4096, 4096))
PF_ODD = ((5, 264, 512, 32), (37, 776, 768, 128), (129, 4104, 1024, 32), (1000, 72, 4096, 128))
TC_BOUND = 2e-3     # norm-wise relative error vs float64 of the fp16-x tensor-core kernel
SIMT_BOUND = 1e-5


def prefill_workloads() -> list[tuple[tuple, str]]:
    return ([((m, n, k, grp), "bench" if grp == 128 else "check") for m in PF_M
             for n, k in PF_NK for grp in (128, 32)] + [(s, "odd") for s in PF_ODD])


def build_prefill(out: Path) -> None:
    import tvm

    from lowbit.backends.tvm.cuda_env import load_cuda_backend
    from lowbit.backends.tvm.kernels.cuda import GEMM_CONFIGS, cuda_source_hook, shell_w4a16
    from lowbit.backends.tvm.pipelines.cuda import _env
    from lowbit.backends.tvm.target import cuda_target

    load_cuda_backend(allow_stub=True)
    tgt = cuda_target()
    funcs, index = {}, []
    for shape, role in prefill_workloads():
        for cfg in GEMM_CONFIGS:
            name = f"p{len(index)}"
            funcs[name] = shell_w4a16(*shape, config=cfg).with_attr("global_symbol", name)
            index.append({"func": name, "kind": "w4a16", "shape": list(shape), "config": cfg,
                          "role": role})
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _env(TVM_CUDA_COMPILE_MODE="nvcc"), cuda_source_hook(), tgt:
        lib = tvm.compile(tvm.IRModule(funcs), tgt)
    lib.export_library(str(out / "prefill.so"))
    (out / "prefill.json").write_text(json.dumps(
        {"target": str(tgt.attrs["arch"]), "candidates": index}, indent=1))
    print(f"{len(index)} prefill kernels built in {time.perf_counter() - t0:.0f} s -> {out}")


def time_prefill(folder: Path, out_json: str | None) -> int:
    """Check every kernel (NaN-poisoned y, float64 reference; TC_BOUND / SIMT_BOUND), time the
    bench shapes (group 128): events and CUDA-graph replay, with torch bf16 / fp16 ``x @ W``
    (cuBLAS, the decoded weight) in the same process."""
    import gpu_check as gc
    import torch
    import tvm
    import tvm_ffi

    gc.load_cuda_backend()
    info = json.loads((folder / "prefill.json").read_text())
    lib = tvm.runtime.load_module(str(folder / "prefill.so"))
    g = torch.Generator(device="cuda").manual_seed(0)
    head = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "target": info["target"],
            "tc_bound": TC_BOUND, "simt_bound": SIMT_BOUND,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    import subprocess

    head["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                     "--format=csv,noheader"], capture_output=True, text=True,
                                    check=False).stdout.strip()
    print(head, flush=True)
    results = []

    def dump():
        if out_json:
            Path(out_json).write_text(json.dumps(dict(head, results=results), indent=1))

    by_shape: dict = {}
    for c in info["candidates"]:
        by_shape.setdefault(tuple(c["shape"]), []).append(c)
    for key, cs in by_shape.items():
        torch.cuda.empty_cache()
        m, n, k, grp = key
        x, w, scale, bias = gc.w4_inputs(m, n, k, grp, g)
        ref = gc.w4_ref(x, w, scale, bias)
        y = torch.full(ref.shape, float("nan"), device="cuda")
        args = [tvm_ffi.from_dlpack(a) for a in (x, w, scale, bias, y)]
        iters = 20 if m * n * k >= 2**33 else 100
        base = {"flop": 2 * m * n * k}
        if cs[0]["role"] == "bench":
            lo = (w & 15).float() - 8
            hi = (w >> 4).float() - 8
            wk = (torch.stack([lo, hi], 1).reshape(-1, n) * scale.repeat_interleave(grp, 0))
            del lo, hi
            for dt, nm in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
                xh, wh = x.to(dt), wk.to(dt)

                def mm(xh=xh, wh=wh):
                    return torch.mm(xh, wh)

                base[f"{nm}_rel_err"] = gc.rel(mm().float() + bias, ref)
                base[f"{nm}_ms"] = gc.bench_ms(mm, iters=iters)
                try:
                    base[f"{nm}_graph_ms"] = graph_ms(torch, tvm_ffi, mm, iters=iters)[0]
                except Exception as e:  # noqa: BLE001
                    base[f"{nm}_graph_error"] = f"{type(e).__name__}: {e}"[:200]
                del xh, wh
            del wk
        for c in cs:
            f = lib[c["func"]]
            bound = TC_BOUND if c["config"].startswith("tc") else SIMT_BOUND

            def call(f=f, args=args):
                f(*args)

            def check(y=y, ref=ref, call=call) -> float:
                y.fill_(float("nan"))
                call()
                torch.cuda.synchronize()
                return gc.rel(y, ref) if bool(torch.isfinite(y).all()) else float("inf")

            r = dict(c, **base)
            try:
                r["rel_err"] = check()
                r["max_abs_err_over_max_ref"] = float(
                    (y.double() - ref.double()).abs().max() / ref.double().abs().max())
                ok = r["rel_err"] < bound
                if ok and c["role"] == "bench":
                    r["ms"] = gc.bench_ms(call, iters=iters)
                    r["graph_ms"], gr = graph_ms(torch, tvm_ffi, call, iters=iters)
                    y.fill_(float("nan"))
                    gr.replay()
                    torch.cuda.synchronize()
                    del gr
                    r["err_after_graph"] = (gc.rel(y, ref) if bool(torch.isfinite(y).all())
                                            else float("inf"))
                    ok = r["err_after_graph"] < bound
                    r["tflops_graph"] = r["flop"] / r["graph_ms"] / 1e9
            except Exception as e:  # noqa: BLE001
                ok = False
                r["error"] = f"{type(e).__name__}: {e}"[:300]
            r["ok"] = ok
            results.append(r)
            print(f"{key} {c['config']:>4}: ok={ok} err={r.get('rel_err'):.3g} "
                  f"ms={r.get('ms')} graph={r.get('graph_ms')} "
                  f"bf16={base.get('bf16_graph_ms')}", flush=True)
            dump()
        del x, w, scale, bias, ref, y, args
    fails = [f"{r['shape']} {r['config']}" for r in results if not r["ok"]]
    print(f"{len(results)} kernels, {len(fails)} failed: {fails}")
    dump()
    summary_prefill(dict(head, results=results))
    return len(fails)


def summary_prefill(res: dict) -> None:
    """Graph-replay ms per bench shape: simt, tc (split-K rule), tc_k1 (no split), cuBLAS bf16."""
    print("\n| M | N x K | simt ms | tc_k1 ms | tc ms | tc TFLOP/s | cuBLAS bf16 ms | simt / tc |"
          " tc rel err |")
    print("|---|---|---|---|---|---|---|---|---|")
    by: dict = {}
    for r in res["results"]:
        if r["role"] == "bench":
            by.setdefault(tuple(r["shape"]), {})[r["config"]] = r
    for (m, n, k, _), rs in by.items():
        def g(c, rs=rs):
            v = rs.get(c, {}).get("graph_ms")
            return v and round(v, 4)
        t = rs.get("tc", {})
        sg, tg = g("simt"), g("tc")
        print(f"| {m} | {n}x{k} | {sg} | {g('tc_k1')} | {tg} | {t.get('tflops_graph', 0):.0f} | "
              f"{round(t.get('bf16_graph_ms') or 0, 4)} | "
              f"{(sg / tg) if sg and tg else 0:.1f}x | {t.get('rel_err', 0):.2g} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", default=str(REPO / ".gpu_bundle" / "gemv"))
    b.add_argument("--configs", default="", help="comma list (default: GEMV_CONFIGS)")
    t = sub.add_parser("time")
    t.add_argument("--dir", default=str(REPO / ".gpu_bundle" / "gemv"))
    t.add_argument("--json", default=None)
    t.add_argument("--configs", default="", help="time only these (default: all built)")
    bp = sub.add_parser("build-prefill", help="M > 4: simt and tc kernels")
    bp.add_argument("--out", default=str(REPO / ".gpu_bundle" / "prefill"))
    tp = sub.add_parser("time-prefill")
    tp.add_argument("--dir", default=str(REPO / ".gpu_bundle" / "prefill"))
    tp.add_argument("--json", default=None)
    s = sub.add_parser("summary")
    s.add_argument("json")
    a = p.parse_args()
    if a.cmd == "build":
        build(Path(a.out), a.configs)
    elif a.cmd == "build-prefill":
        build_prefill(Path(a.out))
    elif a.cmd == "time-prefill":
        sys.path.insert(0, str(REPO / "scripts"))
        sys.exit(1 if time_prefill(Path(a.dir), a.json) else 0)
    elif a.cmd == "time":
        sys.path.insert(0, str(REPO / "scripts"))
        sys.exit(1 if time_all(Path(a.dir), a.json, a.configs) else 0)
    else:
        summary(json.loads(Path(a.json).read_text()))
        summary_odd(json.loads(Path(a.json).read_text()))


if __name__ == "__main__":
    main()
