"""Lowering: quantized patterns -> lowbit's integer kernels, planned once for both frontends.

    int8.py           the numerics of every int8 kernel: zero-point corrections and scales
                      (W8A8 = one group of PEG), the s8 -> u8 shift, contiguous PEG groups
    peg.py            the PEG planner: per-axis activations -> group GEMM arrays or a reason
    pack.py           weight packing ([N/16, K/4, 16, 4] for every target, int4 two per byte)
    ops.py            ``lowbit::`` torch ops, one per kernel (their eager form is the exact
                      integer reference)
    legalize.py       FX pass: q/dq + linear -> lowbit::linear_u8s8[_q|_peg] / linear_w4a16
    fuse_siblings.py  FX pass: int8 linears sharing an input -> one wide GEMM + split

The ONNX frontend matches its own patterns (frontends/onnx_qdq.py) and calls the same
planners, so a model lowers to the same kernels with the same arrays from either frontend.
"""
