"""Standard QDQ ONNX export of quantized FX graphs (FX -> ONNX).

``export_onnx`` re-exports a converted graph (``lowbit.passes.fx.convert_qdq``) with
``torch.onnx.export(dynamo=True)`` at opset 21, translating each ``quantized_decomposed`` op
with ``lowbit.passes.onnx.qdq_ops.TRANSLATIONS`` (the table and where ONNX rounds differently
from torch are documented there). Outputs keep the model's own names where it has them
(``last_hidden_state``, ``pooler_output``, ``logits``: a Hugging Face output's fields), not
the exporter's (``layer_norm_12``, ``tanh``). The exported model is then cleaned by the passes of
``lowbit.passes.onnx.qdq_cleanup`` (integers move, no value changes: Cast folding on weight
scales, Transpose folding into weight DequantizeLinears, real INT4 / UINT4 weights), checked
(no QuantizeLinear on a constant; weight DequantizeLinears read initializers; ``onnx.checker``
with ``full_check``) and written atomically (``lowbit.passes.onnx.save_onnx``).

BCQ graphs (``lowbit::bcq_linear``, from a BCQ recipe) export each layer as the custom-domain
node ``lowbit.BCQLinear`` with its decomposition as a model-local function
(``lowbit.passes.onnx.bcq``), the form the ONNX BCQ pass writes; onnxruntime runs it as is.

Run the file with ``lowbit.backends.onnxruntime.OrtRunner``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import onnx
import onnx_ir as ir
import torch

from lowbit.errors import ConfigError, OnnxExportError
from lowbit.passes.onnx.bcq import BCQ_DOMAIN, bcq_function, bcq_nodes
from lowbit.passes.onnx.edit import dq_nodes
from lowbit.passes.onnx.graph_utils import const_array
from lowbit.passes.onnx.load import save_onnx
from lowbit.passes.onnx.qdq_cleanup import QDQ_CLEANUP
from lowbit.passes.onnx.qdq_ops import TRANSLATIONS
from lowbit.passes.onnx.tt import TT_PROP
from lowbit.passes.onnx.word_bits import add_word_bits_functions
from lowbit.passes.onnx.word_ops import TRANSLATIONS as WORD_TRANSLATIONS
from lowbit.passes.tt import TT_META
from lowbit.warning_filters import quiet

__all__ = ["OnnxExportError", "export_onnx"]

log = logging.getLogger("lowbit.export.onnx")


def _split_example(example_inputs: Any) -> tuple[tuple, dict]:
    ex = example_inputs
    if isinstance(ex, Mapping):
        return (), dict(ex)
    if isinstance(ex, torch.Tensor):
        return (ex,), {}
    if (isinstance(ex, tuple) and len(ex) == 2 and isinstance(ex[0], (tuple, list))
            and isinstance(ex[1], Mapping)):
        return tuple(ex[0]), dict(ex[1])  # the (args, kwargs) pair lowbit.capture stores
    if isinstance(ex, (tuple, list)):
        return tuple(ex), {}
    raise ConfigError(f"example_inputs must be a tensor, a tuple of positional inputs, a dict of "
                      f"keyword inputs or an (args, kwargs) pair, got {type(ex).__name__}")


def export_onnx(qgm: torch.nn.Module, path: str | os.PathLike, example_inputs: Any = None, *,
                dynamic_shapes: Any = None, opset: int = 21) -> pathlib.Path:
    """Export a quantized FX graph to a standard QDQ ONNX file (see the module docstring).

    Args:
        qgm: the converted GraphModule (``quantized_decomposed`` q/dq ops); not modified.
        path: the ``.onnx`` file to write; replaced atomically, never left half-written.
        example_inputs: inputs to trace with; defaults to those ``lowbit.capture`` stored in
            ``qgm.meta["lowbit_example_inputs"]``.
        dynamic_shapes: as for ``torch.export``; defaults to ``qgm.meta["lowbit_dynamic_shapes"]``.
        opset: 21 or later (INT4 and blocked DequantizeLinear need 21).

    Returns:
        The path written.

    Raises:
        ConfigError: no example inputs, or an opset below 21.
        OnnxExportError: torch.onnx.export failed, or the result fails onnx.checker.
    """
    if not isinstance(opset, int) or opset < 21:
        raise ConfigError(f"export_onnx: opset must be >= 21 (INT4 weights and blocked "
                          f"DequantizeLinear need it), got {opset!r}")
    meta = getattr(qgm, "meta", {}) or {}
    if example_inputs is None:
        example_inputs = meta.get("lowbit_example_inputs")
        if example_inputs is None:
            raise ConfigError("export_onnx: no example_inputs given and the graph carries none "
                              "(graphs from lowbit.capture keep theirs in "
                              "meta['lowbit_example_inputs']); pass example_inputs=")
    args, kwargs = _split_example(example_inputs)
    if dynamic_shapes is None:
        # the capture's dynamic shapes, when the example has the capture's structure
        captured = meta.get("lowbit_dynamic_shapes")
        c_args, c_kwargs = _split_example(meta.get("lowbit_example_inputs") or ((), {}))
        if captured is not None and len(c_args) == len(args) and set(c_kwargs) == set(kwargs):
            dynamic_shapes = captured
    path = pathlib.Path(path)
    try:
        with warnings.catch_warnings(), quiet("torch-onnx-torchvision-ops",
                                              "torch-leafspec-deepcopy",
                                              "onnxscript-fold-evaluation-failed"):
            warnings.filterwarnings("ignore", message=".*training mode.*")
            program = torch.onnx.export(
                qgm, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                dynamic_shapes=dynamic_shapes, output_names=_output_names(qgm),
                custom_translation_table=TRANSLATIONS | WORD_TRANSLATIONS,
                optimize=True, verbose=False)
    except Exception as e:  # torch raises many types; all mean "could not export"
        reason = "\n    ".join(str(e).strip().splitlines()[:12]) or type(e).__name__
        raise OnnxExportError(f"torch.onnx.export failed for {type(qgm).__name__}: "
                              f"{type(e).__name__}:\n    {reason}") from e
    model = program.model
    graph = model.graph
    if bcq_nodes(graph):        # lowbit::bcq_linear ops: the file carries their decomposition
        fn = bcq_function(int(model.opset_imports.get("", opset)))
        model.functions[fn.identifier()] = fn
        model.opset_imports[BCQ_DOMAIN] = 1
    add_word_bits_functions(model)   # lowbit::tiered_* ops: likewise
    if meta.get("lowbit_recipe"):    # as the ONNX passes record it (lowbit.onnx_quantize)
        model.metadata_props["lowbit.recipe"] = meta["lowbit_recipe"]
    if meta.get("lowbit_source_path"):   # the model folder it came from (lowbit quantize)
        model.metadata_props["lowbit.source"] = meta["lowbit_source_path"]
    if meta.get(TT_META):   # TT layers (tensor_train): lowbit.quantize reads the materialized
        model.metadata_props[TT_PROP] = json.dumps(meta[TT_META])   # ones (quantize_tt)
    folded, transposed, packed = (cleanup(model).count for cleanup in QDQ_CLEANUP)
    _check_weight_dqs(graph)
    log.info("export_onnx: %d DequantizeLinear, %d QuantizeLinear; folded %d Cast(s) and %d "
             "Transpose(s); %d INT4/UINT4 weight(s)", len(dq_nodes(graph)),
             sum(n.op_type == "QuantizeLinear" for n in graph), folded, transposed, packed)
    try:
        save_onnx(model, path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxExportError(f"exported model fails onnx.checker: {e}") from e
    return path


def _output_names(qgm: torch.nn.Module) -> list[str] | None:
    """The model-level names of the graph's outputs (``last_hidden_state``, ``pooler_output``,
    ``logits``) when it returns named fields; None (the exporter's names) for a lone tensor, a
    tuple, or names that repeat."""
    from lowbit.capture import output_names

    names = output_names(getattr(qgm, "_out_spec", None))
    if not names or any(n == "output" or n.split(".")[-1].isdigit() for n in names):
        return None
    return names if len(set(names)) == len(names) else None


def _check_weight_dqs(graph: ir.Graph) -> None:
    """No QuantizeLinear may read a constant (weights arrive pre-quantized), and every weight
    DequantizeLinear must read its scale / zero point from initializers."""
    for node in graph:
        if node.op_type == "QuantizeLinear" and const_array(node.inputs[0]) is not None:
            raise OnnxExportError(f"{node.name}: QuantizeLinear on a constant float tensor; "
                                  f"weights should arrive pre-quantized (ConvertToQDQ)")
        if node.op_type == "DequantizeLinear" and node.inputs[0].is_initializer():
            for v in node.inputs[1:]:
                if v is not None and not v.is_initializer() and v.producer() is not None \
                        and v.producer().op_type != "Constant":
                    raise OnnxExportError(
                        f"{node.name}: weight {node.inputs[0].name!r} dequantized with a "
                        f"computed {v.name!r} ({v.producer().op_type}); expected an initializer")
