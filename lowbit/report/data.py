"""What a report shows, as data: each linear (its weight and activation formats, the kernel it
got), each activation site (per-channel ranges on the calibration text, outlier channels), the
size breakdown and the lowering record. ``from_hf`` / ``from_onnx`` fill it, ``plots`` draws
it, ``page`` writes it; ``Report.to_json`` is saved beside the page as ``report.json``.

An outlier channel of a linear's input ``x[t, c]`` (t: every token of every calibration batch)::

    absmax[c] = max_t |x[t, c]|
    outlier(c)  <=>  absmax[c] > OUTLIER_FACTOR * median_c' absmax[c']
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

__all__ = ["OUTLIER_FACTOR", "Linear", "Lowering", "Report", "Site", "SizeRow", "block_of"]

# 6x the median channel: on all-MiniLM-L6-v2 (128 pydoc texts) this marks 1-4 channels of
# every FFN input (the residual stream's outliers PEG groups apart) and none of the attention
# inputs, whose largest channel is at most 5.6x their median.
OUTLIER_FACTOR = 6.0
_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")     # "encoder.layer.0.attention..." -> encoder.layer.0


def block_of(name: str) -> str:
    """The block a linear lies in (its module path up to the first number), or "other"."""
    m = _BLOCK.match(name)
    return m.group(1) if m else "other"


@dataclasses.dataclass
class Linear:
    """One linear layer of the quantized graph."""

    name: str                      # module path ("encoder.layer.0.attention.self.query")
    node: str                      # its name in the lowering log (FX node, ONNX weight)
    in_features: int
    out_features: int
    weight: str                    # "int8 per channel", "int4 groups of 128", "fp32" ...
    weight_bits: float             # 8, 4, 3 (BCQ planes), 32 for a float weight
    activation: str                # "u8 per tensor", "i8 per token (dynamic)", "fp32" ...
    activation_bits: int           # 8, or 32 for a float input
    site: str | None = None        # the Site its input is (Site.key)
    kernel: str | None = None      # what the lowering gave it (linear_u8s8, fp32 ...)
    why: str | None = None         # for a linear left in float: why

    @property
    def quantized(self) -> bool:
        return self.weight_bits < 16


@dataclasses.dataclass
class Site:
    """A tensor that one or more linears read, with its per-channel range on the calibration
    text (``lo[c]``, ``hi[c]``) and the range the quantizer represents (``grid``)."""

    key: str                       # the graph value (FX node / ONNX tensor name)
    readers: list[str]             # Linear.name of every linear reading it
    group: str                     # the block it lies in ("encoder.layer.0"), or "other"
    quantizer: str                 # Linear.activation of its readers
    lo: np.ndarray | None = None   # [C] per-channel minimum (None: not measured)
    hi: np.ndarray | None = None   # [C] per-channel maximum
    grid: tuple[float, float] | None = None   # a per-tensor static quantizer's [min, max]
    note: str = ""                 # why no range was measured

    @property
    def label(self) -> str:
        more = len(self.readers) - 1
        return self.readers[0] + (f" (+{more} more)" if more > 0 else "")

    @property
    def absmax(self) -> np.ndarray:
        return np.maximum(np.abs(self.lo), np.abs(self.hi))

    @property
    def median(self) -> float:
        return float(np.median(self.absmax))

    @property
    def outliers(self) -> list[int]:
        """Channels beyond OUTLIER_FACTOR x the median channel, largest first (none when the
        median channel is all zeros: a ratio to nothing marks nothing)."""
        if self.lo is None or self.median <= 0:
            return []
        a = self.absmax
        idx = np.nonzero(a > OUTLIER_FACTOR * self.median)[0]
        return [int(c) for c in idx[np.argsort(-a[idx])]]

    @property
    def ratio(self) -> float:
        """The largest channel over the median channel (0 when not measured)."""
        if self.lo is None or self.median <= 0:
            return 0.0
        return float(self.absmax.max() / self.median)


@dataclasses.dataclass
class SizeRow:
    component: str                 # "embeddings", "linears int8 per channel (12)", "other"
    float_bytes: int
    quant_bytes: int


@dataclasses.dataclass
class Lowering:
    """What ``lowbit.compile`` recorded (or why it could not)."""

    target: str
    kernel_family: str | None = None
    summary: str = ""              # lowbit.backends.tvm.api.lowering_summary's line
    seconds: float = 0.0
    error: str | None = None       # the compile failed: its message


@dataclasses.dataclass
class Report:
    model: str
    kind: str                      # "Hugging Face folder", "QDQ ONNX file"
    recipe: str
    calibration: str               # "16 texts (pydoc), seq 16, batches of 8"
    linears: list[Linear]
    sites: list[Site]
    sizes: list[SizeRow]
    lowering: Lowering | None = None
    lowering_note: str = ""        # why there is no lowering (--no-compile)
    notes: list[str] = dataclasses.field(default_factory=list)
    lowbit_version: str = ""

    def to_json(self) -> dict[str, Any]:
        sites = []
        for s in self.sites:
            row = {"key": s.key, "readers": s.readers, "group": s.group,
                   "quantizer": s.quantizer, "grid": s.grid, "note": s.note}
            if s.lo is not None:
                row.update(channels=int(s.lo.size), median_absmax=s.median, ratio=s.ratio,
                           outliers=s.outliers, lo=_short(s.lo), hi=_short(s.hi))
            sites.append(row)
        return {"model": self.model, "kind": self.kind, "recipe": self.recipe,
                "calibration": self.calibration, "outlier_factor": OUTLIER_FACTOR,
                "linears": [dataclasses.asdict(x) for x in self.linears], "sites": sites,
                "sizes": [dataclasses.asdict(x) for x in self.sizes],
                "lowering": dataclasses.asdict(self.lowering) if self.lowering else None,
                "lowering_note": self.lowering_note, "notes": self.notes,
                "lowbit_version": self.lowbit_version}


def _short(x: np.ndarray) -> list[float]:
    """Six significant digits: report.json stays small for models of many wide layers."""
    return [float(f"{v:.6g}") for v in x]
