"""Build everything the GPU check needs, here (no GPU): the runtime-only TVM bundle, CUDA
kernel modules, and W8A8 models compiled for sm_90 with their CPU references.

    python scripts/gpu_prepare.py [--out .gpu_bundle] [--skip-models]

Writes into ``--out`` (git-ignored, carried to the GPU machine):
    tvm_rt.tar.gz        the tvm package without its compiler library (runtime only)
    whl/                 the cp312 apache-tvm-ffi wheel (put there by hand: see docs/gpu.md)
    kernels/*.so         one CUDA module per kernel shape (``main``), kernels.json lists them
    bcq/*.so             the BCQ LUT GEMV per shape (``main``), bcq.json lists them
                         (checked and timed by scripts/gpu_check_bcq.py)
    words/*.so           the tiered LM head of per-word plans on Gemma's 262144 x 640 table,
                         one BCQ GEMV per tier, and its W4A16 GEMV (scripts/gpu_check_words.py)
    models/<name>_b<B>/  saved CompiledModules (sm_90, CUDA graphs on) + io.npz: inputs, the
                         CPU TVM module's output, the FX fake-quant output and torch fp32
    models/<name>@<arch>[-nograph]_b<B>/  with --e2e: the sm_90a (wgmma) and graph-less
                         variants of the same quantized model (io.npz and params shared)
    models/params_<name>.bin   shared by every batch size of one model (saved once)

The real MiniLM's word-embedding table is cut to the rows the test sentences use (ids
remapped; the function on those inputs is unchanged, checked here) so that the bundle fits the
device machine's 64 MiB transfer limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INT8_SHAPES = [(n, k) for n, k in ((768, 768), (3072, 768), (768, 3072),
                                   (384, 384), (1536, 384), (384, 1536))]
INT8_MS = (128, 1024, 4096)
INT8_CHECK = [(7, 100, 48), (128, 384, 384), (200, 1536, 384), (1000, 200, 64)]
INT4_GEMV = [(768, 768), (3072, 768), (768, 3072), (4096, 4096), (8192, 8192), (16384, 8192),
             (28672, 8192), (8192, 28672)]
INT4_CHECK = [(1, 768, 768, 128), (2, 4096, 4096, 128), (4, 384, 1536, 32), (100, 384, 384, 128),
              (4096, 1536, 384, 128)]
# BCQ LUT GEMV (kernels/cuda.py shell_bcq): (M, N, K, q, group, offset); "bench" rows are timed
BCQ_BENCH = [(1, n, k, q, 128, False) for n, k in ((4096, 4096), (4096, 14336), (8192, 28672))
             for q in (3, 4)]
BCQ_CHECK = [(2, 4096, 4096, 3, 128, True), (4, 100, 256, 2, 32, True),
             (3, 384, 1536, 4, 1536, False), (1, 1024, 1024, 1, 8, True),
             (1, 1000, 2304, 4, 128, False), (2, 512, 768, 3, 64, False),
             (1, 384, 1536, 2, 1536, True)]
BCQ_SWEEP = [{"table": 16, "kc": kc, "warps": w} for kc in (512, 1024)
             for w in (4, 8)]                              # timed on the BCQ_BENCH shapes
BATCHES = (1, 8, 32)
SEQ = 128


def bundle(out: Path) -> None:
    import tvm

    src = Path(tvm.__file__).parent
    skip = {"libtvm_compiler.so", "3rdparty", "include", "src", "web", "__pycache__"}

    def keep(info: tarfile.TarInfo):
        return None if any(p in skip for p in Path(info.name).parts) else info

    with tarfile.open(out / "tvm_rt.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="tvm", filter=keep)
    print(f"tvm_rt.tar.gz {os.path.getsize(out / 'tvm_rt.tar.gz') / 2**20:.1f} MiB")


def kernels(out: Path, db: str | None = None) -> None:
    import contextlib

    from lowbit.backends.tvm.kernels.cuda import (
        kernel_configs,
        read_config_table,
    )
    from lowbit.backends.tvm.target import cuda_target

    with kernel_configs(read_config_table(db)) if db else contextlib.nullcontext():
        _kernels(out, cuda_target())


def _kernels(out: Path, tgt) -> None:
    from lowbit.backends.tvm.kernels.cuda import shell_u8s8, shell_w4a16
    from lowbit.backends.tvm.pipelines.cuda import build_kernel

    folder = out / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    index = []

    def add(kind, role, shape, func):
        name = f"{kind}_{'_'.join(map(str, shape))}"
        build_kernel(func, tgt).export_library(str(folder / f"{name}.so"))
        index.append({"kind": kind, "role": role, "shape": list(shape), "file": f"{name}.so",
                      "config": str(func.attrs.get("lowbit.config", ""))})

    for m, n, k in INT8_CHECK:
        add("u8s8", "check", (m, n, k), shell_u8s8(m, n, k))
    for n, k in INT8_SHAPES:
        for m in INT8_MS:
            add("u8s8", "bench", (m, n, k), shell_u8s8(m, n, k))
    for m, n, k, g in INT4_CHECK:
        add("w4a16", "check", (m, n, k, g), shell_w4a16(m, n, k, g))
    for n, k in INT4_GEMV:
        add("w4a16", "bench", (1, n, k, 128), shell_w4a16(1, n, k, 128))
    (folder / "kernels.json").write_text(json.dumps(index, indent=1))
    print(f"{len(index)} kernel modules")


def bcq_kernels(out: Path) -> None:
    """One CUDA module per BCQ GEMV shape (``main``) in out/bcq, listed in bcq.json."""
    from lowbit.backends.tvm.kernels.bcq import block_width
    from lowbit.backends.tvm.kernels.cuda import shell_bcq
    from lowbit.backends.tvm.pipelines.cuda import build_kernel
    from lowbit.backends.tvm.target import cuda_target

    folder, tgt, index = out / "bcq", cuda_target(), []
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [("check", c, {"table": 16, "prefetch": pf}) for c in BCQ_CHECK for pf in (False, True)]
    jobs += [("check", c, {"table": 256}) for c in BCQ_CHECK if c[0] <= 2]
    jobs += [("bench", c, {}) for c in BCQ_BENCH]                   # the default configuration
    jobs += [("sweep", c, v) for c in BCQ_BENCH for v in BCQ_SWEEP]
    for role, (m, n, k, q, g, off), opts in jobs:
        func = shell_bcq(m, n, k, q, g, off, block_width(n), **opts)
        cfg = str(func.attrs["lowbit.config"])
        name = f"bcq_{m}_{n}_{k}_q{q}_g{g}_o{int(off)}_{cfg}"
        if any(e["file"] == f"{name}.so" for e in index):
            continue
        build_kernel(func, tgt).export_library(str(folder / f"{name}.so"))
        index.append({"role": role, "shape": [m, n, k, q, g, int(off)],
                      "width": block_width(n), "file": f"{name}.so", "config": cfg})
    (folder / "bcq.json").write_text(json.dumps(index, indent=1))
    print(f"{len(index)} BCQ kernel modules")


WORD_VOCAB, WORD_DIM = 262144, 640          # Gemma-3-270M's tied table


def word_head_kernels(out: Path) -> None:
    """The tiered LM head of per-word plans on Gemma's table (one BCQ GEMV per tier, alphas per
    row) and the W4A16 GEMV of the same table, in out/words (scripts/gpu_check_words.py)."""
    import torch

    from lowbit.backends.tvm.kernels.bcq import block_width
    from lowbit.backends.tvm.kernels.cuda import shell_bcq, shell_w4a16
    from lowbit.backends.tvm.pipelines.cuda import build_kernel
    from lowbit.backends.tvm.target import cuda_target
    from lowbit.quant.word_bits import plan_by_rule, plan_for_budget

    folder, tgt = out / "words", cuda_target()
    folder.mkdir(parents=True, exist_ok=True)
    counts = (10**7 / torch.arange(1, WORD_VOCAB + 1)).long() + 1   # Zipf, every id seen
    plans = {"rule_b4_r2": plan_by_rule(counts, 4, 2.0),
             **{f"budget_{b}": plan_for_budget(counts, b) for b in (1.5, 2.0, 2.5, 3.0)}}
    index = {"vocab": WORD_VOCAB, "dim": WORD_DIM, "plans": {}, "w4a16": None}
    for name, plan in plans.items():
        tiers = []
        for q, n in zip(plan.bits, plan.tier_sizes):
            if n == 0:
                continue
            f = f"tier_{n}_q{q}.so"
            if not (folder / f).exists():
                func = shell_bcq(1, n, WORD_DIM, q, WORD_DIM, False, block_width(n))
                build_kernel(func, tgt).export_library(str(folder / f))
            tiers.append({"q": q, "n": n, "width": block_width(n), "file": f})
        index["plans"][name] = {"average_bits": plan.average_bits, "tiers": tiers}
    build_kernel(shell_w4a16(1, WORD_VOCAB, WORD_DIM, 128), tgt).export_library(
        str(folder / "w4a16.so"))
    index["w4a16"] = {"group": 128, "file": "w4a16.so"}
    (folder / "words.json").write_text(json.dumps(index, indent=1))
    print(f"{sum(len(p['tiers']) for p in index['plans'].values())} tier modules, "
          f"{len(plans)} plans")


def _bert_base_layer():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                     intermediate_size=3072, vocab_size=1024)
    return BertModel(cfg).eval()


def _minilm_cut(texts_n: int):
    """MiniLM with the embedding cut to the used rows; returns model, batches, full model."""
    import copy

    import torch

    from lowbit.data import read_sst2, text_batches
    from lowbit.models import load_minilm

    full, tok = load_minilm(quiet=True)
    texts, _ = read_sst2("dev")
    batches = {b: next(iter(text_batches(tok, texts[:b], batch_size=b, seq_len=SEQ)))
               for b in BATCHES}
    calib = list(text_batches(tok, texts[100:116], batch_size=1, seq_len=SEQ))
    used = sorted({int(i) for x in [*batches.values(), *calib] for i in x["input_ids"].flatten()})
    remap = torch.full((full.config.vocab_size,), -1, dtype=torch.long)
    remap[torch.tensor(used)] = torch.arange(len(used))
    cut = copy.deepcopy(full)
    w = full.embeddings.word_embeddings.weight.detach()[torch.tensor(used)].clone()
    cut.embeddings.word_embeddings = torch.nn.Embedding.from_pretrained(w, freeze=True)
    cut.config.vocab_size = len(used)

    def re(x):
        return {"input_ids": remap[x["input_ids"]], "attention_mask": x["attention_mask"]}

    with torch.no_grad():
        for x in batches.values():
            a = full(**x).last_hidden_state
            c = cut(**re(x)).last_hidden_state
            assert torch.equal(a, c), "cut embedding changed the model"
    return cut, {b: re(x) for b, x in batches.items()}, [re(x) for x in calib]


def _rebatch(calib: list[dict], b: int) -> list[dict]:
    """The calibration rows in batches of ``b`` (rows repeated to fill the last batch): the
    min-max ranges, hence the weights and params.bin, are the same for every batch size."""
    import torch

    rows = {k: torch.cat([c[k] for c in calib]) for k in calib[0]}
    n = rows["input_ids"].shape[0]
    idx = torch.arange(-(-n // b) * b) % n
    return [{k: v[idx[i:i + b]] for k, v in rows.items()} for i in range(0, len(idx), b)]


# compiled variants: (arch, cuda_graph); the first is the plain folder ``<name>_b<B>`` (with
# io.npz and params_<name>.bin), the others ``<name>@<arch>[-nograph]_b<B>`` beside it
VARIANTS = (("sm_90", True),)
E2E_VARIANTS = (("sm_90", True), ("sm_90", False), ("sm_90a", True), ("sm_90a", False))


def variant_folder(name: str, b: int, arch: str, graph: bool) -> str:
    """The folder of one compiled variant (``VARIANTS[0]`` gets the plain name)."""
    if (arch, graph) == E2E_VARIANTS[0]:
        return f"{name}_b{b}"
    return f"{name}@{arch}{'' if graph else '-nograph'}_b{b}"


def models(out: Path, which: list[str], db: str | None = None,
           variants: tuple = VARIANTS, ref_rows: int | None = None) -> None:
    """Each model at each batch size: captured and quantized once, compiled for every
    (arch, cuda_graph) of ``variants``; references (io.npz) in the plain folder only.
    ``ref_rows``: keep only the first rows of the references of larger batches (they are
    independent of the batch; keeps the bundle under the transfer limit)."""
    import torch

    import lowbit
    from lowbit.backends.tvm.kernels.cuda import CALLED
    from lowbit.backends.tvm.pipelines.cuda import fatbin_arches, uses_cuda_graph

    folder = out / "models"
    folder.mkdir(parents=True, exist_ok=True)
    for name in which:
        if name == "minilm":
            model, batches, calib = _minilm_cut(max(BATCHES))
        else:
            model = _bert_base_layer()
            g = torch.Generator().manual_seed(1)
            batches = {b: {"input_ids": torch.randint(0, 1024, (b, SEQ), generator=g),
                           "attention_mask": torch.ones(b, SEQ, dtype=torch.long)}
                       for b in BATCHES}
            calib = [{k: v[:1] for k, v in batches[8].items()}]
        for b, x in batches.items():
            gm = lowbit.capture(model, x)
            q = lowbit.quantize(gm, lowbit.recipes.W8A8, calibration=_rebatch(calib, b),
                                progress=False)
            tune = lowbit.Tune(trials=0, db=db) if db else None   # CUDA: kernel configs only
            base = folder / f"{name}_b{b}"
            io_keep = (base / "io.npz").read_bytes() if (base / "io.npz").exists() else None
            for arch, graph in variants:
                t0 = time.perf_counter()
                CALLED.clear()
                mod = lowbit.compile(q, target={"kind": "cuda", "arch": arch}, tune=tune,
                                     progress=False, cuda_graph=graph)
                # the int8 linears must run lowbit's tensor-core kernels, not dlight's fallback
                want = "lowbit_wgmma_u8s8_" if arch == "sm_90a" else "lowbit_gemm_u8s8_"
                assert any(c.startswith(want) for c in CALLED), sorted(CALLED)
                assert uses_cuda_graph(mod.executable) == graph, (arch, graph)
                t_cuda = time.perf_counter() - t0
                d = mod.save(folder / variant_folder(name, b, arch, graph))  # empties it
                want_arch = "sm_90" if arch == "sm_90a" else arch   # sm_90a: sm_90 ELF flags
                assert fatbin_arches(d / "model.so") == [want_arch], fatbin_arches(d / "model.so")
                pfile = folder / f"params_{name}.bin"
                if pfile.exists():
                    assert pfile.read_bytes() == (d / "params.bin").read_bytes()
                else:
                    shutil.move(d / "params.bin", pfile)
                (d / "params.bin").unlink(missing_ok=True)
                print(f"{name} b{b} {arch} cuda_graph={graph}: compiled in {t_cuda:.1f} s",
                      flush=True)
            if io_keep is not None:  # references of an earlier run (same inputs, same q)
                (base / "io.npz").write_bytes(io_keep)
                continue
            feed = {k: v.numpy() for k, v in x.items()}
            with torch.no_grad():
                fp32 = model(**x).last_hidden_state.numpy()
                fx = q(**x)
                fx = (fx[0] if isinstance(fx, (tuple, list)) else fx.last_hidden_state).numpy()
            rows = slice(None) if ref_rows is None else slice(0, ref_rows)
            io = {"input_ids": feed["input_ids"], "attention_mask": feed["attention_mask"],
                  "fp32": fp32[rows], "fx": fx[rows]}
            if b <= 8:  # the CPU TVM module (2 cores here: batch 32 is slow to build and run)
                cpu = lowbit.compile(q, target="cpu", progress=False)
                io["cpu"] = np.asarray(cpu(**feed)[0])[rows]
            np.savez(base / "io.npz", **io)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / ".gpu_bundle"))
    p.add_argument("--models", default="minilm,bert_base_layer")
    p.add_argument("--skip", default="", help="comma list of: bundle, kernels, models, bcq, "
                   "words")
    p.add_argument("--db", default=None, help="tuning database folder with cuda_kernels.json "
                   "(scripts/gpu_tune.py record)")
    p.add_argument("--e2e", action="store_true", help="models: every variant of E2E_VARIANTS "
                   "(sm_90 / sm_90a, with and without CUDA graphs), references of batch > 8 "
                   "cut to their first 8 rows (scripts/gpu_check_e2e.py)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    if "bundle" not in skip:
        bundle(out)
    if "kernels" not in skip:
        kernels(out, args.db)
    if "bcq" not in skip:
        bcq_kernels(out)
    if "words" not in skip:
        word_head_kernels(out)
    if "models" not in skip:
        models(out, [m for m in args.models.split(",") if m], args.db,
               E2E_VARIANTS if args.e2e else VARIANTS, 8 if args.e2e else None)


if __name__ == "__main__":
    main()
