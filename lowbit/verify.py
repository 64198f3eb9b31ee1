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
exporters may rename outputs (``layer_norm_12``, ``tanh``), so HF ``last_hidden_state`` (or
``logits``, the first output) meets the ONNX model's first output. Each pair is reported under
its model-level name (the Hugging Face / .pt2 side's, else A's), with the other side's name
beside it where it differs; models are named by their paths. Per output the report gives the
cosine similarity, the SQNR of B against A (``10 log10(sum A^2 / sum (B - A)^2)`` dB), the
largest absolute difference, the elements outside the tolerance, and for a failing output its
worst elements; what was not compared is listed.

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

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "EXAMPLES", "add_arguments", "main", "run", "verify"]

EXAMPLES = """examples:
  lowbit verify ./bert model.onnx                   # a Hugging Face folder against its export
  lowbit verify model.pt2 model.onnx --batch 2 --seq 32
  lowbit verify model.onnx model.qdq.onnx --rtol 0.05 --atol 0.05   # a quantized copy
"""

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

    @property
    def name(self) -> str:
        """How the report names it: its path as given."""
        return str(self.path)

    @property
    def has_model_names(self) -> bool:
        """Whether its outputs carry the model's own names (a torch model's fields)."""
        return not self.kind.startswith("ONNX")

    def error(self, problem: str) -> VerifyError:
        return VerifyError(f"{self.path}: {problem}")


def _load(label: str, path: Path) -> _Model:
    if not path.exists():
        raise VerifyError(f"{path}: no such file or directory")
    if path.is_dir():
        return _load_hf(label, path)
    if path.suffix == ".onnx":
        input_specs(path)  # parses the file: an unreadable one fails here, before running
        return _Model(label, path, "ONNX, run by onnxruntime on CPU", path)
    if path.suffix == ".pt2":
        from lowbit.model_files import load_pt2

        try:
            module = load_pt2(path)
        except ConfigError as e:
            raise VerifyError(str(e)) from e
        return _Model(label, path, "torch.export program", module)
    raise VerifyError(f"{path}: unknown model format: expected a .onnx file, a .pt2 "
                      f"file from torch.export.save, or a Hugging Face model directory")


def _load_hf(label: str, path: Path) -> _Model:
    from lowbit.hf import HFLoadError, load_hf_model

    try:
        model, config = load_hf_model(path)
    except HFLoadError as e:
        raise VerifyError(str(e)) from e
    return _Model(label, path, f"Hugging Face directory, {type(model).__name__}", model, config)


def _input_specs(a: _Model, b: _Model) -> list[InputSpec]:
    declared = {m.label: input_specs(m.runnable) for m in (a, b) if m.config is None}
    names = {label: [s.name for s in specs] for label, specs in declared.items()}
    if len(declared) == 2 and set(names["A"]) != set(names["B"]):
        raise VerifyError(f"{a.path} takes inputs {names['A']}, {b.path} takes {names['B']}: "
                          f"lowbit verify feeds both the same inputs")
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
        raise VerifyError(f"{a.path} has outputs {list(outs_a)}, {b.path} has {list(outs_b)}: "
                          f"nothing to compare")
    rows = [_Compared(_pair_name(a, b, na, nb), compare(outs_a[na], outs_b[nb], rtol=rtol,
                                                        atol=atol, name=na),
                      _cosine(outs_a[na], outs_b[nb]), _sqnr(outs_a[na], outs_b[nb]))
            for na, nb in pairs]
    return all(r.stats.passed for r in rows), _report(
        a, b, inputs, how, rows, rtol, atol, unmatched=_unmatched(a, b, outs_a, outs_b, pairs))


@dataclasses.dataclass(frozen=True)
class _Compared:
    """One matched output: its model-level name, element-wise stats, cosine, SQNR (dB)."""

    name: str
    stats: OutputStats
    cosine: float
    sqnr: float


def _pair_name(a: _Model, b: _Model, na: str, nb: str) -> str:
    """The model-level name (the torch side's, else A's), the other side's name beside it."""
    if na == nb:
        return na
    first, other, other_name = (nb, a, na) if b.has_model_names and not a.has_model_names \
        else (na, b, nb)
    return f"{first} ({other.name}: {other_name})"


def _cosine(ref: np.ndarray, test: np.ndarray) -> float:
    x, y = (np.asarray(v, dtype=np.float64).ravel() for v in (ref, test))
    if x.shape != y.shape:
        return float("nan")
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        return 1.0 if nx == ny else 0.0
    return float(np.dot(x, y) / (nx * ny))


def _sqnr(ref: np.ndarray, test: np.ndarray) -> float:
    from lowbit.testing.compare import sqnr

    return sqnr(ref, test) if np.shape(ref) == np.shape(test) else float("nan")


def _unmatched(a: _Model, b: _Model, outs_a: dict, outs_b: dict,
               pairs: list[tuple[str, str]]) -> list[str]:
    used_a, used_b = {na for na, _ in pairs}, {nb for _, nb in pairs}
    return ([f"{n} ({a.name})" for n in outs_a if n not in used_a]
            + [f"{n} ({b.name})" for n in outs_b if n not in used_b])


def _row(r: _Compared, a: _Model, b: _Model, rtol: float, atol: float) -> list[str]:
    s = r.stats
    if s.shape != s.after_shape:
        return [(f"  {r.name}: shape {list(s.shape)} in {a.name}, {list(s.after_shape)} in "
                f"{b.name}  FAIL")]
    head = (f"  {r.name}: shape {list(s.shape)}  cosine {r.cosine:.6f}  SQNR {r.sqnr:.1f} dB  "
            f"max |diff| {s.max_abs_err:.3g}  outside tolerance {s.mismatched}/{s.numel}  "
            f"{'ok' if s.passed else 'FAIL'}")
    if s.passed:
        return [head]
    rows = [f"      {list(i)}: {ref:.8g} in {a.name}, {got:.8g} in {b.name}  (diff "
            f"{abs(got - ref):.3g}, allowed {atol + rtol * abs(ref):.3g})"
            for i, ref, got in s.worst]
    return [head, "    worst elements:", *rows]


def _report(a: _Model, b: _Model, inputs: dict[str, torch.Tensor], how: str,
            rows: list[_Compared], rtol: float, atol: float, *, unmatched: list[str]) -> str:
    feed = ", ".join(f"{n} {str(t.dtype).removeprefix('torch.')} {list(t.shape)}"
                     for n, t in inputs.items())
    failed = sum(not r.stats.passed for r in rows)
    verdict = (f"PASS: {len(rows)} output(s) agree" if not failed
               else f"FAIL: {failed} of {len(rows)} output(s) differ")
    return "\n".join([
        "lowbit verify", f"  reference: {a.name} ({a.kind})", f"  checked:   {b.name} ({b.kind})",
        f"  inputs: {feed}", f"  outputs matched {how}",
        *([f"  not compared: {', '.join(unmatched)}"] if unmatched else []),
        (f"  tolerance: |checked - reference| <= atol + rtol * |reference|  (rtol={rtol:g}, "
        f"atol={atol:g})"),
        *(line for r in rows for line in _row(r, a, b, rtol, atol)), verdict,
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register verify's arguments on ``parser`` (the ``lowbit verify`` subcommand parser)."""
    parser.add_argument("a", metavar="A", type=Path,
                        help="reference model: an .onnx file, a .pt2 file or a HF model directory")
    parser.add_argument("b", metavar="B", type=Path,
                        help="the model checked against A (the same kinds)")
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
    parser = argparse.ArgumentParser(prog="lowbit verify", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
