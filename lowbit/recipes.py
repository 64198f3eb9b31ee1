"""Built-in recipes. Weights: signed symmetric (restricted grid), per channel or per group.
Activations: unsigned affine per tensor (u8, as VNNI wants u8 x s8), or signed per token.

| recipe       | weights               | activations                         | extra sites        |
|--------------|-----------------------|-------------------------------------|--------------------|
| W8A8         | i8 per channel        | u8 per tensor, static (calibrated)  | -                  |
| W8A8_FULL    | i8 per channel        | u8 per tensor, static               | residual sums, o/FFN-out outputs |
| W8A8_DYNAMIC | i8 per channel        | i8 per token, dynamic               | -                  |
| W4A16_G128   | i4 per group of 128   | float                               | -                  |
| W4A8         | i4 per channel        | u8 per tensor, static               | -                  |
"""

from __future__ import annotations

from lowbit.config import PerChannel, PerGroup, PerTensor, PerToken, QuantSpec, Recipe

__all__ = ["W8A8", "W8A8_FULL", "W8A8_DYNAMIC", "W4A16_G128", "W4A8", "BUILTIN", "get"]

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

BUILTIN = {r.name: r for r in (W8A8, W8A8_FULL, W8A8_DYNAMIC, W4A16_G128, W4A8)}


def get(name: str) -> Recipe:
    """A built-in recipe by name (case-insensitive, '-' or '_')."""
    key = name.upper().replace("-", "_")
    if key not in BUILTIN:
        from lowbit.errors import ConfigError

        raise ConfigError(f"unknown recipe {name!r}; built in: {sorted(BUILTIN)}")
    return BUILTIN[key]
