"""On the GPU machine, TVM runtime only: the sm_90a wgmma shells that
scripts/gpu_prepare_wgmma_route.py built (output poisoned with NaN, checked against a float64
reference of the integer GEMM and the epilogue, timed with time_evaluator) and the tiny W8A8
BERT compiled for sm_90a against the same model compiled for sm_90 (mma.sync). Writes
$OUT/wg20.json.

    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=/tmp/site:. python3 scripts/gpu_check_wgmma_route.py
"""
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path.cwd()
sys.path.insert(0, str(REPO))
_pkg = types.ModuleType("lowbit"); _pkg.__path__ = [str(REPO / "lowbit")]; sys.modules["lowbit"] = _pkg
import tvm

from lowbit.backends.tvm.cuda_env import load_cuda_backend
from lowbit.backends.tvm.runtime import load

print("backend", load_cuda_backend(), flush=True)
B = REPO / ".gpu_bundle" / "wg20"
dev = tvm.cuda(0)
print(dev.compute_version, flush=True)
res = {"kernels": [], "models": []}
for c in json.loads((B / "cases.json").read_text()):
    i, m, n, k = c["i"], c["m"], c["n"], c["k"]
    z = np.load(B / f"k{i}.npz")
    mod = tvm.runtime.load_module(str(B / f"k{i}.so"))
    f = mod["main"]
    y = np.full((m, n), np.nan, np.float32)
    args = [tvm.runtime.tensor(a, dev) for a in (z["x"], z["w"], z["corr"], z["scale"], z["bias"], y)]
    t0 = time.time()
    try:
        f(*args); dev.sync()
    except Exception as e:  # noqa: BLE001  (report the failure, go on)
        print("FAIL", c, repr(e)[:500], flush=True); res["kernels"].append(dict(c, ok=False, err=repr(e)[:300])); continue
    got = args[-1].numpy()
    acc = z["x"].astype(np.int64) @ z["wplain"].astype(np.int64).T
    gemm_exact = None
    ref = ((acc - z["corr"]).astype(np.float64) * z["scale"] + z["bias"])
    err = float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-30))
    ok = bool(np.isfinite(got).all()) and err < 1e-6
    ev = mod.time_evaluator("main", dev, number=50, repeat=5)
    ms = float(np.median(ev(*args).results)) * 1e3
    print(("ok  " if ok else "FAIL"), c, f"rel err {err:.2e}", f"{ms:.4f} ms", flush=True)
    res["kernels"].append(dict(c, ok=ok, rel_err=err, ms=ms))
for seq in (16, 200):
    outs = {}
    for arch in ("sm_90a", "sm_90"):
        d = B / f"bert{seq}_{arch}"
        mod = load(d); z = np.load(d / "io.npz")
        try:
            o = mod(z["input_ids"], z["attention_mask"])
            outs[arch] = np.asarray(o[0] if isinstance(o, (tuple, list)) else o)
        except Exception as e:  # noqa: BLE001  (report the failure, go on)
            print("FAIL model", arch, seq, repr(e)[:500], flush=True)
    if len(outs) == 2:
        a, b = outs["sm_90a"], outs["sm_90"]
        d = float(np.abs(a - b).max()); ok = bool(np.isfinite(a).all()) and d < 1e-4
        print(("ok  " if ok else "FAIL"), f"bert seq {seq}: sm_90a (wgmma) vs sm_90 (mma.sync) max abs diff {d:.3e}, |y| max {np.abs(b).max():.3f}", flush=True)
        res["models"].append({"seq": seq, "ok": ok, "max_abs_diff": d})
out = Path(os.environ.get("OUT", "/tmp"))
(out / "wg20.json").write_text(json.dumps(res, indent=1))
