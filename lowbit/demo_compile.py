"""The TVM stage of ``lowbit demo``: compile the quantized MiniLM for this CPU (integer
kernels, a small tuning budget whose results persist in a database, so a second run tunes
nothing), check it against the FX graph and float, save it, and time it against torch fp32 and
onnxruntime running the same QDQ model, at batch 1 with the same thread count. The module is
saved beside the QDQ file, in ``tvm-cpu/``."""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch

from lowbit.errors import ConfigError
from lowbit.models.minilm import mean_pool
from lowbit.progress import bar as progress_bar
from lowbit.timing import available_cores, load_average, measure, time_onnxruntime

__all__ = ["DEFAULT_TRIALS", "add_arguments", "check_arguments", "compile_stage"]

DEFAULT_TRIALS = 64  # a few minutes of MetaSchedule on 2 cores, once per database


def add_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--tune-trials", type=int, default=DEFAULT_TRIALS,
                   help=f"MetaSchedule trials for kernels the tuning database has no record "
                        f"of (default {DEFAULT_TRIALS}; 0: default schedules plus what the "
                        f"database holds)")
    d.add_argument("--tuning-db", type=Path, default=None,
                   help="tuning database folder (default: <lowbit cache>/tvm-tuning)")
    d.add_argument("--threads", type=int, default=None,
                   help="threads for torch, onnxruntime and TVM (default: the cores this "
                        "process may use)")
    d.add_argument("--iters", type=int, default=30, help="timed runs per engine (default 30)")
    d.add_argument("--no-compile", action="store_true", help="skip the TVM stage")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad values before the long stages run (ConfigError: exit code 2)."""
    for name, low in (("tune_trials", 0), ("iters", 1), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6


def compile_stage(args: argparse.Namespace, model, gm, qgm, onnx_path: Path,
                  sentences: list[dict], step) -> None:
    """``sentences``: batch-1 inputs (the first fixes the compiled shape)."""
    import lowbit
    from lowbit import recipes
    from lowbit.backends.tvm.target import host_target
    from lowbit.models.cache import cache_dir

    name = recipes.get(args.recipe).name
    threads = args.threads or available_cores()
    db = args.tuning_db or cache_dir() / "tvm-tuning"
    example = sentences[0]
    seq = example["input_ids"].shape[1]
    t = step(f"compile for this CPU with TVM (batch 1, seq {seq}, {threads} thread(s); tuning "
             f"budget {args.tune_trials} trials, database {db})")
    tune = lowbit.Tune(trials=args.tune_trials, db=db)
    mod = lowbit.compile(qgm, target=host_target(threads), tune=tune, example_inputs=example)
    kinds = [k for _, k in mod.meta["lowering"]]
    n_int8 = sum(k.startswith('linear_u8s8') for k in kinds)
    family = mod.meta.get("kernel_family")
    print(f"compiled in {time.perf_counter() - t:.1f} s: "
          f"{n_int8} int8 GEMM kernels ({kinds.count('linear_u8s8_q')} with a requantizing "
          f"epilogue), {kinds.count('linear_w4a16')} int4 GEMM kernels, "
          f"{len(mod.meta['tuned_kernels'])} kernel(s) on tuned schedules")
    print(f"  int8 kernel family: {family or 'none'}")
    for reason, count in collections.Counter(k for k in kinds if k.startswith("fp32")).items():
        print(f"  {count} linear(s) left in fp32: {reason[6:]}")
    engine = (f"integer kernels, {family.split(' ')[0]}" if n_int8
              else "fp32 kernels: no int8 on this target")

    cos_f, cos_q, worst = [], [], 0.0
    with torch.no_grad():
        for b in progress_bar(sentences, desc="evaluating (TVM)", unit="sentence"):
            ref = gm(**b).last_hidden_state
            fxq = qgm(**b).last_hidden_state
            got = mod(**b)[0]                      # torch in, torch out
            e_ref, e_fx, e_tvm = (mean_pool(x, b["attention_mask"]) for x in (ref, fxq, got))
            cos_f.append(torch.cosine_similarity(e_ref, e_tvm))
            cos_q.append(torch.cosine_similarity(e_fx, e_tvm))
            worst = max(worst, float((got - fxq).abs().max()))
    cos_f, cos_q = torch.cat(cos_f), torch.cat(cos_q)
    print(f"{len(cos_f)} held-out sentences, TVM integer module:")
    print(f"  sentence-embedding cosine vs float   : mean {cos_f.mean():.4f}  min {cos_f.min():.4f}")
    print(f"  sentence-embedding cosine vs FX graph: mean {cos_q.mean():.5f}  min "
          f"{cos_q.min():.5f}  (max abs diff of hidden states {worst:.3g})")

    saved = mod.save(onnx_path.parent / "tvm-cpu")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {saved}/: {_folder_mb(saved):.1f} MB (library + int8 weights; fp32 "
          f"parameters {n_params * 4 / 1e6:.1f} MB); lowbit.load({str(saved)!r}) runs it")

    step(f"latency, batch 1, seq {seq}, {threads} thread(s), median of {args.iters} runs")
    torch.set_num_threads(threads)
    rows = []
    with torch.no_grad():
        rows.append(("torch fp32 (eager)", measure(lambda: model(**example), args.iters)))
    rows.append((f"onnxruntime, same QDQ {name} model",
                 time_onnxruntime(onnx_path, threads, example, args.iters)))
    rows.append((f"lowbit TVM {name} ({engine})",
                 measure(lambda: mod(**example), args.iters)))
    base = rows[0][1].median_ms
    for name, lat in rows:
        print(f"  {name:34s} {lat}   {base / lat.median_ms:5.2f}x torch")
    load = load_average()
    if load is not None:
        print(f"  (1-minute load average {load:.2f}; a busy machine moves every number)")
