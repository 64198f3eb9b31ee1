"""On the GPU machine, with the TVM runtime only: run the BCQ models that
scripts/gpu_prepare_bcq_models.py compiled for sm_90, check them against their FX references, and
time them against the same architecture in torch (random weights, fp32 / bf16 / fp16, eager).

    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=<tvm runtime bundle>:. python scripts/gpu_check_bcq_models.py \\
        [--bundle .gpu_bundle/bcq_models] [--json out.json]

Checks (exit status 1 when one fails): MiniLM's last hidden state within ``MINILM_RTOL`` of max |y|
of the FX graph's; Gemma's logits (the last positions kept in full) within ``GEMMA_RTOL`` of max
|y|, and the next-token argmax equal to FX's at ``ARGMAX_MIN`` of the positions or more.
Timings: medians of 5 x ``--iters`` calls between CUDA events, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check as gc  # (sets up the runtime-only lowbit package)

from lowbit.backends.tvm.runtime import load

# Bounds against the FX graph (fp32 eager torch on the CPU). The CUDA kernels sum in another order
# (split-K with fp32 atomics, tiles): the CPU module agrees within 5e-7 (MiniLM) and 2e-5 (Gemma
# logits), so these leave room for ordering only, not for a wrong kernel.
MINILM_RTOL = 1e-4
GEMMA_RTOL = 1e-3
ARGMAX_MIN = 0.97    # near-ties among 262,144 logits may flip under another summation order


def torch_baseline(name: str, cfg: dict):
    """The same architecture in torch with random weights, on the GPU (eager)."""
    torch.manual_seed(0)
    if name.startswith("minilm"):
        from transformers import BertConfig, BertModel

        return BertModel(BertConfig(**cfg)).eval().cuda()
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(**cfg)).eval().cuda()


def run(bundle: Path, e: dict, iters: int) -> dict:
    d = bundle / e["name"]
    link = d / "params.bin"
    if not link.exists():
        os.symlink((bundle / f"params_{e['model']}.bin").resolve(), link)
    z = np.load(d / "io.npz")
    ins = [z[k] for k in e["inputs"]]
    mod = load(d)
    out = mod(*ins)
    got = np.asarray(out[0] if isinstance(out, (list, tuple)) else out)     # first output
    row = {"name": e["name"], "lowering": e["lowering"], "params_mb": e["params_mb"]}
    if "fx" in z:                                              # MiniLM: last hidden state
        err = float(np.abs(got - z["fx"]).max() / np.abs(z["fx"]).max())
        row["rel_err"] = err
        gc.check(err <= MINILM_RTOL, f"{e['name']} vs FX: max rel {err:.2e} "
                 f"(bound {MINILM_RTOL:g})")
    else:                                                      # Gemma: logits
        tail = got[0, -z["fx_tail"].shape[0]:]
        err = float(np.abs(tail - z["fx_tail"]).max() / np.abs(z["fx_tail"]).max())
        same = float((got[0].argmax(-1) == z["fx_argmax"]).mean())
        same_fp = float((got[0].argmax(-1) == z["fp_argmax"]).mean())
        row.update(rel_err=err, argmax_vs_fx=same, argmax_vs_float=same_fp)
        gc.check(err <= GEMMA_RTOL and same >= ARGMAX_MIN,
                 f"{e['name']} vs FX: logits max rel {err:.2e} (bound {GEMMA_RTOL:g}), argmax "
                 f"equal {same:.1%} (bound {ARGMAX_MIN:.0%}); vs the float model {same_fp:.1%}")
    vm = mod._ready()
    dev = [mod._to_device(v, s) for v, s in zip(ins, mod.meta["inputs"])]
    row["lowbit_ms"] = gc.bench_ms(lambda: vm["main"](*dev, *mod._params), iters=iters)
    if "torch_config" in e:
        try:
            tm = torch_baseline(e["name"], e["torch_config"])
        except Exception as ex:  # noqa: BLE001 - transformers on the GPU machine may lack it
            print(f"info {e['name']}: no torch baseline ({type(ex).__name__}: {ex})")
        else:
            x = [torch.from_numpy(v).cuda() for v in ins]
            x[0] = x[0] % tm.config.vocab_size                  # the cut MiniLM's ids
            kw = {} if e["name"].startswith("minilm") else {"use_cache": False}
            with torch.no_grad():
                for dt in ("float32", "bfloat16", "float16"):
                    tm = tm.to(getattr(torch, dt))
                    row[f"torch_{dt}_ms"] = gc.bench_ms(lambda m=tm: m(*x, **kw), iters=iters)
    print(f"{e['name']}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                        if k.endswith("_ms")), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(gc.REPO / ".gpu_bundle" / "bcq_models"))
    p.add_argument("--json", default=None)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    bundle = Path(args.bundle)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA backend: "
          f"{gc.load_cuda_backend()}", flush=True)
    rows = [run(bundle, e, args.iters) for e in json.loads((bundle / "index.json").read_text())]
    print("\n| module | lowbit ms | torch fp32 ms | torch bf16 ms | torch fp16 ms | "
          "max rel vs FX | params MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t = [f"{r[k]:.3f}" if k in r else "-" for k in ("lowbit_ms", "torch_float32_ms",
                                                          "torch_bfloat16_ms", "torch_float16_ms")]
        print(f"| {r['name']} | {' | '.join(t)} | {r['rel_err']:.1e} | {r['params_mb']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "fails": gc.FAILS}, indent=1))
    print(f"\n{len(gc.FAILS)} check(s) failed" + (": " + "; ".join(gc.FAILS) if gc.FAILS else ""))
    sys.exit(1 if gc.FAILS else 0)


if __name__ == "__main__":
    main()
