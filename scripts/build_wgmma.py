"""Build the sm_90a wgmma int8 GEMM (lowbit/backends/tvm/kernels/cuda_wgmma.cu) into a shared
library that scripts/gpu_check_wgmma.py loads with ctypes, and check what can be checked
without a GPU:

    python scripts/build_wgmma.py [--out .gpu_bundle/wgmma] [--nvcc nvcc]

Writes into --out: libwgmma.so (nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -shared
-Xcompiler -fPIC -Xptxas -v), ptxas.txt (the resource report: registers, stack, spills per
kernel), cuda_wgmma.ptx (the same source compiled to PTX) and build.json (the parsed report).
Fails (exit 1, or BuildError from build()) when ptxas reports spills or a stack frame, warns
that setmaxnreg was ignored (C7508) or that wgmmas were serialized, when the library holds no
sm_90 machine code built for sm_90a, when a kernel's register count is not its launch-bounds
cap (the setmaxnreg split assumes it), or when the PTX lacks wgmma.mma_async / setmaxnreg /
cp.async.bulk.tensor. Plain Python (no TVM, no torch): the GPU machine can run it too.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "lowbit" / "backends" / "tvm" / "kernels" / "cuda_wgmma.cu"
ARCH = ["-gencode=arch=compute_90a,code=sm_90a"]


class BuildError(RuntimeError):
    pass


def find_nvcc(nvcc: str | None = None) -> str | None:
    if nvcc:
        return nvcc
    for c in ("nvcc", "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        p = shutil.which(c)
        if p:
            return p
    return None


def elf_cuda_arches(data: bytes) -> list[str]:
    """sm_XX of the CUDA ELF images (cubins) embedded in `data` (same reading as
    lowbit.backends.tvm.pipelines.cuda.fatbin_arches: e_machine 190 = EM_CUDA, the arch in
    bits 8..15 of e_flags for CUDA 12+ cubins, in the low byte for older ones)."""
    arches = set()
    for m in re.finditer(rb"\x7fELF\x02\x01\x01", data):
        head = data[m.start():m.start() + 64]
        if len(head) < 64 or int.from_bytes(head[18:20], "little") != 190:
            continue
        flags = int.from_bytes(head[48:52], "little")
        sm = (flags >> 8) & 0xFF if (flags >> 8) & 0xFF else flags & 0xFF
        arches.add(f"sm_{sm}")
    return sorted(arches)


def parse_ptxas(text: str) -> list[dict]:
    """Per-kernel resource rows from `-Xptxas -v` output."""
    rows: list[dict] = []
    cur: dict | None = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            cur = {"kernel": m.group(1), "arch": m.group(2)}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m:
            cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                       spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
            m2 = re.search(r"(\d+) bytes smem", line)
            cur["static_smem"] = int(m2.group(1)) if m2 else 0
    return rows


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed ({r.returncode}):\n{out}")
    return out


def build(out_dir: str | Path, nvcc: str | None = None, src: Path = SRC,
          shared: bool = True) -> dict:
    """Compile `src` into out_dir (libwgmma.so, or only the cubin with shared=False) and its
    PTX; check spills, arch and the instructions. Returns the report (also build.json)."""
    nvcc = find_nvcc(nvcc)
    if nvcc is None:
        raise BuildError("nvcc not found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = [nvcc, *ARCH, "-O3", "-std=c++17", "-Xptxas", "-v", str(src)]
    if shared:
        binary = out / "libwgmma.so"
        log = _run([*common, "-shared", "-Xcompiler", "-fPIC", "-o", str(binary)])
    else:
        binary = out / "cuda_wgmma.cubin"
        log = _run([*common, "-cubin", "-o", str(binary)])
    (out / "ptxas.txt").write_text(log)
    ptx_path = out / "cuda_wgmma.ptx"
    _run([nvcc, "-gencode=arch=compute_90a,code=compute_90a", "-O3", "-std=c++17", "-ptx",
          str(src), "-o", str(ptx_path)])
    ptx = ptx_path.read_text()
    data = binary.read_bytes()
    kernels = [r for r in parse_ptxas(log) if "wgmma" in r["kernel"]]
    report = {
        "binary": str(binary),
        "nvcc": _run([nvcc, "--version"]).strip().splitlines()[-1],
        "arches": elf_cuda_arches(data),
        # ptxas records its command line in the cubin: tells sm_90a from plain sm_90
        "built_for_sm_90a": b"-arch sm_90a" in data,
        "ptx_wgmma": len(re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k32\.s32\.u8\.s8",
                                    ptx)),
        "ptx_setmaxnreg": len(re.findall(r"setmaxnreg\.(inc|dec)", ptx)),
        "ptx_tma": len(re.findall(r"cp\.async\.bulk\.tensor\.2d", ptx)),
        "kernels": kernels,
        "warnings": [ln for ln in log.splitlines() if "warning" in ln.lower()],
    }
    if shared:   # host-only queries, no CUDA call: fine without a GPU
        try:
            lib = ctypes.CDLL(str(binary))
            lib.lowbit_wgmma_config_name.restype = ctypes.c_char_p
            report["configs"] = [
                {"name": lib.lowbit_wgmma_config_name(i).decode(),
                 "dynamic_smem": lib.lowbit_wgmma_config_smem(i)}
                for i in range(lib.lowbit_wgmma_num_configs())]
        except OSError as e:
            report["configs"] = f"not loadable here: {e}"
    (out / "build.json").write_text(json.dumps(report, indent=1))
    problems = []
    if report["arches"] != ["sm_90"] or not report["built_for_sm_90a"]:
        problems.append(f"machine code is {report['arches']}, sm_90a flag "
                        f"{report['built_for_sm_90a']}; expected sm_90a only")
    if not report["ptx_wgmma"]:
        problems.append("no wgmma.mma_async ...s32.u8.s8 in the PTX")
    if not report["ptx_setmaxnreg"] or not report["ptx_tma"]:
        problems.append("setmaxnreg or cp.async.bulk.tensor missing from the PTX")
    if not kernels:
        problems.append("ptxas reported no wgmma kernel")
    for k in kernels:
        if k.get("spill_stores", 1) or k.get("spill_loads", 1) or k.get("stack", 1):
            problems.append(f"{k['kernel']}: stack {k.get('stack')} B, spills "
                            f"{k.get('spill_stores')}/{k.get('spill_loads')} B")
    for k in kernels:
        # setmaxnreg re-balances within the CTA's allocation at launch: ptxas must have taken
        # the __launch_bounds__ cap (168 for 384 threads x 1 CTA, 128 for 256 x 2), else the
        # consumers' setmaxnreg.inc could wait forever for registers that are not there
        m = re.search(r"lowbit_wgmma_u8s8_kernelILi(\d+)E", k["kernel"])
        if m and k.get("registers") != {"128": 168, "64": 128}.get(m.group(1)):
            problems.append(f"{k['kernel']}: {k.get('registers')} registers, not the launch cap")
    for w in report["warnings"]:
        if "C7508" in w or "serializ" in w.lower() or "setmaxnreg" in w.lower():
            problems.append(f"ptxas: {w.strip()}")
    if problems:
        raise BuildError("; ".join(problems))
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / ".gpu_bundle" / "wgmma"))
    ap.add_argument("--nvcc", default=None)
    a = ap.parse_args()
    try:
        rep = build(a.out, a.nvcc)
    except BuildError as e:
        print(f"BUILD FAILED: {e}", file=sys.stderr)
        return 1
    print(f"{rep['binary']}: {rep['arches']} (sm_90a: {rep['built_for_sm_90a']}), {rep['nvcc']}")
    print(f"PTX: {rep['ptx_wgmma']} wgmma.mma_async u8.s8, {rep['ptx_setmaxnreg']} setmaxnreg, "
          f"{rep['ptx_tma']} cp.async.bulk.tensor")
    for k in rep["kernels"]:
        name = re.sub(r"^_ZN3lbw\d+lowbit_wgmma_u8s8_kernelILi(\d+)ELi(\d+)ELi(\d+)E.*",
                      r"BM=\1 BN=\2 stages=\3", k["kernel"])
        print(f"  {name}: {k['registers']} registers, stack {k['stack']} B, spills "
              f"{k['spill_stores']}/{k['spill_loads']} B, static smem {k['static_smem']} B")
    if isinstance(rep.get("configs"), list):
        print("configs: " + ", ".join(f"{c['name']} ({c['dynamic_smem']} B smem)"
                                      for c in rep["configs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
