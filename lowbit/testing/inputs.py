"""Seeded inputs for a model, from its own metadata (``lowbit.testing`` generates them when a
check is given ``inputs=None``).

The inputs come from placeholder ``meta['val']`` of an ``fx.GraphModule`` from ``torch.export``,
or from ONNX graph input types. A symbolic dimension becomes 1 when batch-like (its name contains
"batch", or it is axis 0 of a tensor of rank >= 2) and 8 otherwise. Float inputs are standard
normal; integer or bool inputs with "mask" in their name are ones; other integer inputs (token
ids, token types, positions) are uniform in ``[0, vocab)``, vocab being the row count of the
embedding table the input indexes (``aten.embedding``, or an ONNX ``Gather`` on an initializer)
where one is found, else 100.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx

from lowbit.errors import VerifyError
from lowbit.testing.run import is_onnx, onnx_proto

__all__ = ["DEFAULT_BATCH", "DEFAULT_SEQ", "DEFAULT_VOCAB", "InputSpec", "input_specs",
           "make_inputs", "specs_of"]

DEFAULT_VOCAB = 100
DEFAULT_BATCH = 1
DEFAULT_SEQ = 8


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (a str is a symbolic dimension), dtype and, for index
    inputs, the row count of the table it indexes (None when unknown)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: torch.dtype
    vocab: int | None = None

    def concrete_shape(self, batch: int = DEFAULT_BATCH, seq: int = DEFAULT_SEQ) -> tuple[int, ...]:
        """Fixed dimensions as they are; symbolic ones -> ``batch`` if batch-like, else ``seq``."""
        rank = len(self.shape)
        return tuple(d if isinstance(d, int) else batch if _batch_like(d, axis, rank) else seq
                     for axis, d in enumerate(self.shape))


def _batch_like(dim_name: str, axis: int, rank: int) -> bool:
    return "batch" in dim_name.lower() or (axis == 0 and rank >= 2)


def input_specs(model: Any) -> list[InputSpec]:
    """The inputs ``model`` declares: an fx.GraphModule from torch.export or an ONNX model.

    Raises:
        VerifyError: the model carries no input metadata (pass inputs explicitly instead).
    """
    if is_onnx(model):
        return _onnx_specs(onnx_proto(model))
    if isinstance(model, torch.fx.GraphModule):
        return _fx_specs(model)
    raise VerifyError(
        f"{type(model).__name__} carries no input metadata (only fx.GraphModules from "
        f"torch.export and ONNX models do); pass inputs explicitly"
    )


def make_inputs(specs: Sequence[InputSpec], *, seed: int = 0, batch: int = DEFAULT_BATCH,
                seq: int = DEFAULT_SEQ) -> dict[str, torch.Tensor]:
    """Seeded random inputs for ``specs``, by name (see the module docstring for the rules)."""
    gen = torch.Generator().manual_seed(seed)
    return {s.name: _random_tensor(s, s.concrete_shape(batch, seq), gen) for s in specs}


def _random_tensor(spec: InputSpec, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if spec.dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(spec.dtype)
    if "mask" in spec.name.lower():
        return torch.ones(shape, dtype=spec.dtype)
    if spec.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randint(0, spec.vocab or DEFAULT_VOCAB, shape, generator=gen, dtype=spec.dtype)


def _fx_specs(gm: torch.fx.GraphModule) -> list[InputSpec]:
    specs = []
    for node in gm.graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise VerifyError(
                f"placeholder {node.name!r} has no meta['val'] tensor (is this GraphModule from "
                f"torch.export?); pass inputs explicitly"
            )
        shape = tuple(d if isinstance(d, int) else str(d) for d in val.shape)
        specs.append(InputSpec(str(node.target), shape, val.dtype, _fx_vocab(gm, node)))
    return specs


def _fx_vocab(gm: torch.fx.GraphModule, node: torch.fx.Node) -> int | None:
    for user in node.users:
        if user.target is torch.ops.aten.embedding.default and user.args[1] is node:
            weight = user.args[0]
            if weight.op == "get_attr":
                return operator.attrgetter(weight.target)(gm).shape[0]
            return weight.meta["val"].shape[0]
    return None


def _onnx_specs(proto: onnx.ModelProto) -> list[InputSpec]:
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    vocab = {n.input[1]: initializers[n.input[0]].dims[0] for n in graph.node
             if n.op_type == "Gather" and n.domain in ("", "ai.onnx") and n.input[0] in initializers
             and all(a.name != "axis" or a.i == 0 for a in n.attribute)}
    specs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in tensor_type.shape.dim)
        dtype = torch.from_numpy(np.empty(0, np_dtype)).dtype
        specs.append(InputSpec(value.name, shape, dtype, vocab.get(value.name)))
    return specs


def specs_of(*models: Any) -> list[InputSpec]:
    reasons = []
    for model in models:
        try:
            return input_specs(model)
        except VerifyError as e:
            reasons.append(str(e))
    raise VerifyError("cannot generate inputs: " + "; ".join(reasons))
