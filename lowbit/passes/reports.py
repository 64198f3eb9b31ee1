"""What the scale-folding and PEG passes report, and the names they give: shared by the FX and
the ONNX twin of each pass, so both return the same types and name things alike.

This module imports no IR (FX and ONNX passes never import each other: see the import-linter
contracts in pyproject.toml); the pass modules re-export what they use from here.
"""

from __future__ import annotations

import dataclasses

from lowbit.passes.infra import PassResult
from lowbit.roles import SMOOTHQUANT_ROLES

__all__ = ["DEFAULT_ROLES", "PRODUCER_HINTS", "SCALE_PREFIX", "PegReport", "ScaleReport",
           "scale_name"]

# A channel-scale parameter (FX get_attr) or initializer (ONNX) is named SCALE_PREFIX + linear.
SCALE_PREFIX = "lowbit_scale_"
# The linears SmoothQuantScales scales by default, in both IRs.
DEFAULT_ROLES = SMOOTHQUANT_ROLES
# Why a producer that is neither a norm nor a linear cannot take 1/a, by consumer role.
PRODUCER_HINTS = {
    "attn.o": "the attention context (1/a would fold exactly into v's output rows through "
              "softmax(qk^T)v, not handled here)",
    "ffn.out": "the FFN activation (non-linear; in a gated MLP act(gate) * up it would fold "
               "into up's output rows, not handled here)",
}


def scale_name(name: str) -> str:
    """The parameter name of the scale a pair for the linear ``name`` gets."""
    return SCALE_PREFIX + "".join(c if c.isalnum() else "_" for c in name)


@dataclasses.dataclass
class ScaleReport(PassResult):
    """PassResult plus what was done (``done``: scale names) and what was refused, why."""

    done: list[str] = dataclasses.field(default_factory=list)
    kept: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PegReport(PassResult):
    """PassResult plus, per folded family: its PEG sites, channel count, how many parameters
    absorbed the permutation, and the explicit gathers left (where, why)."""

    families: list[dict] = dataclasses.field(default_factory=list)

    @property
    def gathers(self) -> list[tuple[str, str]]:
        return [g for f in self.families for g in f["gathers"]]
