"""lowbit verify A B: do two saved models compute the same function?

A and B are each an ONNX file (run by onnxruntime on CPU), a torch ExportedProgram saved with
``torch.export.save`` (``.pt2``; its ``module()`` runs) or a Hugging Face model directory
(``config.json`` and weights; loaded in eval mode with the class ``config.architectures`` names,
else ``transformers.AutoModel``, so a task head's ``logits`` survive). A is the reference; each
matched output must satisfy, element-wise::

    |B - A| <= atol + rtol * |A|        (NaN must sit where NaN sits)

Inputs are generated once from --seed and fed to both. Their names, shapes and dtypes come from
the ONNX or .pt2 side (symbolic dimensions: --batch where batch-like, --seq otherwise; fixed
dimensions stay); a Hugging Face model takes them as keyword arguments; two directories get
``input_ids`` and ``attention_mask`` of shape [batch, seq]. Ids are drawn below the vocabulary
size (the embedding table's rows, or the HF config's ``vocab_size``); masks are ones.

Outputs are matched by name where the two sides share names, otherwise by position: ONNX
exporters rename outputs, so HF ``last_hidden_state`` (or ``logits``, the first output) meets the
ONNX model's first output. The report says what was matched with what and lists what was not.

Exit status: 0 every matched output agrees, 1 some output differs, 2 bad input (a missing path,
an unreadable model, inputs the models cannot take), with a message naming the path.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.errors import ConfigError, LowbitError, VerifyError
from lowbit.testing.compare import OutputStats, compare
from lowbit.testing.inputs import DEFAULT_BATCH, DEFAULT_SEQ, InputSpec, input_specs, make_inputs
from lowbit.testing.run import run_model

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "add_arguments", "main", "run", "verify"]

# Two runtimes (onnxruntime vs torch) sum in different orders: on small fp32 outputs the relative
# error reaches ~1e-5 after a few transformer layers, so rtol is looser than DESIGN's 1e-5.
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5

# Which HF config field bounds the values of an index input.
_HF_VOCAB_FIELDS = {"input_ids": "vocab_size", "token_type_ids": "type_vocab_size",
                    "position_ids": "max_position_embeddings"}
_HF_DEFAULT_INPUTS = ("input_ids", "attention_mask")


@dataclasses.dataclass(frozen=True)
class _Model:
    """One side of the comparison: its label (A/B), path, kind and what runs."""

    label: str
    path: Path
    kind: str
    runnable: Any
    config: Any = None

    def __str__(self) -> str:
        return f"{self.label}: {self.path} ({self.kind})"

    def error(self, problem: str) -> VerifyError:
        return VerifyError(f"{self.label}: {self.path}: {problem}")


def _load(label: str, path: Path) -> _Model:
    if not path.exists():
        raise VerifyError(f"{label}: {path}: no such file or directory")
    if path.is_dir():
        return _load_hf(label, path)
    if path.suffix == ".onnx":
        try:
            input_specs(path)  # parses the file: an unreadable one fails here, before running
        except VerifyError as e:
            raise VerifyError(f"{label}: {e}") from e
        return _Model(label, path, "ONNX, run by onnxruntime on CPU", path)
    if path.suffix == ".pt2":
        try:
            module = torch.export.load(path).module()
        except Exception as e:  # torch.export.load raises many types for one meaning
            raise VerifyError(f"{label}: {path}: torch.export.load cannot read it: "
                              f"{type(e).__name__}: {e}") from e
        return _Model(label, path, "torch.export program", module)
    raise VerifyError(f"{label}: {path}: unknown model format: expected a .onnx file, a .pt2 "
                      f"file from torch.export.save, or a Hugging Face model directory")


def _load_hf(label: str, path: Path) -> _Model:
    from lowbit.hf import HFLoadError, load_hf_model

    try:
        model, config = load_hf_model(path)
    except HFLoadError as e:
        raise VerifyError(f"{label}: {e}") from e
    return _Model(label, path, f"Hugging Face directory, {type(model).__name__}", model, config)


def _input_specs(a: _Model, b: _Model) -> list[InputSpec]:
    declared = {m.label: input_specs(m.runnable) for m in (a, b) if m.config is None}
    names = {label: [s.name for s in specs] for label, specs in declared.items()}
    if len(declared) == 2 and set(names["A"]) != set(names["B"]):
        raise VerifyError(f"A takes inputs {names['A']}, B takes {names['B']}: lowbit verify "
                          f"feeds both the same inputs")
    hf = [m for m in (a, b) if m.config is not None]
    if declared:
        specs = next(iter(declared.values()))
    else:
        specs = [InputSpec(name, ("batch", "seq"), torch.int64) for name in _HF_DEFAULT_INPUTS]
    for model in hf:
        _check_accepts(model, [s.name for s in specs])
    return [_with_vocab(s, hf[0].config) if hf else s for s in specs]


def _check_accepts(model: _Model, names: Sequence[str]) -> None:
    params = inspect.signature(model.runnable.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [n for n in names if n not in params]
    if missing:
        raise model.error(f"its forward() takes no input named {missing} "
                          f"(it takes {list(params)})")


def _with_vocab(spec: InputSpec, config: Any) -> InputSpec:
    vocab = getattr(config, _HF_VOCAB_FIELDS.get(spec.name, ""), None)
    return spec if spec.vocab is not None or vocab is None else dataclasses.replace(spec, vocab=vocab)


def _run(model: _Model, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    try:
        return run_model(model.runnable, inputs)
    except VerifyError as e:
        raise model.error(str(e)) from e
    except Exception as e:  # a model that cannot run on these inputs is bad input, not a mismatch
        raise model.error(f"failed to run on the inputs: {type(e).__name__}: {e}") from e


def _match_outputs(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[tuple[str, str]], str]:
    common = [n for n in a if n in b]
    if common:
        return [(n, n) for n in common], "by name"
    return list(zip(a, b)), "by position (the output names differ)"


def verify(a_path: Path, b_path: Path, *, rtol: float, atol: float, seed: int = 0,
           batch: int = DEFAULT_BATCH, seq: int = DEFAULT_SEQ) -> tuple[bool, str]:
    """Compare two saved models; return (every matched output agrees, the report).

    Raises:
        VerifyError: a model cannot be loaded or fed, or the two share no output.
    """
    a, b = _load("A", a_path), _load("B", b_path)
    inputs = make_inputs(_input_specs(a, b), seed=seed, batch=batch, seq=seq)
    outs_a, outs_b = _run(a, inputs), _run(b, inputs)
    pairs, how = _match_outputs(outs_a, outs_b)
    if not pairs:
        raise VerifyError(f"A has outputs {list(outs_a)}, B has {list(outs_b)}: nothing to compare")
    stats = [compare(outs_a[na], outs_b[nb], rtol=rtol, atol=atol, name=f"A.{na} <-> B.{nb}")
             for na, nb in pairs]
    return all(s.passed for s in stats), _report(a, b, inputs, pairs, how, stats, rtol, atol,
                                                 unmatched=_unmatched(outs_a, outs_b, pairs))


def _unmatched(outs_a: dict, outs_b: dict, pairs: list[tuple[str, str]]) -> list[str]:
    used_a, used_b = {na for na, _ in pairs}, {nb for _, nb in pairs}
    return ([f"A.{n}" for n in outs_a if n not in used_a]
            + [f"B.{n}" for n in outs_b if n not in used_b])


def _report(a: _Model, b: _Model, inputs: dict[str, torch.Tensor], pairs: list[tuple[str, str]],
            how: str, stats: list[OutputStats], rtol: float, atol: float, *,
            unmatched: list[str]) -> str:
    feed = ", ".join(f"{n} {str(t.dtype).removeprefix('torch.')} {list(t.shape)}"
                     for n, t in inputs.items())
    matched = ", ".join(f"A.{na} <-> B.{nb}" for na, nb in pairs)
    failed = sum(not s.passed for s in stats)
    verdict = (f"PASS: {len(stats)} output(s) agree" if not failed
               else f"FAIL: {failed} of {len(stats)} output(s) differ")
    return "\n".join([
        "lowbit verify", f"  {a}", f"  {b}", f"  inputs: {feed}",
        f"  outputs matched {how}: {matched}",
        *([f"  not compared: {', '.join(unmatched)}"] if unmatched else []),
        f"  rule: |B - A| <= atol + rtol * |A|  (rtol={rtol:g}, atol={atol:g})",
        *(f"  {s}" for s in stats), verdict,
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register verify's arguments on ``parser`` (the ``lowbit verify`` subcommand parser)."""
    parser.add_argument("a", metavar="A", type=Path,
                        help="reference model: an .onnx file, a .pt2 file or a HF model directory")
    parser.add_argument("b", metavar="B", type=Path, help="the model checked against A (same kinds)")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"relative tolerance (default {DEFAULT_RTOL:g})")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help=f"size of symbolic batch dimensions (default {DEFAULT_BATCH})")
    parser.add_argument("--seq", type=int, default=DEFAULT_SEQ,
                        help=f"size of other symbolic dimensions (default {DEFAULT_SEQ})")


def run(args: argparse.Namespace) -> int:
    """Run verify on parsed arguments; print the report; return the exit status (0, 1 or 2)."""
    try:
        _check_args(args)
        passed, report = verify(args.a, args.b, rtol=args.rtol, atol=args.atol, seed=args.seed,
                                batch=args.batch, seq=args.seq)
    except LowbitError as e:
        print(f"lowbit verify: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0 if passed else 1


def _check_args(args: argparse.Namespace) -> None:
    for name in ("rtol", "atol"):
        if not 0 <= getattr(args, name) < float("inf"):
            raise ConfigError(f"--{name} must be a finite number >= 0, got {getattr(args, name)}")
    for name in ("batch", "seq"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")


def main(argv: list[str] | None = None) -> int:
    """``lowbit verify`` as a standalone program."""
    parser = argparse.ArgumentParser(prog="lowbit verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
