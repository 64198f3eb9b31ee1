"""Built-in recipes. Weights: signed symmetric (restricted grid), per channel or per group.
Activations: unsigned affine per tensor (u8, as VNNI wants u8 x s8), or signed per token.

| recipe       | weights               | activations                         | extra sites        |
|--------------|-----------------------|-------------------------------------|--------------------|
| W8A8         | i8 per channel        | u8 per tensor, static (calibrated)  | -                  |
| W8A8_FULL    | i8 per channel        | u8 per tensor, static               | residual sums, o/FFN-out outputs |
| W8A8_DYNAMIC | i8 per channel        | i8 per token, dynamic               | -                  |
| W4A16_G128   | i4 per group of 128   | float                               | -                  |
| W4A8         | i4 per channel        | u8 per tensor, static               | -                  |
| W8A8_PEG     | i8 per channel        | u8 per tensor; PEG (K=6, permuted) at FFN input, FFN output, residual sums | as W8A8_FULL |
| W3_BCQ       | BCQ, 3 planes, alpha per row and 128 inputs | float                 | -                  |
| W4_BCQ       | BCQ, 4 planes, alpha per row and 128 inputs | float                 | -                  |

W8A8_PEG's six groups need a hidden size divisible by 6 (BERT-base 768, MiniLM 384); other
models get a ConfigError naming both numbers: ``peg_recipe(groups=K)`` picks another K.
"""

from __future__ import annotations

from lowbit.config import (
    BCQ,
    PerChannel,
    PerEmbeddingGroup,
    PerGroup,
    PerTensor,
    PerToken,
    QuantSpec,
    Recipe,
)

__all__ = ["BUILTIN", "PEG_ROLES", "UNIFORM", "W3_BCQ", "W4A8", "W4A16_G128", "W4_BCQ", "W8A8",
           "W8A8_DYNAMIC", "W8A8_FULL", "W8A8_PEG", "get", "peg_recipe"]

_W8 = QuantSpec(bits=8, symmetric=True, granularity=PerChannel(axis=0))
_W4 = QuantSpec(bits=4, symmetric=True, granularity=PerChannel(axis=0))
_W4_G128 = QuantSpec(bits=4, symmetric=True, granularity=PerGroup(size=128))
_A8 = QuantSpec(bits=8, symmetric=False, granularity=PerTensor())
_A8_TOKEN = QuantSpec(bits=8, symmetric=True, granularity=PerToken(), dynamic=True)

W8A8 = Recipe("W8A8", weight=_W8, activation=_A8)
W8A8_FULL = Recipe("W8A8_FULL", weight=_W8, activation=_A8,
                   sites=("residual", "attn.o.output", "ffn.out.output"))
W8A8_DYNAMIC = Recipe("W8A8_DYNAMIC", weight=_W8, activation=_A8_TOKEN)
W4A16_G128 = Recipe("W4A16_G128", weight=_W4_G128, activation=None)
W4A8 = Recipe("W4A8", weight=_W4, activation=_A8)

# PEG (Bondarenko et al., 2021) where the paper puts it: the FFN input, the FFN output and the
# residual sums, the tensors of the residual stream that carry the outlier channels.
PEG_ROLES = ("ffn.in", "ffn.out.output", "residual")


def peg_recipe(groups: int = 6, permute: bool = True, roles: tuple[str, ...] = PEG_ROLES,
               name: str | None = None) -> Recipe:
    """W8A8_FULL with u8 PEG activations (``groups`` groups, range-based permutation if
    ``permute``) at ``roles`` (linear roles: that linear's input; or activation sites)."""
    spec = QuantSpec(bits=8, symmetric=False,
                     granularity=PerEmbeddingGroup(groups=groups, permute=permute))
    return W8A8_FULL.replace(name=name or f"W8A8_PEG{groups}{'' if permute else '_NOPERM'}",
                             activation_overrides=tuple((r, spec) for r in roles))


W8A8_PEG = peg_recipe(6, True, name="W8A8_PEG")

# BCQ (Kwon et al., 2022): binary-coded weights, float activations (lowbit.quant.bcq).
W3_BCQ = Recipe("W3_BCQ", weight=BCQ(bits=3, group=128), activation=None)
W4_BCQ = Recipe("W4_BCQ", weight=BCQ(bits=4, group=128), activation=None)

BUILTIN = {r.name: r for r in (W8A8, W8A8_FULL, W8A8_DYNAMIC, W4A16_G128, W4A8, W8A8_PEG,
                               W3_BCQ, W4_BCQ)}
# the recipes on a uniform integer grid (q/dq ops), without the BCQ ones (bit planes)
UNIFORM = {n: r for n, r in BUILTIN.items() if not isinstance(r.weight, BCQ)}


def get(name: str) -> Recipe:
    """A built-in recipe by name (case-insensitive, '-' or '_')."""
    key = name.upper().replace("-", "_")
    if key not in BUILTIN:
        from lowbit.errors import ConfigError

        raise ConfigError(f"unknown recipe {name!r}; built in: {sorted(BUILTIN)}")
    return BUILTIN[key]
