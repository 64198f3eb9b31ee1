"""``lowbit quantize``: a Hugging Face model folder (or a float ONNX file) -> QDQ ONNX.

Both paths run ``lowbit.quantize``'s pass pipeline; ``-v`` logs its report (per pass: modified
or not, time). The file goes to ``-o`` (an .onnx path, or a folder that gets
``model.qdq.onnx``), by default ``./lowbit-out/<model>-<recipe>/model.qdq.onnx``.

Refused with one line (exit 2): a model that is already quantized (Q/DQ nodes, lowbit ops or
a recipe in its metadata: quantizing it again would quantize quantized weights), a weight
holding NaN/inf (named), flags below 1, a ``--seq`` beyond the model's positions, and a
``--batch-size`` / ``--seq`` that contradicts a fixed-shape ONNX file (whose shapes are used
when the flags are not given).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from lowbit import recipes
from lowbit.errors import ConfigError, HFLoadError
from lowbit.model_files import (
    batch_and_seq,
    check_positive,
    kind_of,
    onnx_summary,
    out_dir,
    whole_batches,
)

__all__ = ["EXAMPLES", "add_arguments", "add_calibration_arguments", "calibration_texts",
           "hf_seq", "quantize_hf", "run"]

EXAMPLES = """examples:
  lowbit quantize ./bert                      # -> lowbit-out/bert-W8A8/model.qdq.onnx
  lowbit quantize ./bert --recipe W8A8_PEG --calibration sst2_train.tsv -o bert.peg.onnx
  lowbit quantize model.onnx --tokenizer ./bert   # a float ONNX file, text tokenized by ./bert
"""
DEFAULT_SEQ = 128
TEXT_KEYS = ("input_ids", "attention_mask")


def add_calibration_arguments(p: argparse.ArgumentParser, *, recipe_default: str | None = "W8A8"
                              ) -> None:
    """--recipe, --calibration, --num-calibration, --tokenizer (shared by quantize, compile
    and bench)."""
    names = ", ".join(sorted(recipes.BUILTIN))
    p.add_argument("--recipe", default=recipe_default,
                   help=f"built-in recipe: {names} (default {recipe_default or 'W8A8'} for a "
                        f"Hugging Face folder)")
    p.add_argument("--calibration", default="pydoc",
                   help="calibration text: a .txt file (one text per line), a .tsv with a "
                        "'text' column, or 'pydoc' for English from the Python docs (default)")
    p.add_argument("--num-calibration", type=int, default=128,
                   help="number of calibration texts (default 128)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="a folder with the model's tokenizer files (default: the model's own "
                        "folder)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="Hugging Face model folder, or a float .onnx file")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="output .onnx file, or a folder (gets model.qdq.onnx); default "
                        "lowbit-out/<model>-<recipe>/model.qdq.onnx")
    add_calibration_arguments(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help="calibration batch size (default 8, or the ONNX file's fixed batch)")
    p.add_argument("--seq", type=int, default=None,
                   help=f"sequence length (default {DEFAULT_SEQ} or the model's maximum if "
                        f"smaller, or the ONNX file's fixed length)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging, with the pass pipeline's report (as lowbit -v)")


def calibration_texts(args: argparse.Namespace) -> list[str]:
    from lowbit.data import pydoc_sentences, read_texts

    check_positive(num_calibration=args.num_calibration)
    if args.calibration == "pydoc":
        return pydoc_sentences(args.num_calibration)
    return read_texts(args.calibration, limit=args.num_calibration)


def tokenizer(folder: Path, *, why: str) -> Any:
    """The tokenizer in ``folder``, padding with its end token when it has no pad token
    (GPT-2 and Llama tokenizers)."""
    from lowbit.hf import load_hf_tokenizer

    try:
        tok = load_hf_tokenizer(folder)
    except HFLoadError as e:
        raise ConfigError(f"{why}, which needs the model's tokenizer: none in {folder}; pass "
                          f"--tokenizer DIR") from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"the tokenizer in {folder} has neither a pad nor an end token, "
                              f"so text cannot be batched; pass --tokenizer DIR")
        tok.pad_token = tok.eos_token
    return tok


def hf_seq(config: Any, seq: int | None, folder: Path, *, flag: str = "--seq") -> int:
    """``seq``, or the default (128, or fewer if the model has fewer positions); a ``seq`` the
    model cannot take is refused naming the flag."""
    limit = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions")
                  if isinstance(getattr(config, k, None), int)), None)
    if seq is None:
        return min(DEFAULT_SEQ, limit) if limit else DEFAULT_SEQ
    check_positive(**{flag.lstrip("-"): seq})
    if limit and seq > limit:
        raise ConfigError(f"{flag} {seq}: {folder} takes at most {limit} positions (its "
                          f"config's max_position_embeddings); give {flag} {limit} or less")
    return seq


def quantize_hf(folder: Path, recipe: Any, args: argparse.Namespace, *, batch: int,
                seq: int | None, calibration_batch: int = 8) -> tuple[Any, Any, dict]:
    """Load, capture (dynamic shapes) and quantize a Hugging Face folder on calibration text:
    ``(the eager model, the quantized GraphModule, an example batch of [batch, seq])``."""
    from lowbit.capture import capture
    from lowbit.data import text_batches
    from lowbit.hf import load_hf_model
    from lowbit.quantize import quantize

    check_positive(batch=batch, calibration_batch=calibration_batch)
    model, config = load_hf_model(folder)
    seq = hf_seq(config, seq, folder)
    tok = tokenizer(args.tokenizer or folder, why=f"recipe {recipe.name} calibrates on text")
    texts = calibration_texts(args)

    def first(n: int) -> dict:
        return next(text_batches(tok, (texts * n)[:n], batch_size=n, seq_len=seq, keys=TEXT_KEYS))
    # captured at a batch of 2 or more, other than seq: torch.export would fix a batch of 1
    # into the graph, and would give batch and seq one symbol were they equal (duck sizing)
    traced = max(2, calibration_batch)
    traced += traced == seq
    print(f"[lowbit] capturing {type(model).__name__} (batch {traced}, seq {seq}, dynamic)",
          file=sys.stderr)
    gm = capture(model, first(traced), dynamic=True)
    example = first(batch)
    batches = text_batches(tok, texts, batch_size=calibration_batch, seq_len=seq, keys=TEXT_KEYS)
    qgm = quantize(gm, recipe, calibration=batches)
    qgm.meta["lowbit_source_path"] = str(Path(folder).resolve())   # export_onnx records it
    return model, qgm, example


def _from_hf(args: argparse.Namespace, recipe: Any, out: Path) -> Path:
    from lowbit.export.onnx import export_onnx

    batch = 8 if args.batch_size is None else args.batch_size
    _, qgm, example = quantize_hf(args.model, recipe, args, batch=batch, seq=args.seq,
                                  calibration_batch=batch)
    return export_onnx(qgm, out, ((), example))


def refuse_quantized(summary: Any) -> None:
    """Refuse an ONNX file (its ``onnx_summary``) that is quantized already."""
    path = summary.path
    if summary.quantized:
        raise ConfigError(f"{path} is already quantized ({summary.describe_quantization()}); "
                          f"quantizing it again would quantize quantized weights: give the float "
                          f"model, or compile this one as it is: lowbit compile {path}")


def _from_onnx(args: argparse.Namespace, recipe: Any, out: Path) -> Path:
    from lowbit.data import text_batches
    from lowbit.onnx_quantize import quantize_onnx_file

    summary = onnx_summary(args.model)
    refuse_quantized(summary)
    check_positive(batch_size=args.batch_size, seq=args.seq)
    batch, seq = batch_and_seq(summary.specs, args.model, args.batch_size, args.seq,
                               default_batch=8, default_seq=DEFAULT_SEQ, batch_flag="--batch-size")
    batches = None
    if recipe.activation is not None and not recipe.activation.dynamic:
        tok = tokenizer(args.tokenizer or args.model.parent,
                        why=f"recipe {recipe.name} calibrates on text")
        texts = whole_batches(calibration_texts(args), summary.specs, batch, args.model,
                              args.num_calibration)
        # keys the model does not take (token_type_ids) are dropped by the ONNX calibrator
        batches = text_batches(tok, texts, batch_size=batch, seq_len=seq,
                               keys=(*TEXT_KEYS, "token_type_ids"))
    return quantize_onnx_file(args.model, out, recipe, batches)


def output_path(output: Path | None, model: Path, recipe: str) -> Path:
    if output is None:
        return out_dir(model, recipe) / "model.qdq.onnx"
    if output.suffix == ".onnx":
        return output
    if output.suffix:
        raise ConfigError(f"--output {output}: give an .onnx file or a folder")
    return output / "model.qdq.onnx"


def run(args: argparse.Namespace) -> int:
    recipe = recipes.get(args.recipe)
    kind = kind_of(args.model)
    if kind not in ("hf", "onnx"):
        raise ConfigError(f"MODEL {args.model}: lowbit quantize takes a Hugging Face folder or "
                          f"a float .onnx file (a {'.pt2 file' if kind == 'pt2' else 'compiled'}"
                          f" module cannot be quantized here)")
    check_positive(batch_size=args.batch_size, seq=args.seq)
    out = output_path(args.output, args.model, recipe.name)
    t0 = time.perf_counter()
    out = (_from_onnx if kind == "onnx" else _from_hf)(args, recipe, out)
    data = out.with_name(out.name + ".data")  # external data, when the model carries it
    size = (out.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 1e6
    extra = f" with {data.name}" if data.exists() else ""
    print(f"wrote {out}{extra} ({size:.1f} MB, recipe {recipe.name}) in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0
