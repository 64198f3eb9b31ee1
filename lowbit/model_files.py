"""Model paths given on the command line: what each one is, the shapes a verb runs it at, and
the folder its results go to.

    kind_of(path)              "hf" (a folder with config.json), "onnx", "pt2" (a program
                               saved with torch.export.save), "module" (a folder lowbit compile
                               wrote: meta.json); anything else is refused naming the path
    onnx_summary(path)         inputs, Q/DQ and lowbit-op counts, recipe: is it quantized?
    load_pt2(path)             the module of a saved program (Hugging Face output types
                               registered first, so a program returning them loads)
    batch_and_seq(specs, ...)  the batch and sequence length to run at: a fixed dimension of
                               the file wins unless the flag is given, and a flag that
                               contradicts the file is refused naming both
    whole_batches(texts, ...)  calibration texts cut to whole batches for a file that fixes
                               its batch (refused when not one batch is left)
    out_dir(path, recipe)      ./lowbit-out/<model>-<recipe>/ (a model already inside a
                               lowbit-out folder keeps its folder)

Every refusal is a ``ConfigError``: the command line prints its one line and exits 2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lowbit.errors import ConfigError

__all__ = ["OUT_ROOT", "OnnxSummary", "batch_and_seq", "check_positive", "fixed_dim", "kind_of",
           "load_pt2", "model_name", "onnx_summary", "out_dir", "whole_batches"]

OUT_ROOT = Path("lowbit-out")
_KINDS = ("a Hugging Face model folder (config.json), an .onnx file, a .pt2 file from "
          "torch.export.save, or a folder lowbit compile wrote")


def kind_of(path: Path, *, what: str = "MODEL") -> str:
    """``"hf"``, ``"onnx"``, ``"pt2"`` or ``"module"``; ConfigError for anything else."""
    if not path.exists():
        raise ConfigError(f"{what} {path}: no such file or folder")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        if (path / "meta.json").is_file():
            return "module"
        raise ConfigError(f"{what} {path}: a folder with neither config.json (a Hugging Face "
                          f"model) nor meta.json (a module lowbit compile wrote)")
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".pt2":
        return "pt2"
    raise ConfigError(f"{what} {path}: unknown model format; expected {_KINDS}")


def model_name(path: Path) -> str:
    """``bert`` for ``models/bert/``, ``minilm`` for ``minilm.w8a8.onnx``; a file called
    ``model.*`` is named after its folder."""
    path = Path(path).resolve()
    if path.is_dir():
        return path.name
    stem = path.name.split(".")[0]
    return path.parent.name if stem == "model" and path.parent.name else stem


def out_dir(path: Path, recipe: str) -> Path:
    """The default folder for what a verb writes about ``path``: ``./lowbit-out/<model>-<recipe>``,
    or the folder ``path`` already lies in when that is a lowbit-out folder (so ``lowbit
    compile lowbit-out/bert-W8A8/model.qdq.onnx`` writes beside it)."""
    path = Path(path)
    if path.is_file() and path.resolve().parent.parent.name == OUT_ROOT.name:
        return path.parent
    return OUT_ROOT / f"{model_name(path)}-{recipe}"


def check_positive(**flags: int | None) -> None:
    """ConfigError for the first flag (``seq=0`` -> ``--seq``) below 1; None means unset."""
    for name, value in flags.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def load_pt2(path: Path):
    """The module of a program saved with ``torch.export.save``. transformers is imported
    first where installed: it registers its output types (``BaseModelOutput``...) with
    torch's pytree, without which a program returning one cannot be read back."""
    import contextlib

    import torch

    with contextlib.suppress(ImportError):
        import transformers.modeling_outputs  # noqa: F401
    try:
        return torch.export.load(path).module()
    except Exception as e:  # torch.export.load raises many types for one meaning
        lines = str(e).strip().splitlines()
        raise ConfigError(f"{path}: torch.export.load cannot read it ({type(e).__name__}: "
                          f"{lines[0] if lines else ''})") from e


@dataclasses.dataclass(frozen=True)
class OnnxSummary:
    """What ``lowbit`` reads from an ONNX file before running it."""

    path: Path
    specs: list            # lowbit.testing.inputs.InputSpec per graph input
    qdq_nodes: int         # QuantizeLinear + DequantizeLinear
    lowbit_nodes: int      # lowbit-domain ops (BCQLinear, Tiered*)
    recipe: str | None     # metadata_props["lowbit.recipe"], written by lowbit
    source: str | None     # metadata_props["lowbit.source"]: the folder lowbit quantize read

    @property
    def quantized(self) -> bool:
        return bool(self.qdq_nodes or self.lowbit_nodes or self.recipe)

    def describe_quantization(self) -> str:
        parts = [f"{self.qdq_nodes} QuantizeLinear/DequantizeLinear node(s)"]
        if self.lowbit_nodes:
            parts.append(f"{self.lowbit_nodes} lowbit op(s)")
        if self.recipe:
            parts.append(f"recipe {self.recipe} in its metadata")
        return ", ".join(parts)


def onnx_summary(path: Path) -> OnnxSummary:
    """Read ``path``'s graph (not its external weights)."""
    import onnx

    from lowbit.testing.inputs import input_specs

    try:
        proto = onnx.load(str(path), load_external_data=False)
        specs = input_specs(proto)
    except Exception as e:  # onnx raises DecodeError, OSError ... for one meaning
        raise ConfigError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    nodes = list(proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    return OnnxSummary(
        path, specs,
        sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes),
        sum(n.domain == "lowbit" for n in nodes), meta.get("lowbit.recipe"),
        meta.get("lowbit.source"))


def fixed_dim(specs: list, axis: int) -> tuple[int, str] | None:
    """The fixed size of dimension ``axis`` of the rank >= 2 inputs, with the input's name."""
    for s in specs:
        if len(s.shape) >= 2 and isinstance(s.shape[axis], int) and s.shape[axis] > 0:
            return s.shape[axis], f"{s.name} {list(s.shape)}"
    return None


def batch_and_seq(specs: list, source: Path, batch: int | None, seq: int | None, *,
                  default_batch: int, default_seq: int, batch_flag: str = "--batch",
                  seq_flag: str = "--seq") -> tuple[int, int]:
    """The batch and sequence length to feed a model whose inputs are ``specs``: a dimension
    the file fixes is taken from it unless the flag is given, and a flag that contradicts
    it is refused with a line naming the flag, the input and the fix."""
    chosen = []
    for axis, given, default, flag, what in ((0, batch, default_batch, batch_flag, "batch"),
                                             (1, seq, default_seq, seq_flag, "sequence length")):
        fixed = fixed_dim(specs, axis)
        if fixed is None:
            chosen.append(default if given is None else given)
            continue
        size, where = fixed
        if given is not None and given != size:
            raise ConfigError(f"{flag} {given}: {source} has a fixed {what} of {size} (input "
                              f"{where}); drop {flag} or give {flag} {size}, or re-export the "
                              f"model with a dynamic {what}")
        chosen.append(size)
    return chosen[0], chosen[1]


def whole_batches(texts: list, specs: list, batch: int, source: Path,
                  num_calibration: int) -> list:
    """``texts`` cut to a whole number of batches of ``batch`` when the inputs ``specs`` of
    ``source`` fix the batch (an ONNX file exported at batch 8 takes exactly 8 rows, so a last
    partial batch cannot run); unchanged when the batch is dynamic. ConfigError naming
    ``--num-calibration`` (given as ``num_calibration``) when fewer than ``batch`` texts are
    left."""
    if not fixed_dim(specs, 0):
        return texts
    texts = texts[:len(texts) // batch * batch]
    if not texts:
        raise ConfigError(f"--num-calibration {num_calibration}: {source} takes batches of "
                          f"exactly {batch}; give at least {batch}")
    return texts
