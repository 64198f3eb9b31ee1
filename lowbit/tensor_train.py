"""``lowbit.tensor_train``: tensor-train compression of a model's linears (Yang et al. 2023), on
a copy.

    tgm = lowbit.tensor_train(gm, TT(ranks=30))                  # FX: trainable cores (QAT)
    tgm = lowbit.tensor_train(gm, {"attn.*": TT(ranks=30, dims=((24, 32), (32, 24))),
                                   "ffn.*": TT(ranks=30, bits=8)})
    ...train tgm (its cores and scales are nn.Parameters)...
    igm = lowbit.materialize_tt(tgm)                             # two constant linears per layer
    qgm = lowbit.quantize(igm, "w8a8", calibration=batches)      # the rest, as usual
    tm = lowbit.tensor_train("model.onnx", TT(ranks=30), out="model.tt.onnx")   # ONNX

The passes: ``TensorTrain`` (lowbit/passes/fx/tt.py, lowbit/passes/onnx/tt.py, planned once in
lowbit/passes/tt.py) and ``MaterializeTT`` (lowbit/passes/fx/tt_materialize.py); the numerics
(TT-SVD with tensorly, contraction orders with opt_einsum, core QAT) in lowbit/quant/tt.py.
An ONNX model below opset 13 (21 for int4 cores) is upgraded first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx

from lowbit.config import TT
from lowbit.errors import ConfigError
from lowbit.passes.tt import DEFAULT_TT_ROLES, tt_rules
from lowbit.run_passes import run_fx, run_onnx

__all__ = ["materialize_tt", "tensor_train"]


def tensor_train(model: Any, spec: TT | Mapping[str, TT] | Sequence[tuple[str, TT]], *,
                 layers: Sequence[str] = DEFAULT_TT_ROLES, form: str = "merged",
                 rows: int | None = None, materialize: bool = False,
                 out: str | os.PathLike | None = None, progress: bool = True) -> Any:
    """The linears of ``model`` that ``spec`` selects in TT form; returns a new model.

    Args:
        model: an ``fx.GraphModule`` from ``lowbit.capture`` (returns a GraphModule whose cores,
            and with ``TT.bits`` their scales, are trainable parameters), an ``onnx_ir.Model``
            or a path to an ``.onnx`` file (returns an ``onnx_ir.Model``, also written
            atomically to ``out`` when given).
        spec: one ``lowbit.config.TT`` for every linear ``layers`` names, or a mapping (or
            pairs) key -> TT; a key is a role (``attn.q``), a glob over roles (``attn.*``) or
            over linear names (``encoder.layer.*.output.dense``, ``*``); first match wins.
        layers: roles / name globs for a single ``TT`` (default: every attention and FFN
            linear, not the head).
        form: "merged" (A and B from the cores, two matmuls) or "chain" (x contracted with
            the cores in opt_einsum's cheapest order for ``rows`` rows).
        rows: rows of x the "chain" order is chosen for (None: the graph's, else 128).
        materialize: the halves as constants: FX two plain linears per layer
            (``materialize_tt``), ONNX ``A`` / ``B`` initializers; for inference, not QAT.
        out: ONNX only: where to write the result.
        progress: a line per TT-SVD on stderr.

    The report is ``gm.meta["lowbit_tt"]`` / ``metadata_props["lowbit.tt"]``: per layer its
    modes, ranks, parameters, relative error and FLOPs.

    Raises:
        ConfigError: a bad spec, dims whose product is not the layer's size, ranks a bond
            cannot hold (naming the layer and the value), another kind of model.
    """
    rules = tt_rules(spec, layers)
    if isinstance(model, torch.nn.Module):
        if not isinstance(model, fx.GraphModule):
            raise ConfigError(f"tensor_train() takes a captured graph: pass "
                              f"lowbit.capture({type(model).__name__}(...), example_inputs)")
        if out is not None:
            raise ConfigError("out= writes ONNX models; write a GraphModule with "
                              "lowbit.export_onnx(gm, path)")
        from lowbit.passes.fx.tt import TensorTrain
        from lowbit.passes.fx.tt_materialize import MaterializeTT

        passes = [TensorTrain(rules, form, rows, progress)]
        return run_fx(model, passes + ([MaterializeTT()] if materialize else []),
                      "tensor_train (FX)")
    import onnx_ir as ir

    if isinstance(model, (str, os.PathLike, ir.Model)):
        from lowbit.passes.onnx.tt import TT_INT4_OPSET, TT_MIN_OPSET
        from lowbit.passes.onnx.tt import TensorTrain as OnnxTensorTrain

        need = TT_INT4_OPSET if any(s.bits == 4 for _, s in rules) else TT_MIN_OPSET
        return run_onnx(model, [OnnxTensorTrain(rules, form, rows, materialize, progress)],
                        need, "tensor_train (ONNX)", out)
    raise ConfigError(f"tensor_train() takes an fx.GraphModule from lowbit.capture, an "
                      f"onnx_ir.Model or a path to an .onnx file; got "
                      f"{type(model).__module__}.{type(model).__qualname__}")


def materialize_tt(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` (from ``tensor_train``, trained or not) with every TT layer as two plain
    linears with constant halves (``MaterializeTT``), ready for ``lowbit.quantize`` and
    ``lowbit.compile``."""
    if not isinstance(gm, fx.GraphModule):
        raise ConfigError(f"materialize_tt() takes the fx.GraphModule tensor_train returned, got "
                          f"{type(gm).__name__}")
    from lowbit.passes.fx.tt_materialize import MaterializeTT

    return run_fx(gm, [MaterializeTT()], "materialize_tt (FX)")
