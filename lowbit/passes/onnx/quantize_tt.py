"""TT halves (ONNX): a recipe's QDQ on both MatMuls of every materialized TT layer.

    Y = MatMul(MatMul(X, A), B) [+ b]            (TensorTrain(materialize=True): A [in, r],
                                                  B [r, out]; or an exported MaterializeTT graph)
      -> MatMul(QDQ_a(MatMul(QDQ_a(X), DQ(A_i8))), DQ(B_i8)) [+ b]

The ONNX twin of FX's ``QuantizeTTHalves`` (``lowbit/passes/fx/quantize_tt.py``), with the
same rules and site names. Spotting reads a materialized layer as two linears and gives at
most one of them the original linear's role (the other lands in ``unclassified``), so the
role-driven site plan alone quantizes a part of them: on the tiny BERT, 8 of 24 halves. The
layers are read from the model's TT record, ``metadata_props["lowbit.tt"]`` (written by
``TensorTrain`` and by ``export_onnx`` from ``gm.meta["lowbit_tt"]``; one entry per layer
with its name and role); each half is the linear the graph view names ``<linear>.tt_a`` /
``<linear>.tt_b``. ``plan_sites`` (``insert_qdq``) then gives each half the recipe's weight
spec and, for static recipes, its activation spec (the role's override when it has one), so
the input ``X`` and the rank-r intermediate ``X A`` are calibration sites like any other and
the TVM lowering runs a TT layer as two int8 GEMMs. Site names as FX's:
``<linear>.tt_a`` (weight), ``<linear>.tt_a:input``; a half spotting gave a role keeps the
names that role gave it (``<linear>.tt_b.weight``, ``<linear>.tt_b:input``).

Skipped on purpose, as on FX: every layer when the recipe has no weight spec; layers whose
role the recipe does not list or ignores (a role or a glob on the original linear's name);
layers not materialized (cores: ``TTCoreQuant`` trains them instead); tensors the plan already
quantizes (one quantizer per tensor). A model without a TT record gets an empty list, so its
plan is the one it had before. Refused (ConfigError): a materialized layer without one of its
halves (the graph was edited after ``TensorTrain``), a record that is not JSON.
"""

from __future__ import annotations

import dataclasses
import json

import onnx_ir as ir

from lowbit.errors import ConfigError
from lowbit.passes.onnx.tt import TT_PROP
from lowbit.passes.patterns import LinearRef
from lowbit.passes.view import view_of

__all__ = ["HALVES", "TTHalf", "materialized_halves", "tt_record"]

HALVES = ("tt_a", "tt_b")          # the halves' initializer / parameter suffixes, input first


@dataclasses.dataclass(frozen=True, eq=False)
class TTHalf:
    """One MatMul of a materialized TT layer: the original linear ``layer`` and its ``role``
    (None when the TT rule matched it by name), ``suffix`` (``tt_a`` / ``tt_b``), and the
    half's own ``ref`` from the graph view."""

    layer: str
    role: str | None
    suffix: str
    ref: LinearRef

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.suffix}"


def tt_record(model: ir.Model) -> list[dict]:
    """The model's TT report (``metadata_props["lowbit.tt"]``), [] when it has none."""
    text = model.metadata_props.get(TT_PROP)
    if not text:
        return []
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"metadata_props[{TT_PROP!r}] is not JSON ({e}); the TT record "
                          f"was edited") from e
    if not isinstance(record, list):
        raise ConfigError(f"metadata_props[{TT_PROP!r}] is a {type(record).__name__}, not the "
                          f"list of TT layers TensorTrain writes")
    return record


def _materialized(entry: dict) -> bool:
    # "form": "materialized" alone: files TensorTrain wrote before it set the flag
    return bool(entry.get("materialized")) or entry.get("form") == "materialized"


def materialized_halves(model: ir.Model) -> list[TTHalf]:
    """Both halves of every materialized TT layer of ``model``, in record order, input half
    first (module docstring); [] without a TT record."""
    entries = [e for e in tt_record(model) if _materialized(e)]
    if not entries:
        return []
    view = view_of(model, "materialized_halves()")
    refs: dict[str, list[LinearRef]] = {}
    for node in view.nodes():
        ref = view.linear(node)
        if isinstance(ref, LinearRef):
            refs.setdefault(ref.name, []).append(ref)
    halves = []
    for entry in entries:
        layer = entry["linear"]
        for suffix in HALVES:
            found = refs.get(f"{layer}.{suffix}")
            if not found:
                raise ConfigError(f"{layer}: materialized TT layer without its "
                                  f"{layer}.{suffix} MatMul (was the graph edited?)")
            halves += [TTHalf(layer, entry.get("role"), suffix, ref) for ref in found]
    return halves
