"""``lowbit quantize``: a Hugging Face model directory (or an ONNX file) -> QDQ ONNX.

    lowbit quantize ~/.cache/lowbit/all-MiniLM-L6-v2 --recipe W8A8 -o minilm.w8a8.onnx \\
        --calibration ../shared/data/sst2_train.tsv --num-calibration 256

Both paths run ``lowbit.quantize``'s pass pipeline; ``-v`` logs its report (per pass: modified
or not, time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lowbit import recipes
from lowbit.errors import ConfigError

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="Hugging Face model directory, or a .onnx file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .onnx path")
    p.add_argument("--recipe", default="W8A8",
                   help=f"built-in recipe: {', '.join(sorted(recipes.BUILTIN))} (default W8A8)")
    p.add_argument("--calibration", default="pydoc",
                   help="calibration text: a .txt file (one text per line), a .tsv with a "
                        "'text' column, or 'pydoc' for English from the Python docs (default)")
    p.add_argument("--num-calibration", type=int, default=128,
                   help="number of calibration texts (default 128)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration batch size")
    p.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging, with the pass pipeline's report (as lowbit -v)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="ONNX input: a folder with the model's tokenizer files (default: the "
                        "ONNX file's own folder)")


def _texts(args: argparse.Namespace) -> list[str]:
    from lowbit.data import pydoc_sentences, read_texts

    if args.num_calibration < 1:
        raise ConfigError(f"--num-calibration must be >= 1, got {args.num_calibration}")
    if args.calibration == "pydoc":
        return pydoc_sentences(args.num_calibration)
    return read_texts(args.calibration, limit=args.num_calibration)


def _from_hf(args: argparse.Namespace, recipe) -> Path:
    from lowbit.export.onnx import export_onnx
    from lowbit.capture import capture
    from lowbit.data import text_batches
    from lowbit.hf import load_hf_model, load_hf_tokenizer
    from lowbit.quantize import quantize

    model, _ = load_hf_model(args.model)
    tok = load_hf_tokenizer(args.model)
    texts = _texts(args)
    keys = ("input_ids", "attention_mask")
    example = next(text_batches(tok, texts[:args.batch_size], batch_size=args.batch_size,
                                seq_len=args.seq, keys=keys))
    print(f"[lowbit] capturing {type(model).__name__} (batch {args.batch_size}, seq {args.seq})",
          file=sys.stderr)
    gm = capture(model, example, dynamic=True)
    batches = text_batches(tok, texts, batch_size=args.batch_size, seq_len=args.seq, keys=keys)
    qgm = quantize(gm, recipe, calibration=batches)
    return export_onnx(qgm, args.output, ((), example))


def _from_onnx(args: argparse.Namespace, recipe) -> Path:
    from lowbit.data import text_batches
    from lowbit.hf import HFLoadError, load_hf_tokenizer
    from lowbit.onnx_quantize import quantize_onnx_file

    batches = None
    if recipe.activation is not None and not recipe.activation.dynamic:
        folder = args.tokenizer or args.model.parent
        try:
            tok = load_hf_tokenizer(folder)
        except HFLoadError as e:
            raise ConfigError(f"recipe {recipe.name} needs calibration text, and tokenizing it "
                              f"needs the model's tokenizer: pass --tokenizer DIR ({e})") from e
        # keys the model does not take (token_type_ids) are dropped by the ONNX calibrator
        batches = text_batches(tok, _texts(args), batch_size=args.batch_size, seq_len=args.seq,
                               keys=("input_ids", "attention_mask", "token_type_ids"))
    return quantize_onnx_file(args.model, args.output, recipe, batches)


def run(args: argparse.Namespace) -> int:
    recipe = recipes.get(args.recipe)
    if not args.model.exists():
        raise ConfigError(f"model not found: {args.model}")
    if args.output.suffix != ".onnx":
        raise ConfigError(f"--output must end in .onnx, got {args.output}")
    t0 = time.perf_counter()
    if args.model.suffix == ".onnx":
        out = _from_onnx(args, recipe)
    else:
        out = _from_hf(args, recipe)
    data = out.with_name(out.name + ".data")  # external data, when the model carries it
    size = (out.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 1e6
    extra = f" with {data.name}" if data.exists() else ""
    print(f"wrote {out}{extra} ({size:.1f} MB, recipe {recipe.name}) in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0
