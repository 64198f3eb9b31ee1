"""Binary-coding quantization of a graph's linears, planned and fitted once over the graph view.

    plan = plan_bcq(graph, recipe)          # which linears, each weight fitted (lowbit.quant.bcq)
    QuantizeBCQ(recipe)(gm)                 # FX: each linear -> lowbit::bcq_linear (passes/fx/bcq.py)
    QuantizeBCQ(recipe)(model)              # ONNX: -> lowbit.BCQLinear + its decomposition
                                            #        (passes/onnx/bcq.py)

The linears are the recipe's (``quantized_linears``: roles, ignore globs), read from the
transformer map of either IR. Each weight is taken as [out, in] (a [in, out] weight, HF
Conv1D or an ONNX MatMul initializer, is transposed), fitted with ``BCQ(bits, group, iters,
offset)`` and reported with its relative reconstruction error ``|W - W'|_F / |W|_F`` beside
round-to-nearest uniform (asymmetric, same bits and group) for comparison. A weight the fit
cannot take (K not a multiple of 8, a group not dividing K) stops the pass with a ConfigError
naming the layer; a weight read by other ops too (tied) is converted for this linear only, the
parameter stays for its other readers.

Both IRs fit the same float32 values in the same order, so an FX and an ONNX graph of one
model get bit-identical codes.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from lowbit.config import BCQ, Recipe
from lowbit.errors import ConfigError
from lowbit.passes.patterns import LinearRef
from lowbit.passes.sites import check_roles, quantized_linears
from lowbit.passes.spot import find_transformer
from lowbit.passes.view import view_of
from lowbit.progress import bar as progress_bar
from lowbit.progress import say
from lowbit.quant import bcq

__all__ = ["BCQSite", "bcq_spec", "plan_bcq", "relative_error"]


@dataclasses.dataclass(frozen=True, eq=False)
class BCQSite:
    """One linear to convert: its role and ref, the fit of its [out, in] weight, and the
    relative reconstruction errors of the fit and of uniform round-to-nearest."""

    role: str
    ref: LinearRef
    out: object             # the linear's output value (ONNX: after its bias Add)
    fit: bcq.BCQWeight
    error: float
    uniform_error: float

    def summary(self) -> dict:
        return {"linear": self.ref.name, "role": self.role, "shape": list(self.fit.shape),
                "bits": self.fit.bits, "group": self.fit.group,
                "rel_error": round(self.error, 6), "uniform_rel_error": round(self.uniform_error, 6)}


def bcq_spec(recipe: Recipe) -> BCQ:
    if not isinstance(recipe, Recipe) or not isinstance(recipe.weight, BCQ):
        raise ConfigError(f"BCQ passes take a recipe whose weight is a lowbit.config.BCQ, got "
                          f"{getattr(recipe, 'name', recipe)!r}")
    return recipe.weight


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((w - w_hat).norm() / w.norm().clamp_min(1e-30))


def _weight(view, ref: LinearRef) -> torch.Tensor:
    w = torch.as_tensor(view.param(ref.weight)).detach().to(torch.float32)
    return (w if ref.weight_layout == "out_in" else w.t()).contiguous()


def plan_bcq(graph, recipe: Recipe, *, progress: bool = True) -> list[BCQSite]:
    """Spot ``graph`` (FX GraphModule or onnx_ir Model), pick ``recipe``'s linears and fit each
    weight; a bar on a terminal, then one summary line on stderr."""
    spec = bcq_spec(recipe)
    view = view_of(graph, "plan_bcq()")
    tmap = find_transformer(graph)
    check_roles(recipe, tmap)
    chosen = list(quantized_linears(recipe, tmap))
    sites, t0 = [], time.perf_counter()
    for role, ref in progress_bar(chosen, desc=f"BCQ q{spec.bits}: fitting", unit="linear",
                                  enabled=progress):
        w = _weight(view, ref)
        k = w.shape[1]
        if k % 8:
            raise ConfigError(f"{ref.name}: BCQ packs bit planes 8 per byte; the input dimension "
                              f"{k} is not a multiple of 8 (ignore this layer: Recipe.ignore)")
        group = spec.group if spec.group is None or spec.group < k else None
        try:
            fit = bcq.fit(w, spec.bits, group, spec.iters, offset=spec.offset)
        except ConfigError as e:
            raise ConfigError(f"{ref.name}: {e}") from None
        uniform = bcq.uniform_as_bcq(w, spec.bits, group)
        sites.append(BCQSite(role, ref, view.linear_out(ref), fit, relative_error(w, fit.dequantize()),
                             relative_error(w, uniform.dequantize())))
    say(f"BCQ q{spec.bits}: fitted {len(chosen)} linears, {time.perf_counter() - t0:.1f} s",
        enabled=progress and bool(chosen))
    return sites
