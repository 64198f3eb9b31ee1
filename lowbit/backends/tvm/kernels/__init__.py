"""lowbit's integer kernels: one registry of kernel kind x target kind.

    registry.py     KERNEL_ATTR, (kind, target kind) -> implementation, numpy references
    defs.py         the compute definitions (linear_u8s8, linear_u8s8_q, linear_w4a16), the
                    same for every target: what the frontends emit
    references.py   their numpy references (exact integer accumulation)
    cpu.py          CPU (llvm) implementations: hand schedules over an instruction set
    isa/            the instruction sets those schedules are tensorized with (x86: VNNI,
                    AVX-VNNI, AVX-512BW, AVX2); one file + one entry per new set
    bcq.py          the BCQ bit-plane linear (bcq_linear): definition, table-lookup and
                    bit-plane GEMV, strip-decoding GEMM, reference
    peg.py          the PEG group-wise GEMM (linear_u8s8_peg): definition, CPU schedule,
                    reference
    word_bits.py    the per-word mixed-precision gather (tiered_embedding): definition, CPU
                    and CUDA schedules
    cuda.py, .cu    CUDA implementations: launch shells around hand-written device functions

Importing the package registers every implementation. Adding a kernel: its definition (marked
with ``registry.finish``), a ``registry.register(kind, target_kind, impl)`` per target, a
numpy reference; adding a target: one module registering its implementations.
"""

from lowbit.backends.tvm.kernels import (  # noqa: F401  (register)
    bcq,
    cpu,
    cuda,
    peg,
    references,
    word_bits,
)
from lowbit.backends.tvm.kernels.bcq import bcq_linear, reference_bcq_linear
from lowbit.backends.tvm.kernels.cpu import INT8_KINDS, SCHEDULES
from lowbit.backends.tvm.kernels.defs import (
    ACTIVATIONS,
    SMALL_M,
    linear_u8s8,
    linear_u8s8_q,
    linear_w4a16,
)
from lowbit.backends.tvm.kernels.peg import linear_u8s8_peg, reference_linear_u8s8_peg
from lowbit.backends.tvm.kernels.references import (
    reference_activation,
    reference_linear_u8s8,
    reference_linear_u8s8_q,
    reference_linear_w4a16,
)
from lowbit.backends.tvm.kernels.registry import (
    KERNEL_ATTR,
    OPAQUE,
    REFERENCES,
    default_schedule,
    finish,
    kernel_kind,
    reference_options,
)

__all__ = ["ACTIVATIONS", "INT8_KINDS", "KERNEL_ATTR", "OPAQUE", "REFERENCES", "SCHEDULES",
           "SMALL_M", "bcq_linear", "default_schedule", "finish", "kernel_kind", "linear_u8s8",
           "linear_u8s8_peg", "linear_u8s8_q", "linear_w4a16", "reference_activation",
           "reference_bcq_linear", "reference_linear_u8s8", "reference_linear_u8s8_peg",
           "reference_linear_u8s8_q", "reference_linear_w4a16", "reference_options"]
