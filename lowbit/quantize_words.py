"""``lowbit.quantize_words``: per-word mixed-precision word table (Chung et al. 2020), on a copy.

    plan = plan_for_budget(counts, 2.5)                      # lowbit.quant.word_bits
    wgm = lowbit.quantize_words(gm, plan)                    # FX: tiered_embedding / _linear
    qgm = lowbit.quantize(wgm, "w8a8", calibration=batches)  # the rest, as usual
    wm = lowbit.quantize_words("model.onnx", plan, out="model.words.onnx")   # ONNX

The word embedding (and a tied LM head, ``head="tied"``) becomes per-tier binary-coded tables
(``QuantizeWordBits``, lowbit/passes/fx/word_bits.py and lowbit/passes/onnx/word_bits.py).
The user's model is copied first; an ONNX model older than opset 18 is upgraded (the
decomposition needs BitwiseAnd). The other passes (``lowbit.quantize`` with any recipe) leave
the tiered ops alone, so the two compose in either order.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import fx

from lowbit.errors import ConfigError
from lowbit.quant import bcq
from lowbit.quant.word_bits import TieredEmbedding, WordBitsPlan
from lowbit.run_passes import run_fx, run_onnx

__all__ = ["quantize_words"]


def quantize_words(model: Any, plan: WordBitsPlan | TieredEmbedding, *, head: str = "tied",
                   iters: int = bcq.DEFAULT_ITERS, out: str | os.PathLike | None = None,
                   progress: bool = True) -> Any:
    """The word table of ``model`` coded per word as ``plan`` says; returns a new model.

    ``model``: an ``fx.GraphModule`` from ``lowbit.capture`` (returns a GraphModule), an
    ``onnx_ir.Model`` or a path to an ``.onnx`` file (returns an ``onnx_ir.Model``, also
    written atomically to ``out`` when given). ``plan``: a ``WordBitsPlan`` (fitted here with
    ``iters`` refinement rounds) or an already fitted ``TieredEmbedding``. ``head``: "tied"
    (a tied LM head reads the same tiers), "separate" (its own alphas over the same codes) or
    "float" (the head keeps the float table).

    Raises:
        ConfigError: another kind of model, a plan whose vocabulary differs from the table, no
            word embedding, a width that is not a multiple of 8, a bad ``head``.
    """
    if isinstance(model, torch.nn.Module):
        if not isinstance(model, fx.GraphModule):
            raise ConfigError(f"quantize_words() takes a captured graph: pass "
                              f"lowbit.capture({type(model).__name__}(...), example_inputs)")
        if out is not None:
            raise ConfigError("out= writes ONNX models; write a GraphModule with "
                              "lowbit.export_onnx(gm, path)")
        from lowbit.passes.fx.word_bits import QuantizeWordBits

        return run_fx(model, [QuantizeWordBits(plan, head, iters, progress)],
                      "quantize_words (FX)")
    import onnx_ir as ir

    if isinstance(model, (str, os.PathLike, ir.Model)):
        from lowbit.passes.onnx.word_bits import WB_MIN_OPSET
        from lowbit.passes.onnx.word_bits import QuantizeWordBits as OnnxWordBits

        return run_onnx(model, [OnnxWordBits(plan, head, iters, progress)], WB_MIN_OPSET,
                        "quantize_words (ONNX)", out)
    raise ConfigError(f"quantize_words() takes an fx.GraphModule from lowbit.capture, an "
                      f"onnx_ir.Model or a path to an .onnx file; got "
                      f"{type(model).__module__}.{type(model).__qualname__}")
