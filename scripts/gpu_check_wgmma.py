"""On the GPU machine (H100/H200, torch + CUDA driver; no TVM, no nvcc needed): check the sm_90a
wgmma int8 GEMM of lowbit/backends/tvm/kernels/cuda_wgmma.cu against torch references and time
it against torch._int_mm.

    python3 scripts/gpu_check_wgmma.py --lib .gpu_bundle/wgmma/libwgmma.so --json $OUT/wgmma.json

The library comes from `python scripts/build_wgmma.py` (here); if it does not load there and an
nvcc is found, it is rebuilt into a temporary folder first.

What it does (plain torch + ctypes + numpy):
- The parent process never touches CUDA. It runs workers (this script with --worker), so that
  a kernel that faults (a sticky CUDA error ends the process's context) or hangs (a pipeline
  deadlock spins forever on an mbarrier) costs one worker, not the run: each worker has a
  timeout and streams its rows to a .jsonl file as it goes; whatever it wrote is kept.
- Check phase: one worker per kernel configuration, all in parallel (correctness only). Per
  shape, fresh random inputs over the full ranges (x u8 in [0, 255], w s8 in [-128, 127]); the
  output is filled with NaN before every call. Reference accumulator acc = x @ w^T in float64
  on the GPU (exact: every partial sum is an integer below 2^53). Two calls per shape:
    exact:    corr = 0, scale = 1, bias = 0, so y must equal float32(acc) bit for bit
              (tests the GEMM, the TMA/swizzle/descriptor indexing and the tails exactly);
    epilogue: random corr, scale, bias; per element
              |y - ref| <= 1e-6 (|f32(acc - corr) * scale| + |bias|) with
              ref = f32(acc - corr) * scale + bias in fp32 (the kernel fuses the multiply-add,
              torch rounds twice: a few ulp apart at most), and no NaN anywhere.
  Shapes: the issue's 18 (M in {128, 1024, 4096} x (N, K) in {(768, 768), (3072, 768),
  (768, 3072), (384, 384), (1536, 384), (384, 1536)}) and ragged ones (M, N not multiples of
  the tile, K not a multiple of 128, odd N), plus the refusals (K % 16 != 0, misaligned x,
  unknown configuration) which must return their error codes without launching.
- Timing phase (one worker, after the checks; configurations that failed a check are left
  out): per issue shape, every configuration and torch._int_mm on the same problem as s8 x s8
  ((x - 128) as int8, like scripts/gpu_check.py), CUDA events around 50 back-to-back calls,
  median of 5 after 10 warm-up calls (gpu_check.bench_ms), same buffers every call, the
  library's arguments converted to ctypes once per shape (a call costs ctypes + the launcher,
  whose tensor maps are cached); and the same 50 calls captured in a CUDA graph and replayed
  (launch gaps and the per-call host work taken out: kernel time), median of 5 replays.
  Both are reported per configuration, with the default configuration's ratio and the fastest
  configuration under graph replay.
Exit 1 if any check failed, a worker crashed or timed out, or nothing was timed.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ISSUE_SHAPES = [(m, n, k) for m in (128, 1024, 4096)
                for n, k in ((768, 768), (3072, 768), (768, 3072), (384, 384), (1536, 384),
                             (384, 1536))]
DEV = "cuda"   # scripts' own CPU dry run swaps this (with a stand-in library)
RAGGED_SHAPES = [(256, 128, 256), (7, 100, 48), (1000, 200, 64), (129, 65, 144),
                 (300, 520, 1040), (1, 8, 16), (4100, 776, 784)]


# ---- the library ---------------------------------------------------------------------------
def load_lib(path: str) -> ctypes.CDLL:
    if path == "dry-run":
        return _DryLib()
    lib = ctypes.CDLL(path)
    lib.lowbit_wgmma_num_configs.restype = ctypes.c_int
    lib.lowbit_wgmma_config_name.restype = ctypes.c_char_p
    lib.lowbit_wgmma_config_name.argtypes = [ctypes.c_int]
    lib.lowbit_wgmma_config_smem.argtypes = [ctypes.c_int]
    lib.lowbit_wgmma_default_config.argtypes = [ctypes.c_int] * 3
    lib.lowbit_wgmma_u8s8.restype = ctypes.c_int
    lib.lowbit_wgmma_u8s8.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int] * 4 + [
        ctypes.c_void_p]
    return lib


def configs(lib) -> list[str]:
    return [lib.lowbit_wgmma_config_name(i).decode() for i in range(lib.lowbit_wgmma_num_configs())]


# ---- worker side (touches CUDA) ------------------------------------------------------------
def _emit(f, row: dict) -> None:
    f.write(json.dumps(row) + "\n")
    f.flush()
    print(json.dumps(row), flush=True)


def _call(lib, torch, x, w, corr, scale, bias, y, m, n, k, cfg, x_ptr=None) -> int:
    return lib.lowbit_wgmma_u8s8(x.data_ptr() if x_ptr is None else x_ptr, w.data_ptr(),
                                 corr.data_ptr(), scale.data_ptr(), bias.data_ptr(),
                                 y.data_ptr(), m, n, k, cfg,
                                 torch.cuda.current_stream().cuda_stream)


def _inputs(torch, m, n, k, g):
    x = torch.randint(0, 256, (m, k), dtype=torch.uint8, device=DEV, generator=g)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=DEV, generator=g)
    corr = torch.randint(-5000, 5000, (n,), dtype=torch.int32, device=DEV, generator=g)
    scale = torch.rand(n, device=DEV, generator=g) * 1e-4
    bias = torch.randn(n, device=DEV, generator=g)
    return x, w, corr, scale, bias


def worker_check(lib, cfg: int, f) -> None:
    import torch

    g = torch.Generator(device=DEV).manual_seed(1000 + cfg)
    name = lib.lowbit_wgmma_config_name(cfg).decode()
    # refusals: must return the code without launching anything
    x, w, corr, scale, bias = _inputs(torch, 64, 64, 64, g)
    y = torch.full((64, 64), float("nan"), device=DEV)
    for what, want, rc in (
            ("K % 16 != 0", 1, _call(lib, torch, x, w, corr, scale, bias, y, 64, 64, 24, cfg)),
            ("K = 0", 1, _call(lib, torch, x, w, corr, scale, bias, y, 64, 64, 0, cfg)),
            ("x not 16-byte aligned", 2,
             _call(lib, torch, x, w, corr, scale, bias, y, 63, 64, 48, cfg, x.data_ptr() + 1)),
            ("unknown configuration", 5,
             _call(lib, torch, x, w, corr, scale, bias, y, 64, 64, 64, 99))):
        torch.cuda.synchronize()
        _emit(f, {"phase": "check", "config": name, "what": f"refuses {what}", "rc": rc,
                  "ok": rc == want and bool(torch.isnan(y).all())})
    for m, n, k in RAGGED_SHAPES[:1] + ISSUE_SHAPES + RAGGED_SHAPES[1:]:
        row = {"phase": "check", "config": name, "M": m, "N": n, "K": k,
               "issue_shape": (m, n, k) in ISSUE_SHAPES}
        try:
            x, w, corr, scale, bias = _inputs(torch, m, n, k, g)
            acc = x.double() @ w.double().t()
            # exact: y == f32(acc)
            zc = torch.zeros_like(corr)
            one, zero = torch.ones_like(scale), torch.zeros_like(bias)
            y = torch.full((m, n), float("nan"), device=DEV)
            rc = _call(lib, torch, x, w, zc, one, zero, y, m, n, k, cfg)
            torch.cuda.synchronize()
            row["rc"] = rc
            exact_ref = acc.float()
            row["exact"] = rc == 0 and bool(torch.equal(y, exact_ref))
            if rc == 0 and not row["exact"]:
                bad = (y != exact_ref) | torch.isnan(y)
                row["exact_wrong"] = int(bad.sum())
                idx = bad.nonzero()[:4].tolist()
                row["exact_examples"] = [[i, j, float(y[i, j]), float(exact_ref[i, j])]
                                         for i, j in idx]
                rows_bad = bad.any(1).nonzero().flatten()
                cols_bad = bad.any(0).nonzero().flatten()
                row["bad_rows"] = [int(rows_bad.min()), int(rows_bad.max()), len(rows_bad)]
                row["bad_cols"] = [int(cols_bad.min()), int(cols_bad.max()), len(cols_bad)]
            # epilogue: y = f32(acc - corr) * scale + bias
            y = torch.full((m, n), float("nan"), device=DEV)
            rc2 = _call(lib, torch, x, w, corr, scale, bias, y, m, n, k, cfg)
            torch.cuda.synchronize()
            p = (acc - corr.double()).float() * scale
            ref = p + bias
            err = (y - ref).abs()
            bound = 1e-6 * (p.abs() + bias.abs()) + 1e-30
            row["rc_epilogue"] = rc2
            row["finite"] = bool(torch.isfinite(y).all())
            row["max_err_over_bound"] = float((err / bound).max()) if row["finite"] else None
            row["rel_err"] = float((y.double() - ref.double()).norm() / ref.double().norm())
            row["epilogue"] = rc2 == 0 and row["finite"] and bool((err <= bound).all())
            row["ok"] = row["exact"] and row["epilogue"]
        except Exception as e:  # a CUDA fault is sticky: record, then stop this worker
            row["ok"] = False
            row["error"] = f"{type(e).__name__}: {e}"[:500]
            _emit(f, row)
            raise
        _emit(f, row)


def bench_ms(torch, fn, iters: int = 50, warm: int = 10) -> float:
    import numpy as np

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


def graph_ms(torch, fn, iters: int = 50, bind=None) -> float:
    """``bind()``: a fresh fn for the current stream (the capture runs on a side stream)."""
    import numpy as np

    fn()
    torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):      # captures on a side stream, made the current stream here
        f = bind() if bind else fn
        for _ in range(iters):
            f()
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
    return float(np.median(ts))


def _bound_call(lib, cargs: list, cfg: int, stream: int):
    """lowbit_wgmma_u8s8 with its arguments converted to ctypes once."""
    call, c, st = lib.lowbit_wgmma_u8s8, ctypes.c_int(cfg), ctypes.c_void_p(stream)

    def fn():
        rc = call(*cargs, c, st)
        if rc:
            raise RuntimeError(f"lowbit_wgmma_u8s8 returned {rc}")
    return fn


def _bound_call_current(torch, lib, cargs: list, cfg: int):
    return _bound_call(lib, cargs, cfg, torch.cuda.current_stream().cuda_stream)


def worker_time(lib, cfgs: list[int], f) -> None:
    import torch

    g = torch.Generator(device=DEV).manual_seed(7)
    props = torch.cuda.get_device_properties(0)
    _emit(f, {"phase": "device", "name": props.name, "sms": props.multi_processor_count,
              "torch": torch.__version__, "cuda": torch.version.cuda})
    use_graph = True
    for m, n, k in ISSUE_SHAPES:
        x, w, corr, scale, bias = _inputs(torch, m, n, k, g)
        y = torch.empty((m, n), device=DEV)
        xi8 = (x.int() - 128).to(torch.int8)
        wt = w.t()
        row = {"phase": "time", "M": m, "N": n, "K": k,
               "default_config": lib.lowbit_wgmma_config_name(
                   lib.lowbit_wgmma_default_config(m, n, k)).decode()}
        def int_mm(xi8=xi8, wt=wt):
            return torch._int_mm(xi8, wt)
        row["int_mm_ms"] = bench_ms(torch, int_mm)
        # the library's arguments converted once (what a C caller, or TVM, passes): the timed
        # calls then cost ctypes + the launcher, not torch's data_ptr()/current_stream()
        stream = torch.cuda.current_stream().cuda_stream
        cargs = [ctypes.c_void_p(t.data_ptr()) for t in (x, w, corr, scale, bias, y)] + [
            ctypes.c_int(v) for v in (m, n, k)]
        for c in cfgs:
            name = lib.lowbit_wgmma_config_name(c).decode()
            fn = _bound_call(lib, cargs, c, stream)
            bind = functools.partial(_bound_call_current, torch, lib, cargs, c)
            try:
                row[f"ms_{name}"] = bench_ms(torch, fn)
            except Exception as e:  # noqa: BLE001  (recorded; a sticky CUDA error ends the rest)
                row[f"error_{name}"] = f"{type(e).__name__}: {e}"[:300]
                continue
            if use_graph:
                try:
                    row[f"graph_ms_{name}"] = graph_ms(torch, fn, bind=bind)
                except Exception as e:  # noqa: BLE001
                    use_graph = False
                    row["graph_error"] = f"{type(e).__name__}: {e}"[:300]
        if use_graph:
            try:
                row["graph_int_mm_ms"] = graph_ms(torch, int_mm)
            except Exception as e:  # noqa: BLE001
                row["graph_error"] = f"{type(e).__name__}: {e}"[:300]
        _emit(f, row)


# ---- --dry-run: the harness's own plumbing on a machine without a GPU ---------------------------
class _DryLib:
    """Stand-in for libwgmma.so computing the same function in numpy on CPU tensors (same
    entry points and error codes), so that `--dry-run` exercises workers, checks, timing and
    the report without a GPU. Says nothing about the kernel."""

    NAMES = (b"128x64_s4", b"128x128_s4")

    def lowbit_wgmma_num_configs(self):
        return len(self.NAMES)

    def lowbit_wgmma_config_name(self, i):
        return self.NAMES[i] if 0 <= i < len(self.NAMES) else b""

    def lowbit_wgmma_config_smem(self, i):
        return 99392

    def lowbit_wgmma_default_config(self, m, n, k):
        return 0

    def lowbit_wgmma_u8s8(self, *args):
        import numpy as np

        # plain ints, or the ctypes objects of the timing loop
        xp, wp, cp, sp, bp, yp, m, n, k, cfg, _stream = (getattr(a, "value", a) for a in args)

        if m < 1 or n < 1 or k < 16 or k % 16:
            return 1
        if (xp | wp) & 15:
            return 2
        if cfg >= len(self.NAMES):
            return 5

        def arr(ptr, ct, cnt):
            return np.ctypeslib.as_array((ct * cnt).from_address(ptr))
        x = arr(xp, ctypes.c_uint8, m * k).reshape(m, k).astype(np.int64)
        w = arr(wp, ctypes.c_int8, n * k).reshape(n, k).astype(np.int64)
        acc = (x @ w.T - arr(cp, ctypes.c_int32, n)).astype(np.float32)
        y = acc * arr(sp, ctypes.c_float, n) + arr(bp, ctypes.c_float, n)
        arr(yp, ctypes.c_float, m * n)[:] = y.reshape(-1)
        return 0


def _dry_run_setup():
    import types

    import torch

    global DEV, ISSUE_SHAPES, RAGGED_SHAPES
    DEV = "cpu"
    ISSUE_SHAPES = [(128, 128, 128), (256, 192, 64)]
    RAGGED_SHAPES = RAGGED_SHAPES[:3]

    class _Ev:
        def __init__(self, **kw):
            self.t = 0.0

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, other):
            return (other.t - self.t) * 1e3

    torch.cuda.synchronize = lambda: None
    torch.cuda.current_stream = lambda: types.SimpleNamespace(cuda_stream=0)
    torch.cuda.Event = _Ev
    torch.cuda.get_device_properties = lambda i: types.SimpleNamespace(
        name="dry run (CPU)", multi_processor_count=0)
    torch._int_mm = lambda a, b: a.int() @ b.int()
    torch.cuda.CUDAGraph = None      # graph timing fails -> recorded, not fatal


# ---- parent ----------------------------------------------------------------------------------
def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _resolve_lib(path: str, notes: list[str]) -> str:
    if path == "dry-run":
        return path
    try:
        load_lib(path)
        return path
    except OSError as e:
        notes.append(f"{path} does not load here ({e}); trying to rebuild with nvcc")
    sys.path.insert(0, str(REPO / "scripts"))
    import build_wgmma

    out = Path(tempfile.mkdtemp(prefix="wgmma_"))
    rep = build_wgmma.build(out)                      # raises BuildError when it cannot
    notes.append(f"rebuilt here: {rep['binary']} ({rep['nvcc']})")
    return rep["binary"]


def sass_summary(lib_path: str) -> dict:
    """Where cuobjdump exists (the GPU machine's image has one): count the Hopper instructions
    in the library's SASS: HGMMA/IGMMA (wgmma), UTMALDG (TMA load), SYNCS (mbarrier),
    USETMAXREG (setmaxnreg), and the old-path IMMA (mma.sync) for contrast."""
    import re
    import shutil

    exe = shutil.which("cuobjdump") or shutil.which("/usr/local/cuda/bin/cuobjdump")
    if not exe or lib_path == "dry-run":
        return {"skipped": "no cuobjdump" if not exe else "dry run"}
    r = subprocess.run([exe, "--dump-sass", lib_path], check=False, capture_output=True,
                       text=True, timeout=60)
    if r.returncode:
        return {"error": (r.stdout + r.stderr)[-500:]}
    out = {"arch": sorted(set(re.findall(r"arch = (sm_\w+)", r.stdout)))}
    for op in ("HGMMA", "IGMMA", "UTMALDG", "SYNCS", "USETMAXREG", "IMMA", "LDL", "STL"):
        out[op] = len(re.findall(rf"\b{op}\b", r.stdout))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=str(REPO / ".gpu_bundle" / "wgmma" / "libwgmma.so"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--timeout", type=float, default=40.0,
                    help="seconds for the check phase (the timing phase gets twice that)")
    ap.add_argument("--worker", choices=["check", "time"], default=None)
    ap.add_argument("--configs", default="", help="comma-separated config indices (worker)")
    ap.add_argument("--rows", default=None, help="worker output, .jsonl")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: a numpy stand-in library on CPU tensors (tests this script)")
    a = ap.parse_args()
    if a.dry_run:
        a.lib = "dry-run"
    if a.lib == "dry-run":
        _dry_run_setup()

    if a.worker:
        lib = load_lib(a.lib)
        cfgs = [int(c) for c in a.configs.split(",") if c != ""]
        with open(a.rows, "a") as f:
            if a.worker == "check":
                worker_check(lib, cfgs[0], f)
            else:
                worker_time(lib, cfgs, f)
        return 0

    t0 = time.time()
    notes: list[str] = []
    fails: list[str] = []
    lib_path = _resolve_lib(a.lib, notes)
    lib = load_lib(lib_path)
    names = configs(lib)
    try:
        sass = sass_summary(lib_path)
    except Exception as e:  # noqa: BLE001  (optional: never fails the run)
        sass = {"error": f"{type(e).__name__}: {e}"}
    print(f"SASS: {sass}", flush=True)
    if "HGMMA" in sass and sass["HGMMA"] + sass["IGMMA"] == 0:
        fails.append("cuobjdump: no HGMMA/IGMMA (wgmma) in the library's SASS")
    tmp = Path(tempfile.mkdtemp(prefix="wgmma_rows_"))
    me = [sys.executable, str(Path(__file__).resolve()), "--lib", lib_path]
    # (workers re-run _dry_run_setup() themselves from --lib dry-run)

    # check phase: one worker per configuration, in parallel
    procs = {}
    for i, name in enumerate(names):
        rows = tmp / f"check_{i}.jsonl"
        log = open(tmp / f"check_{i}.log", "w")  # noqa: SIM115  (closed below)
        procs[i] = (subprocess.Popen([*me, "--worker", "check", "--configs", str(i),
                                      "--rows", str(rows)], stdout=log, stderr=subprocess.STDOUT),
                    rows, log)
    check_rows: list[dict] = []
    passed: list[int] = []
    for i, (p, rows, log) in procs.items():
        try:
            rc = p.wait(timeout=max(1.0, a.timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "timeout"
        log.close()
        got = _read_rows(rows)
        check_rows += got
        expected = 4 + len(ISSUE_SHAPES) + len(RAGGED_SHAPES)
        bad = [r for r in got if not r.get("ok")]
        for r in bad:
            fails.append(f"{names[i]}: {r.get('what') or (r['M'], r['N'], r['K'])}")
        if rc != 0:
            last = got[-1] if got else None
            tail = (tmp / f"check_{i}.log").read_text()[-1500:]
            fails.append(f"{names[i]}: check worker {'timed out' if rc == 'timeout' else 'exit ' + str(rc)}"
                         f" after {len(got)} rows (last: {last and (last.get('M'), last.get('N'), last.get('K'))})")
            print(f"--- check worker {names[i]} log tail ---\n{tail}", flush=True)
        elif len(got) != expected:
            fails.append(f"{names[i]}: {len(got)} check rows, expected {expected}")
        if rc == 0 and not bad and len(got) == expected:
            passed.append(i)
        print(f"checks {names[i]}: {sum(bool(r.get('ok')) for r in got)}/{expected} ok"
              f" ({'worker ' + str(rc) if rc != 0 else 'worker ok'})", flush=True)

    # timing phase: one worker, passed configurations only
    time_rows: list[dict] = []
    if passed:
        rows = tmp / "time.jsonl"
        log = open(tmp / "time.log", "w")  # noqa: SIM115
        p = subprocess.Popen([*me, "--worker", "time", "--configs", ",".join(map(str, passed)),
                              "--rows", str(rows)], stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = p.wait(timeout=max(20.0, 2 * a.timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "timeout"
        log.close()
        time_rows = _read_rows(rows)
        if rc != 0:
            fails.append(f"timing worker {'timed out' if rc == 'timeout' else 'exit ' + str(rc)}")
            print((tmp / "time.log").read_text()[-2000:], flush=True)
    else:
        fails.append("no configuration passed every check: nothing timed")

    # report
    device = next((r for r in time_rows if r.get("phase") == "device"), {})
    table = []
    for r in time_rows:
        if r.get("phase") != "time":
            continue
        ms = {k[3:]: v for k, v in r.items() if k.startswith("ms_")}
        for k, v in r.items():
            if k.startswith("error_"):
                fails.append(f"timing {k[6:]} {r['M']}x{r['N']}x{r['K']}: {v}")
        if not ms:
            continue
        best = min(ms, key=ms.get)
        top = 2 * r["M"] * r["N"] * r["K"] / 1e12
        dflt = r["default_config"]
        gms = {k[9:]: v for k, v in r.items() if k.startswith("graph_ms_")}
        gbest = min(gms, key=gms.get) if gms else None
        table.append({**r, "best_config": best, "best_ms": ms[best],
                      "graph_best_config": gbest,
                      "graph_ratio_graph_best": (r["graph_int_mm_ms"] / gms[gbest]
                                                 if gbest and "graph_int_mm_ms" in r else None),
                      "ratio_best": r["int_mm_ms"] / ms[best],
                      "ratio_default": r["int_mm_ms"] / ms[dflt] if dflt in ms else None,
                      "best_TOPS": top / ms[best] * 1e3, "int_mm_TOPS": top / r["int_mm_ms"] * 1e3,
                      "graph_ratio_best": (r["graph_int_mm_ms"] / r[f"graph_ms_{best}"]
                                           if "graph_int_mm_ms" in r and f"graph_ms_{best}" in r
                                           else None)})
    build = {}
    bj = Path(lib_path).parent / "build.json"
    if bj.exists():
        build = json.loads(bj.read_text())
    result = {"lib": lib_path, "notes": notes, "device": device, "configs": names,
              "build": build, "sass": sass, "checks": check_rows, "timing": table, "fails": fails,
              "wall_s": time.time() - t0}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))

    for nline in notes:
        print("note:", nline)
    if device:
        print(f"\n{device.get('name')}, {device.get('sms')} SMs, torch {device.get('torch')}, "
              f"CUDA {device.get('cuda')}")
    if table:
        cols = [n for n in names if any(f"ms_{n}" in r for r in table)]
        print("\nms per call (events, 5 x 50, median); ratio = _int_mm / wgmma; g: graph replay")
        print("| M x N x K | " + " | ".join(cols) + " | _int_mm | best/ratio | default ratio |"
              " g best | g _int_mm | g ratio | g fastest | TOP/s best / _int_mm |")
        for r in table:
            cells = " | ".join(f"{r.get('ms_' + c, float('nan')):.4f}" for c in cols)
            gb = r.get(f"graph_ms_{r['best_config']}")
            gi = r.get("graph_int_mm_ms")
            def fmt(v, spec):
                return "-" if v is None else format(v, spec)
            print(f"| {r['M']}x{r['N']}x{r['K']} | {cells} | {r['int_mm_ms']:.4f} | "
                  f"{r['best_config']} {r['ratio_best']:.2f} | {fmt(r['ratio_default'], '.2f')} | "
                  f"{fmt(gb, '.4f')} | {fmt(gi, '.4f')} | {fmt(r['graph_ratio_best'], '.2f')} | "
                  f"{r['graph_best_config']} {fmt(r['graph_ratio_graph_best'], '.2f')} | "
                  f"{r['best_TOPS']:.0f} / {r['int_mm_TOPS']:.0f} |")
    nchecks = sum(1 for r in check_rows if r.get("phase") == "check")
    nok = sum(1 for r in check_rows if r.get("phase") == "check" and r.get("ok"))
    errs = [r["max_err_over_bound"] for r in check_rows if r.get("max_err_over_bound") is not None]
    print(f"\nchecks: {nok}/{nchecks} ok; worst epilogue error / bound "
          f"{max(errs) if errs else float('nan'):.3f}; configs timed: "
          f"{[names[i] for i in passed]}; {time.time() - t0:.0f} s")
    for fl in fails[:30]:
        print("FAIL", fl)
    return 1 if fails or not table else 0


if __name__ == "__main__":
    sys.exit(main())
