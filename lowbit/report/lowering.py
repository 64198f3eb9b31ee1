"""The lowering record: compile the quantized graph (or the QDQ ONNX file) with
``lowbit.compile`` and read which kernel each linear got from the module's ``meta["lowering"]``
(``(node, kernel)``, or ``(node, "fp32: why")`` for a linear left in float)::

    linear_u8s8       u8 x s8 -> s32 GEMM, per-tensor static input
    linear_u8s8_q     the same with a requantizing epilogue (u8 out for the next linear)
    linear_u8s8_peg   one s32 accumulator per PEG group
    linear_w4a16      int4 weights, float input
    bcq_linear        binary-coded bit planes

A linear the log does not name was not matched by the integer lowering at all (a Hugging Face
Conv1D ``addmm``, say): it runs as the float math of its q/dq ops. A failed compile is kept on
the page (the other sections stand) and said on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lowbit.report.data import Linear, Lowering

__all__ = ["KERNELS", "lower"]

KERNELS = ("linear_u8s8", "linear_u8s8_q", "linear_u8s8_peg", "linear_w4a16", "bcq_linear")
NOT_MATCHED = "not matched by the integer lowering: runs as the float math of its q/dq ops"


def lower(graph: Any, example: Any, target: Any, linears: list[Linear]) -> Lowering:
    """Compile ``graph`` at ``example``'s shapes for ``target``; set every linear's ``kernel``
    and, for a float one, ``why`` (matched by ``Linear.node``)."""
    from lowbit.backends.tvm.api import lowering_summary
    from lowbit.compiler import compile as compile_graph
    from lowbit.errors import CompileError

    t0 = time.perf_counter()
    try:
        module = compile_graph(graph, target=target, example_inputs=example)
    except CompileError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"[lowbit] warning: the compile failed, the report says why: {first}",
              file=sys.stderr)
        return Lowering(str(target), error=str(e))
    meta = module.meta
    log = {name: kind for name, kind in meta["lowering"]}
    for x in linears:
        kind = log.get(x.node)
        if kind in KERNELS:
            x.kernel, x.why = kind, None
        else:
            x.kernel = "fp32"
            x.why = NOT_MATCHED if kind is None else kind.removeprefix("fp32: ")
    return Lowering(meta["target"], meta.get("kernel_family"),
                    lowering_summary(meta["lowering"], meta.get("kernel_family")),
                    time.perf_counter() - t0)
