"""Schedule rule sets, one per target kind, in the dlight style: each rule returns None for a
PrimFunc that is not its own and the next rule tries.

    base.py    TargetRule (target gating, once), LowbitKernel (the kernel registry's
               implementation for the target), Guarded (a failing rule declines)
    cpu.py     LLVM: LowbitKernel, fp32 Matmul, RowReduction (rfactored norms / softmax),
               dlight cpu GEMV / Reduction, Injective fallback
    cuda.py    CUDA: LowbitKernel, then dlight's GPU rules
"""
