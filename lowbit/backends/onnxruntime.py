"""onnxruntime, the reference runtime: run QDQ ONNX files and measure how far results agree.

``OrtRunner`` runs a model on onnxruntime's CPU provider (``strict`` by default: see there);
``ort_u8s8_exact`` says whether onnxruntime's integer GEMM is exact on this host;
``qdq_agreement`` counts how many output steps two results are apart. It is the one ONNX runner
in lowbit: ``lowbit.testing`` runs ONNX models with it, and the ONNX calibration passes take it
as their ``runner``.

The QDQ export itself lives in ``lowbit.export.onnx`` (``export_onnx``), its op translations
in ``lowbit.passes.onnx.qdq_ops`` and its clean-ups in ``lowbit.passes.onnx.qdq_cleanup``;
the names this module used to define are re-exported here so importers keep working.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch

from lowbit import hostcpu
from lowbit.errors import ConfigError, OnnxExportError
from lowbit.export.onnx import export_onnx
from lowbit.passes.onnx.edit import add_initializer, drop_if_unused
from lowbit.passes.onnx.qdq_cleanup import (
    fold_dq_param_casts,
    fold_weight_transposes,
    pack_int4_weights,
)
from lowbit.passes.onnx.qdq_ops import (
    QMAX_KEY,
    QMIN_KEY,
    TRANSLATIONS,
    choose_qparams_per_token,
    choose_qparams_per_token_asymmetric,
    choose_qparams_symmetric_tensor,
    choose_qparams_tensor,
    dequantize_per_channel,
    dequantize_per_channel_group,
    dequantize_per_tensor,
    dequantize_per_token,
    op,
    quantize_per_channel,
    quantize_per_tensor,
    quantize_per_token,
)

__all__ = [
    # re-exported from their new homes (see the module docstring)
    "QMAX_KEY",
    "QMIN_KEY",
    "STEP_SLACK",
    "TRANSLATIONS",
    "OnnxExportError",
    "OrtRunner",
    "add_initializer",
    "choose_qparams_per_token",
    "choose_qparams_per_token_asymmetric",
    "choose_qparams_symmetric_tensor",
    "choose_qparams_tensor",
    "dequantize_per_channel",
    "dequantize_per_channel_group",
    "dequantize_per_tensor",
    "dequantize_per_token",
    "drop_if_unused",
    "export_onnx",
    "fold_dq_param_casts",
    "fold_weight_transposes",
    "op",
    "ort_u8s8_exact",
    "pack_int4_weights",
    "per_axis_activation_matmul",
    "qdq_agreement",
    "quantize_per_channel",
    "quantize_per_tensor",
    "quantize_per_token",
    "run_onnx",
]

log = logging.getLogger("lowbit.backends.onnxruntime")


# ---- reference execution -------------------------------------------------------------------
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_ORT_TO_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
              "tensor(bool)": np.bool_}


def per_axis_activation_matmul(model: str | os.PathLike | onnx.ModelProto | bytes) -> bool:
    """Whether a DequantizeLinear of a computed tensor (not an initializer) with a per-axis
    scale feeds a MatMul or Gemm (see ``OrtRunner``)."""
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    elif not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def per_axis(name: str) -> bool:
        if name in inits:
            return int(np.prod(inits[name].dims)) > 1
        node = consts.get(name)
        return node is not None and any(int(np.prod(a.t.dims)) > 1 for a in node.attribute
                                        if a.name == "value")

    readers: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.op_type)
    return any(n.op_type == "DequantizeLinear" and n.input[0] not in inits
               and len(n.input) > 1 and per_axis(n.input[1])
               and any(op in ("MatMul", "Gemm") for op in readers.get(n.output[0], []))
               for n in g.node)


class OrtRunner:
    """An onnxruntime CPU session over an exported model, fed by name.

        runner = OrtRunner("model.qdq.onnx", threads=2)
        logits, = runner(input_ids=ids, attention_mask=mask)      # or runner.run({...})

    ``optimization`` is onnxruntime's graph optimization level: "all" (default, what
    deployments use; QDQ around MatMul becomes integer kernels, which agree with the QDQ math
    to within rounding only where ``ort_u8s8_exact()``: see there) down to "disable" (the QDQ
    graph op by op: DequantizeLinear, float MatMul; no integer kernel, so the same numbers on
    every host up to float summation order). ``threads`` sets ``intra_op_num_threads`` (None:
    onnxruntime's default).

    ``strict`` (default True) turns off the two onnxruntime rewrites that change the exported
    model's numbers beyond rounding of the same math: the weight-only DQ -> MatMulNBits fusion
    at its default ``accuracy_level`` 4, which quantizes *float* activations to int8 (seen:
    15 output steps off; strict asks for level 1, float32 compute), and DivMulFusion, which
    turns torch's ``x * (1 / s)`` into ``x / s`` and so moves per-token integers on ties.
    ``strict=False`` runs onnxruntime exactly as deployed. ``strict`` does not reach the u8 x s8
    integer kernel itself, which saturates on hosts without VNNI (``ort_u8s8_exact``).

    PEG files: onnxruntime (seen with 1.31) rewrites ``DequantizeLinear -> MatMul`` into
    ``MatMulIntegerToFloat`` without checking that the activation is quantized per tensor, and
    that kernel then fails at run time on a per-axis activation zero point ("Per-Channel is not
    supported yet"). When the model has a per-axis activation DequantizeLinear feeding a
    MatMul (a PEG linear input), the runner turns off onnxruntime's QDQ fusion
    (``QDQSelectorActionTransformer``) for that session, logged, whatever ``strict`` says;
    the QDQ math then runs op by op (onnxruntime has no per-channel-activation integer GEMM).
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto | bytes,
                 threads: int | None = None, *, optimization: str = "all",
                 strict: bool = True) -> None:
        import onnxruntime as ort

        if optimization not in _OPT_LEVELS:
            raise ConfigError(f"OrtRunner.optimization must be one of {sorted(_OPT_LEVELS)}, "
                              f"got {optimization!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"OrtRunner.threads must be a positive int or None, got {threads!r}")
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                              _OPT_LEVELS[optimization])
        if threads is not None:
            so.intra_op_num_threads = threads
        disabled = []
        if strict:
            so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
            disabled = ["DivMulFusion"]
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else \
            model if isinstance(model, bytes) else str(model)
        if per_axis_activation_matmul(model):
            log.info("OrtRunner: per-axis activation DequantizeLinear feeds a MatMul (PEG); "
                     "onnxruntime's QDQ fusion is turned off for this session")
            disabled = disabled + ["QDQSelectorActionTransformer"]
        self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=disabled)
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def __call__(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        if args and kwargs:
            raise ConfigError("OrtRunner: pass inputs by position or by name, not both")
        if args:
            if len(args) != len(self.inputs):
                raise ConfigError(f"OrtRunner: {len(args)} positional input(s) for a model "
                                  f"that takes {len(self.inputs)}: {self.input_names}")
            kwargs = dict(zip(self.inputs, args))
        return self.run(kwargs)

    def run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> list[np.ndarray]:
        """Run on ``{input name: array}``; returns the outputs in the model's order."""
        missing = [n for n in self.inputs if n not in inputs]
        extra = [n for n in inputs if n not in self.inputs]
        if missing or extra:
            raise ConfigError(f"OrtRunner: inputs do not match the model's "
                              f"{self.input_names}: missing {missing}, unexpected {extra}")
        feed = {}
        for name, value in inputs.items():
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) \
                else np.asarray(value)
            want = _ORT_TO_NP.get(self.inputs[name])
            if want is not None and arr.dtype != want:
                raise ConfigError(f"OrtRunner: input {name!r} is {arr.dtype}, the model wants "
                                  f"{self.inputs[name]}")
            feed[name] = arr
        return self.session.run(None, feed)


def run_onnx(path: str | os.PathLike, inputs: Mapping[str, np.ndarray | torch.Tensor],
             *, threads: int | None = None) -> list[np.ndarray]:
    """One-shot ``OrtRunner(path, threads).run(inputs)``."""
    return OrtRunner(path, threads).run(inputs)


def ort_u8s8_exact(features: frozenset[str] | None = None) -> bool:
    """Whether onnxruntime's u8 x s8 integer GEMM is exact on this host (``features``: x86
    flags as ``lowbit.hostcpu.host_x86_features`` names them; the host's by default).

    With ``optimization="all"`` a QDQ MatMul with u8 activations and s8 weights becomes QGemm /
    MatMulIntegerToFloat on MLAS's u8s8 kernel, which MLAS picks from CPUID when onnxruntime
    loads (``core/mlas/lib/platform.cpp``, onnxruntime 1.32; the last line that applies wins):

        AVX2                            vpmaddubsw: u8*s8 pairs summed in int16, saturating
        + AVX-VNNI      (avx_vnni)      vpdpbusd: int32 sums, exact
        + AVX-512 F/BW/DQ/VL            vpmaddubsw again (the AVX512Core kernel): saturating
        + AVX512_VNNI   (avx512_vnni)   vpdpbusd: exact
        + AMX-TILE and AMX-INT8         tdpbusd: exact

    A pair of 255 * 127 sums to 64770 > 32767, and the excess is lost: outputs move by many
    steps (37 on a Zen 3, AVX2 only, in ``tests/backends/test_onnxruntime.py``). So: exact on
    Cascade Lake and later Xeons, Alder Lake and later cores, Zen 4 and later; not on Haswell
    to Skylake (Skylake-SP's AVX-512 included) nor Zen 1 to 3. Empty ``features`` (not Linux,
    not x86): False, assume inexact. ``optimization="disable"`` never runs this kernel and is
    exact everywhere.
    (onnxruntime's ``session.x64quantprecision=1``, which moves such weights to the exact u8u8
    kernel, fixes the small test model but fails to load real QDQ models in 1.32: "Attempt to
    replace the existing tensor".)
    """
    f = hostcpu.host_x86_features() if features is None else frozenset(features)
    if {"amx_tile", "amx_int8"} <= f:
        return True
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= f:
        return "avx512_vnni" in f
    return {"avx2", "avx_vnni"} <= f


# ---- agreement -----------------------------------------------------------------------------
# A difference of exactly one step, computed in float32, can read as 1 + a few ulp steps.
STEP_SLACK = 1e-3


def qdq_agreement(fx_out: Any, onnx_out: Any, scale: Any) -> dict[str, float]:
    """How far two outputs on the same quantization grid are apart, in steps of ``scale``.

    Returns ``max_steps`` (max |diff| / scale), ``off_by_one`` (fraction of elements more than
    half a step apart) and ``off_by_more`` (fraction more than one step apart, with a
    ``STEP_SLACK`` allowance for float rounding of the dequantized values), and ``n``.
    ``scale`` is a number or an array broadcastable to the outputs (per-token scales).
    """
    def arr(x: Any) -> np.ndarray:
        return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
                ).astype(np.float64)

    a, b, s = arr(fx_out), arr(onnx_out), arr(scale)
    if a.shape != b.shape:
        raise ValueError(f"qdq_agreement: shapes differ: {a.shape} vs {b.shape}")
    if np.any(s <= 0):
        raise ValueError("qdq_agreement: scale must be positive")
    steps = np.abs(a - b) / s
    n = steps.size
    return {
        "max_steps": float(steps.max()) if n else 0.0,
        "off_by_one": float(np.count_nonzero(steps > 0.5) / n) if n else 0.0,
        "off_by_more": float(np.count_nonzero(steps > 1.0 + STEP_SLACK) / n) if n else 0.0,
        "n": n,
    }
