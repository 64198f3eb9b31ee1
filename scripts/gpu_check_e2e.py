"""On the GPU machine, with the TVM runtime only: the W8A8 models of ``gpu_prepare.py --e2e``
(all-MiniLM-L6-v2 with real weights, the BERT-base-shaped layer; batch 1/8/32, seq 128)
compiled for sm_90 (mma.sync) and sm_90a (wgmma + TMA), each with and without CUDA graphs,
checked and timed in one process against torch (fp32, bf16, a W8A8 ``torch._int_mm`` model, and
the bf16 model captured in a torch CUDA graph).

    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=<tvm runtime bundle>:. python3 scripts/gpu_check_e2e.py \\
        --bundle .gpu_bundle/e2e --json $OUT/e2e_h200.json

Checks per variant: outputs vs the CPU TVM module and the FX fake-quant graph (cosine, rel
err, as gpu_check.py); CUDA-graph replays with changed inputs (input A, then B, then A again:
A's two outputs bit-identical, B's output bit-identical to the graph-less module of the same
arch on B: the captured kernels, TMA descriptors included, see the new inputs); sm_90a equal to
sm_90 (same integer arithmetic). Times: median of 5 x 20 calls between CUDA events, device
tensors in, after warm-up. The JSON is rewritten after every row (a timeout keeps the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tvm
from gpu_check import FAILS, _torch_model, bench_ms, check, rel

from lowbit.backends.tvm.cuda_env import load_cuda_backend
from lowbit.backends.tvm.runtime import load

VARIANTS = ("", "@sm_90-nograph", "@sm_90a", "@sm_90a-nograph")   # gpu_prepare.variant_folder


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(1),
                                                       b.double().flatten(1)).mean())


def launches(mod) -> dict:
    """Kernel calls of ``main`` outside captured graphs, graphs launched, and kernel calls in
    the captured functions (from the VM executable's text)."""
    try:
        text = mod.executable.as_text()
    except Exception:  # noqa: BLE001
        try:
            text = mod.executable["as_text"]()
        except Exception:  # noqa: BLE001
            return {}
    funcs, cur = {}, None
    for line in text.splitlines():
        if line.startswith("@") and line.endswith(":"):
            cur = line[1:-1]
            funcs[cur] = []
        elif cur and line.strip().startswith("call"):
            funcs[cur].append(line.split()[1])
    main = funcs.get("main", [])
    kernel = [c for c in main if not c.startswith("vm.builtin")]
    graphs = [c for c in main if c == "vm.builtin.cuda_graph.run_or_capture"]
    captured = sum(len([c for c in v if not c.startswith("vm.builtin")])
                   for k, v in funcs.items() if k.startswith("main_cuda_graph_capture"))
    return {"kernels_outside": len(kernel), "graphs": len(graphs), "kernels_in_graphs": captured}


class Int8Linear(torch.nn.Module):
    """W8A8 with ``torch._int_mm``: weights int8 per output channel (symmetric, absmax),
    activations int8 per token (symmetric, absmax, computed every call), s32 accumulators,
    fp32 rescale and bias."""

    def __init__(self, lin: torch.nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()
        s = w.abs().amax(1).clamp_min(1e-8) / 127
        self.register_buffer("wq", (w / s[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("ws", s)
        self.register_buffer("bias", lin.bias.detach().float())

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        sx = x2.abs().amax(1, keepdim=True).clamp_min(1e-8) / 127
        xq = (x2 / sx).round().clamp(-127, 127).to(torch.int8)
        y = torch._int_mm(xq, self.wq.t()).float() * sx * self.ws + self.bias
        return y.reshape(*shape[:-1], -1).to(x.dtype)


def int8_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (fp32) with every Linear of the encoder replaced by ``Int8Linear``."""
    import copy

    m = copy.deepcopy(model)
    for layer in m.encoder.layer:
        for parent in (layer.attention.self, layer.attention.output, layer.intermediate,
                       layer.output):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(parent, name, Int8Linear(child))
    return m


def graphed(fn):
    """``fn`` (no arguments, static inputs) captured in a torch CUDA graph: a replay function."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def torch_rows(name: str, b: int, ids_np, mask_np) -> dict:
    tm = _torch_model(name)
    ids = torch.from_numpy(ids_np).cuda() % tm.config.vocab_size
    mask = torch.from_numpy(mask_np).cuda()
    out = {}
    with torch.no_grad():
        ref = tm(input_ids=ids, attention_mask=mask).last_hidden_state
        out["torch_fp32_ms"] = bench_ms(lambda: tm(input_ids=ids, attention_mask=mask), iters=20)
        ti = int8_model(tm)
        got = ti(input_ids=ids, attention_mask=mask).last_hidden_state
        out["torch_int8_cos_vs_fp32"] = cos(got, ref)
        out["torch_int8_ms"] = bench_ms(lambda: ti(input_ids=ids, attention_mask=mask), iters=20)
        tb = tm.to(torch.bfloat16)
        out["torch_bf16_cos_vs_fp32"] = cos(tb(input_ids=ids, attention_mask=mask)
                                            .last_hidden_state.float(), ref)
        out["torch_bf16_ms"] = bench_ms(lambda: tb(input_ids=ids, attention_mask=mask), iters=20)
        try:
            rep = graphed(lambda: tb(input_ids=ids, attention_mask=mask))
            out["torch_bf16_graph_ms"] = bench_ms(rep, iters=20)
            pr = kernel_profile(rep)
            out["torch_bf16_graph_kernels"] = {k: pr[k] for k in ("total_us_per_call",
                                                                  "launches_per_call")}
        except Exception as e:  # noqa: BLE001
            out["torch_bf16_graph_error"] = f"{type(e).__name__}: {e}"[:300]
    return out


def kernel_profile(fn, calls: int = 5) -> dict:
    """Device time per call of every kernel ``fn`` launches (torch's profiler: CUPTI sees
    the TVM runtime's launches too), the top 12, and totals by kind."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0 and e.count > 0:
            rows.append({"kernel": e.key[:120], "us_per_call": t / calls,
                         "launches_per_call": e.count / calls})
    rows.sort(key=lambda r: -r["us_per_call"])

    def kind(name):
        if "u8s8" in name or "wgmma" in name:
            return "int8 GEMM"
        if "matmul" in name:
            return "float matmul (attention)"
        if "softmax" in name:
            return "softmax"
        if "layer_norm" in name:
            return "layer norm"
        return "other (quantize, reshape, GELU, embeddings, ...)"
    kinds: dict = {}
    for r in rows:
        k = kinds.setdefault(kind(r["kernel"]), {"us_per_call": 0.0, "launches_per_call": 0.0})
        k["us_per_call"] += r["us_per_call"]
        k["launches_per_call"] += r["launches_per_call"]
    return {"total_us_per_call": sum(r["us_per_call"] for r in rows),
            "launches_per_call": sum(r["launches_per_call"] for r in rows),
            "by_kind": kinds, "top": rows[:12]}


def run_variant(d: Path, z, ids_b, mask_b, bench: bool = True, prof: bool = False
                ) -> tuple[dict, dict]:
    """Load one variant, check its outputs; returns (row, outputs)."""
    models = d.parent
    base = d.name.split("@")[0] if "@" in d.name else d.name.rsplit("_b", 1)[0]
    link = d / "params.bin"
    if not link.exists():
        os.symlink((models / f"params_{base}.bin").resolve(), link)
    t0 = time.perf_counter()
    mod = load(d)
    a1 = np.asarray(mod(z["input_ids"], z["attention_mask"])[0])
    t_first = time.perf_counter() - t0
    bo = np.asarray(mod(ids_b, mask_b)[0])
    a2 = np.asarray(mod(z["input_ids"], z["attention_mask"])[0])
    row = {"variant": d.name, "cuda_graph": mod.cuda_graph, "target": mod.meta["target"],
           "load_and_first_call_s": t_first, **launches(mod)}
    check(bool(np.isfinite(a1).all()), f"{d.name}: finite output")
    check(np.array_equal(a1, a2), f"{d.name}: input A, B, A again: A's outputs bit-identical")
    check(not np.array_equal(a1, bo), f"{d.name}: input B changes the output")
    got = torch.from_numpy(a1)
    for ref in ("cpu", "fx", "fp32"):
        if ref not in z:
            continue
        r = torch.from_numpy(z[ref])
        g = got[:r.shape[0]]
        err, c = rel(g, r), cos(g, r)
        row[f"vs_{ref}"] = {"rel_err": err, "cosine": c, "rows": int(r.shape[0]),
                            "min_row_cosine": float(torch.nn.functional.cosine_similarity(
                                g.double().flatten(1), r.double().flatten(1)).min())}
        what = f"{d.name} vs {ref} ({r.shape[0]} rows): rel err {err:.2e}, mean cosine {c:.6f}"
        if ref == "cpu":
            check(err < 1e-2 and c > 0.9999, what + " (bounds 1e-2, 0.9999)")
        elif ref == "fx":
            check(c > 0.999, what + " (bound 0.999)")
        else:
            print("info " + what)
    if bench:
        vm = mod._ready()
        ins = [mod._to_device(v, s) for v, s in zip((z["input_ids"], z["attention_mask"]),
                                                    mod.meta["inputs"])]
        row["ms"] = bench_ms(lambda: vm["main"](*ins, *mod._params), iters=20)
        row["call_ms"] = bench_ms(lambda: mod(z["input_ids"], z["attention_mask"]), iters=5,
                                  warm=2)
        if prof:
            try:
                row["profile"] = kernel_profile(lambda: vm["main"](*ins, *mod._params))
                print(json.dumps({k: v for k, v in row["profile"].items() if k != "top"}))
                for r in row["profile"]["top"]:
                    print(f"     {r['us_per_call']:8.1f} us  x{r['launches_per_call']:.0f}  "
                          f"{r['kernel']}")
            except Exception as e:  # noqa: BLE001
                row["profile_error"] = f"{type(e).__name__}: {e}"[:300]
    return row, {"A": a1, "B": bo}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", default=".gpu_bundle/e2e")
    p.add_argument("--json", default=None)
    p.add_argument("--models", default="minilm,bert_base_layer")
    p.add_argument("--batches", default="1,8,32")
    args = p.parse_args()
    folder = Path(args.bundle) / "models"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                 "--format=csv,noheader"], check=False, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        driver = "?"
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": torch.cuda.get_device_name(), "driver": driver,
              "torch": torch.__version__, "tvm": tvm.__version__,
              "runtime_only": os.environ.get("TVM_USE_RUNTIME_LIB") == "1",
              "cuda_backend": str(load_cuda_backend()), "rows": [], "fails": FAILS}
    print({k: v for k, v in result.items() if k not in ("rows", "fails")}, flush=True)

    def dump():
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))

    for name in args.models.split(","):
        for b in map(int, args.batches.split(",")):
            base = folder / f"{name}_b{b}"
            if not base.is_dir():
                print(f"skip {base}: not built")
                continue
            z = np.load(base / "io.npz")
            ids_b = np.roll(z["input_ids"], 3, axis=1)        # input B: other (valid) ids
            mask_b = z["attention_mask"]
            row = {"model": name, "batch": b, "variants": {}}
            outs = {}
            for v in VARIANTS:
                d = folder / f"{name}{v}_b{b}"
                if not d.is_dir():
                    continue
                try:
                    r, o = run_variant(d, z, ids_b, mask_b, prof=v == "@sm_90a-nograph")
                except Exception as e:  # noqa: BLE001
                    check(False, f"{d.name}: {type(e).__name__}: {str(e)[:400]}")
                    continue
                row["variants"][v or "@sm_90"] = r
                outs[v or "@sm_90"] = o
                print(f"{d.name}: {r.get('ms', float('nan')):.3f} ms (graphs {r.get('graphs')}, "
                      f"kernels outside {r.get('kernels_outside')}, in graphs "
                      f"{r.get('kernels_in_graphs')})", flush=True)
                result["rows"] = [x for x in result["rows"] if x is not row] + [row]
                dump()
            for arch in ("sm_90", "sm_90a"):
                g, ng = outs.get(f"@{arch}"), outs.get(f"@{arch}-nograph")
                if g and ng:
                    for k in ("A", "B"):
                        same = np.array_equal(g[k], ng[k])
                        d = float(np.abs(g[k] - ng[k]).max())
                        check(same or d < 1e-5, f"{name} b{b} {arch}: graph == no graph on input "
                              f"{k} (max abs diff {d:.2e})")
            if outs.get("@sm_90") and outs.get("@sm_90a"):
                d = float(np.abs(outs["@sm_90"]["A"] - outs["@sm_90a"]["A"]).max())
                row["sm_90a_vs_sm_90_max_abs_diff"] = d
                print(f"{name} b{b}: sm_90a vs sm_90 max abs diff {d:.2e}")
            try:
                row.update(torch_rows(name, b, z["input_ids"], z["attention_mask"]))
            except Exception as e:  # noqa: BLE001
                check(False, f"{name} b{b} torch baselines: {type(e).__name__}: {str(e)[:300]}")
            print(json.dumps({k: v for k, v in row.items() if k != "variants"}), flush=True)
            result["rows"] = [x for x in result["rows"] if x is not row] + [row]
            dump()
            torch.cuda.empty_cache()

    print("\n| model | batch | sm_90 graph | sm_90 no graph | sm_90a graph | sm_90a no graph | "
          "torch fp32 | torch bf16 | torch int8 | torch bf16 graph | bf16 / best lowbit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        ms = [r["variants"].get(v, {}).get("ms", float("nan"))
              for v in ("@sm_90", "@sm_90-nograph", "@sm_90a", "@sm_90a-nograph")]
        best = np.nanmin(ms) if not all(np.isnan(ms)) else float("nan")
        t = [r.get(k, float("nan")) for k in ("torch_fp32_ms", "torch_bf16_ms", "torch_int8_ms",
                                              "torch_bf16_graph_ms")]
        print(f"| {r['model']} | {r['batch']} | " + " | ".join(f"{x:.3f}" for x in ms + t)
              + f" | {t[1] / best:.2f} |")
    dump()
    print(f"\n{len(FAILS)} check(s) failed" + (": " + "; ".join(FAILS) if FAILS else ""))
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
