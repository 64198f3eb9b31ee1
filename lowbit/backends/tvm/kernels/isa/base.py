"""What an instruction set contributes to the u8 x s8 -> s32 GEMM: one ``Isa`` entry.

Every CPU integer kernel (cpu.py, peg.py) computes its int32 accumulator from
16 x 4 blocks of a weight packed once for all instruction sets as ``[N/16, K/4, 16, 4]``
(pack.py). An ``Isa`` says how one block is multiplied by 4 broadcast u8 activations:

    dot form   (``pairs=False``):  C_i32[i]    += sum_{k<4}  A_u8[k] * B_s8[i, k]
    pair form  (``pairs=True``):   C_i32[i, h] += sum_{t<2}  A_u8[2h+t] * B_s8[i, 2h+t]

The pair form is what ``vpmaddwd`` gives (16-bit products summed in pairs into int32) when
there is no 4-deep dot product: the kernel keeps two partial sums per output and adds them
once in its epilogue. Both are exact: no intermediate can saturate (|255 * -128 * 2| < 2^31).

An entry also declares the weight dtype its block intrinsic reads (``weight_dtype``): the dot
form reads the packed s8 bytes; the pair form reads them pre-widened to int16, the same
``[N/16, K/4, 16, 4]`` layout at two bytes per weight, so its inner loop multiplies straight
from memory instead of sign-extending every block again for every row tile (madd.py). The
kernel definitions take the dtype as a parameter (kernels/defs.py ``with_weight_dtype``); the
CPU pipeline widens the s8 parameters once, when the module is loaded (pipelines/cpu.py).

A target gets the first entry of ``isa.ISAS`` whose LLVM ``features`` it has (isa/__init__.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["WEIGHT_DTYPES", "Isa"]

WEIGHT_DTYPES = ("int8", "int16")   # s8 values either way; int16: pre-widened for ``vpmaddwd``


@dataclasses.dataclass(frozen=True)
class Isa:
    """One instruction set's u8 x s8 block product.

    Args:
        name: short key, also the kernel family in logs ("avx512_vnni").
        title: what users read ("AVX-512 VNNI").
        features: LLVM target features that must all be present ("avx512vnni").
        instruction: the instruction(s) one 16x4 block runs, for logs and docs.
        intrin: name of the TVM tensor intrinsic over one block of ``weight_dtype`` weights
            (registered by ``register``).
        pairs: the pair form (two partial sums per output, see module docstring).
        mi_prefs, nt_prefs: register-tile preferences of the default schedules: MI rows by
            NT blocks of 16 columns, the first of each that divides the kernel's extent.
        mnemonic: the instruction the compiled kernel must contain (checked in tests).
        example_mcpu: an LLVM CPU with exactly this family (cross-builds, tests, docs).
        register: ``register(w_dtype=None)`` registers the block intrinsic over weights of
            ``w_dtype`` (default ``weight_dtype``: ``intrin``) with TVM (idempotent) and
            returns its name; ValueError for a dtype the entry does not take.
        weight_dtype: the dtype of the packed weight the entry wants, what the CPU pipeline
            gives its kernels: "int8" (the bytes as packed: dot form) or "int16" (the same
            layout widened once at load: pair form). The pair form still takes s8 weights
            (widened per block in the inner loop, slower) for kernels built directly.
    """

    name: str
    title: str
    features: tuple[str, ...]
    instruction: str
    intrin: str
    pairs: bool
    mi_prefs: tuple[int, ...]
    nt_prefs: tuple[int, ...]
    mnemonic: str
    example_mcpu: str
    register: Callable[..., str] = dataclasses.field(repr=False, compare=False)
    weight_dtype: str = "int8"

    def __post_init__(self) -> None:
        if not self.features or not self.mi_prefs or not self.nt_prefs:
            raise ValueError(f"Isa {self.name!r}: features, mi_prefs and nt_prefs must be "
                             f"non-empty")
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"Isa {self.name!r}: weight_dtype must be one of {WEIGHT_DTYPES}, "
                             f"got {self.weight_dtype!r}")

    @property
    def family(self) -> str:
        """The kernel family name shown in lowering logs: ``u8s8/<isa>``."""
        return f"u8s8/{self.name}"
