"""Names for what ONNX spotting finds: the torch module that owns a weight or an op.

Torch-exported files name initializers after the torch parameters
(``encoder.layer.0.attention.self.query.weight``), except where the exporter made new ones: the
dynamo exporter folds ``W^T`` into ``val_92`` (recording ``folded_from`` on it) and dedups
equal tensors (one ``...LayerNorm.weight`` for every all-ones norm of a randomly initialised
model); the TorchScript exporter names matmul weights ``onnx::MatMul_1052``. ``owner_name``
picks, in order:

1. the initializer's own name, if it is a torch name (``_i8`` / ``_i4`` suffixes of quantized
   copies stripped), then ``.weight`` / ``.bias`` stripped;
2. the single torch tensor it was folded from (``pkg.onnxscript.optimizer.folded_from``);
3. the module path the dynamo exporter records on the op (``pkg.torch.onnx.name_scopes``);
4. the TorchScript node path (``/encoder/layer.0/attention/self/query/MatMul`` ->
   ``encoder.layer.0.attention.self.query``);
5. the initializer's name as it is.

1 and 2 only for a tensor read by one op: a shared (tied or deduplicated) tensor names the
module that owns the op, as FX prefers for tied weights (GPT-2's ``lm_head`` reads
``transformer.wte``'s table).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

import onnx_ir as ir

__all__ = ["node_path", "owner_name", "scope_path", "strip_suffix"]

FOLDED_FROM = "pkg.onnxscript.optimizer.folded_from"
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_GENERATED = re.compile(r"^(onnx::|/)|^(val|_v|_val)_\d+$|^[0-9]+$")
_QUANT_SUFFIX = re.compile(r"_[iu][2-8]$")


def strip_suffix(name: str, suffixes: Iterable[str] = (".weight", "_weight", ".bias")) -> str:
    for s in suffixes:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _torch_like(name: str) -> bool:
    return "." in name and not _GENERATED.search(name)


def _folded_from(value: ir.Value) -> str | None:
    raw = value.metadata_props.get(FOLDED_FROM)
    try:
        sources = [s for s in ast.literal_eval(raw) if _torch_like(s)] if raw else []
    except (ValueError, SyntaxError):
        return None
    return sources[0] if len(sources) == 1 else None


def scope_path(node: ir.Node) -> str | None:
    """The module path the dynamo exporter recorded for ``node``."""
    raw = node.metadata_props.get(NAME_SCOPES)
    try:
        scopes = ast.literal_eval(raw) if raw else []
    except (ValueError, SyntaxError):
        return None
    return scopes[-2] if len(scopes) >= 2 and scopes[-2] else None


def node_path(node: ir.Node) -> str | None:
    """``/encoder/layer.0/attention/self/query/MatMul`` -> ``encoder.layer.0.attention.self.query``
    (TorchScript exporter node names)."""
    parts = [p for p in (node.name or "").split("/") if p]
    return ".".join(parts[:-1]) if (node.name or "").startswith("/") and len(parts) > 1 else None


def owner_name(value: ir.Value | None, node: ir.Node, *, shared: bool) -> tuple[str, str]:
    """(name of the module owning ``value`` as read by ``node``, where the name came from)."""
    if value is not None:
        base = _QUANT_SUFFIX.sub("", value.name or "")
        source = base if _torch_like(base) else _folded_from(value)
        if source and not shared:
            how = "initializer name" if source == base else "folded_from metadata"
            return strip_suffix(source), how
    if (scope := scope_path(node)) is not None:
        return scope, "dynamo name scope"
    if (path := node_path(node)) is not None:
        return path, "TorchScript node path"
    if value is not None:
        return strip_suffix(_QUANT_SUFFIX.sub("", value.name or "")), "initializer name"
    return node.name or node.op_type, "node name"
