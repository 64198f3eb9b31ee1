"""Tensor-train compression of a graph's linears, chosen and fitted once over the graph view.

    sites = plan_tt(graph, rules)        # which linears, each weight TT-SVD'd (lowbit.quant.tt)
    TensorTrain(rules)(gm)               # FX: trainable cores, y = (x A) B + b   (passes/fx/tt.py)
    TensorTrain(rules)(model)            # ONNX: cores + Einsum / Reshape / MatMul (passes/onnx/tt.py)
    MaterializeTT()(gm)                  # FX: the core subgraph -> two plain linears

``rules`` are ``((key, TT), ...)``; a linear takes the first rule whose key is its role
(``attn.q``, ``ffn.in``, ...: ``lowbit.roles.LINEAR_ROLES``), a glob over its role
(``attn.*``) or a glob over its name (``encoder.layer.*.intermediate.dense``; ``*`` takes
every linear). Roles come from the transformer map; a linear spotting gives no role (a
hand-made model) is matched by name only. Each weight is taken as [out, in] (a [in, out]
weight, HF Conv1D or an ONNX MatMul initializer, is transposed), its modes checked against the
rule's ``dims`` (ConfigError naming the layer and the value) and TT-SVD'd.

Skipped on purpose: a linear whose weight is already TT (a parameter with a name part that
starts with ``tt_`` or holds ``_tt_``: the cores, a materialized ``tt_a`` / ``tt_b``), so a
second run finds nothing and says ``modified=False``. A rule that matches no linear is logged,
not an error (after a first run the roles it matched are gone). A weight read by other ops
too (tied) is replaced for this linear only.

Both IRs fit the same float32 values in the same order, so an FX and an ONNX graph of one
model get identical cores.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lowbit.config import TT
from lowbit.errors import ConfigError
from lowbit.passes.patterns import LinearRef
from lowbit.passes.spot import find_transformer
from lowbit.passes.view import view_of
from lowbit.progress import bar as progress_bar
from lowbit.progress import say
from lowbit.quant import tt

__all__ = ["DEFAULT_ROWS", "DEFAULT_TT_ROLES", "TT_META", "TTSite", "check_form", "is_tt_param", "plan_tt",
           "tt_rules"]

log = logging.getLogger("lowbit.passes.tt")

DEFAULT_TT_ROLES = ("attn.q", "attn.k", "attn.v", "attn.qkv", "attn.o", "ffn.in", "ffn.gate",
                    "ffn.out")
DEFAULT_ROWS = 128      # rows of x the "chain" order is chosen for when the graph's are unknown
TT_META = "lowbit_tt"   # FX node / GraphModule meta key; ONNX metadata_props "lowbit.tt"


@dataclasses.dataclass(frozen=True, eq=False)
class TTSite:
    """One linear to compress: its role (None: matched by name), ref, input / output values,
    rule, TT fit of its [out, in] weight, the fit's relative error and the rows of x the
    contraction order is chosen for."""

    role: str | None
    ref: LinearRef
    x: Any
    out: Any
    spec: TT
    fit: tt.TTWeight
    error: float
    rows: int

    def summary(self, form: str) -> dict:
        f = self.fit
        dense = f.in_features * f.out_features
        return {"linear": self.ref.name, "role": self.role, "shape": [f.out_features,
                                                                      f.in_features],
                "in_modes": list(f.in_modes), "out_modes": list(f.out_modes),
                "ranks": list(f.ranks), "params": f.params, "dense_params": dense,
                "compression": round(dense / f.params, 3), "rel_error": round(self.error, 6),
                "bits": self.spec.bits, "form": form, "rows": self.rows,
                "flops": f.flops(self.rows)}


def tt_rules(spec: TT | Mapping[str, TT] | Sequence[tuple[str, TT]],
             layers: Sequence[str] = DEFAULT_TT_ROLES) -> tuple[tuple[str, TT], ...]:
    """``((key, TT), ...)`` from one ``TT`` for every key of ``layers`` (roles or name globs),
    a mapping key -> TT, or the pairs themselves (ConfigError for anything else)."""
    if isinstance(spec, TT):
        if isinstance(layers, str) or not layers:
            raise ConfigError(f"layers must be a non-empty sequence of roles or name globs, "
                              f"got {layers!r}")
        pairs = [(key, spec) for key in layers]
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    elif isinstance(spec, (list, tuple)):
        pairs = [tuple(p) if isinstance(p, (list, tuple)) else p for p in spec]
    else:
        raise ConfigError(f"tensor-train takes a lowbit.config.TT, a mapping key -> TT or "
                          f"(key, TT) pairs, got {type(spec).__name__}")
    for p in pairs:
        if not (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and p[0]
                and isinstance(p[1], TT)):
            raise ConfigError(f"tensor-train rules are (key, TT) pairs with a non-empty key "
                              f"(a role or a name glob), got {p!r}")
    if not pairs:
        raise ConfigError("tensor-train: no rules given")
    return tuple(pairs)


def check_form(form: str, rows: int | None) -> None:
    if form not in tt.FORMS:
        raise ConfigError(f"TensorTrain.form must be one of {tt.FORMS}, got {form!r}")
    if rows is not None and not (isinstance(rows, int) and rows >= 1):
        raise ConfigError(f"TensorTrain.rows must be None or an int >= 1, got {rows!r}")


def is_tt_param(name: str) -> bool:
    """``name`` is a TT parameter (a core, a scale, a materialized half)."""
    return any(part.startswith("tt_") or "_tt_" in part for part in name.split("."))


def _matches(key: str, role: str | None, name: str) -> bool:
    return (role is not None and (key == role or fnmatch.fnmatchcase(role, key))) \
        or fnmatch.fnmatchcase(name, key)


def _weight(view, ref: LinearRef) -> torch.Tensor:
    p = view.param(ref.weight)        # FX: the live tensor; ONNX: a read-only numpy array
    w = (p.detach() if isinstance(p, torch.Tensor) else torch.tensor(np.asarray(p))).float()
    return (w if ref.weight_layout == "out_in" else w.t()).contiguous()


def _rows(view, x, rows: int | None) -> int:
    if rows is not None:
        return rows
    shape = view.shape(x)
    lead = shape[:-1] if shape else None
    if lead and all(isinstance(d, int) for d in lead):
        return max(1, math.prod(lead))
    return DEFAULT_ROWS


def plan_tt(graph, rules: Sequence[tuple[str, TT]], *, rows: int | None = None,
            progress: bool = True) -> list[TTSite]:
    """Spot ``graph`` (FX GraphModule or onnx_ir Model), pick the linears ``rules`` select
    and TT-SVD each weight; a bar on a terminal, then one summary line on stderr."""
    view = view_of(graph, "plan_tt()")
    roles = {id(ref.node): role for role, ref in find_transformer(graph).linears()}
    chosen, used = [], set()
    for node in view.nodes():
        ref = view.linear(node)
        if not isinstance(ref, LinearRef) or is_tt_param(ref.weight):
            continue
        role = roles.get(id(node))
        for key, spec in rules:
            if _matches(key, role, ref.name):
                chosen.append((role, ref, spec))
                used.add(key)
                break
    unused = [key for key, _ in rules if key not in used]
    if unused:
        log.info("tensor-train: no linear matched %s", unused)
    sites, t0 = [], time.perf_counter()
    for role, ref, spec in progress_bar(chosen, desc="TT-SVD", unit="linear",
                                        enabled=progress):
        w = _weight(view, ref)
        in_modes, out_modes = tt.layer_modes(spec, w.shape[1], w.shape[0], ref.name)
        fit = tt.tt_svd(w, in_modes, out_modes, ranks=spec.ranks, error=spec.error,
                        size=spec.size, where=ref.name)
        err = float((fit.full() - w).norm() / w.norm().clamp_min(1e-30))
        x = view.linear_input(ref)
        sites.append(TTSite(role, ref, x, view.linear_out(ref), spec, fit, err,
                            _rows(view, x, rows)))
    say(f"TT-SVD: {len(chosen)} linears, {time.perf_counter() - t0:.1f} s",
        enabled=progress and bool(chosen))
    return sites
