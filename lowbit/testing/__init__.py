"""Equivalence and structure checks for lowbit graphs: public API for tests and users' CI.

Numbers (``compare.py``)
    ``assert_equivalent(before, after, inputs, rtol=, atol=)`` compares every output element-wise,
    ``before`` being the reference::

        |after - before| <= atol + rtol * |before|      (NaN must sit where NaN sits)

    ``sqnr`` / ``assert_sqnr`` measure ``10 * log10(sum(ref^2) / sum((ref - test)^2))`` in dB, the
    floor that fake-quant graphs are held to. Tolerances are always the caller's: nothing here
    has a default tolerance.
Structure (``structure.py``)
    ``op_counts`` / ``assert_op_counts``, ``assert_untouched`` and ``assert_idempotent`` check the
    pass contract of ``lowbit/passes/infra.py``: ``pass_(graph) -> PassResult(graph, modified)``
    with an honest ``modified``.
Running (``run.py``) and inputs (``inputs.py``)
    Models are ``torch.nn.Module``s, ``fx.GraphModule``s, plain callables, or ONNX models (a path,
    an ``onnx.ModelProto`` or an ``onnx_ir.Model``) run by onnxruntime on CPU
    (``lowbit.backends.onnxruntime.OrtRunner``). The ``assert_*`` helpers deep-copy modules and
    graphs first, so nothing the caller passes is mutated. Outputs are flattened (tuples, lists,
    dicts, Hugging Face ``ModelOutput``s) and named by their path, e.g. ``last_hidden_state`` or
    ``1.0``; a lone tensor is ``output``; ONNX outputs keep their graph names. Generated inputs
    (``inputs=None``) come from the model's own metadata (``inputs.py`` gives the rules).

``quantize_outputs`` (a graph transform, in ``lowbit.passes.fx.quantize_outputs``) is re-exported
here for the agreement tests that use it.
"""

from lowbit.passes.fx.quantize_outputs import quantize_outputs
from lowbit.testing.compare import (
    EquivalenceReport,
    OutputStats,
    assert_equivalent,
    assert_sqnr,
    compare,
    sqnr,
)
from lowbit.testing.inputs import (  # the DEFAULT_*: importable as before, not in __all__
    DEFAULT_BATCH,  # noqa: F401
    DEFAULT_SEQ,  # noqa: F401
    DEFAULT_VOCAB,  # noqa: F401
    InputSpec,
    input_specs,
    make_inputs,
)
from lowbit.testing.run import run_model
from lowbit.testing.structure import (
    assert_idempotent,
    assert_op_counts,
    assert_untouched,
    op_counts,
)

__all__ = [
    "EquivalenceReport", "InputSpec", "OutputStats", "assert_equivalent", "assert_idempotent",
    "assert_op_counts", "assert_sqnr", "assert_untouched", "compare", "input_specs",
    "make_inputs", "op_counts", "quantize_outputs", "run_model", "sqnr",
]
