"""Channel families on ONNX graphs, for PegPermute (``peg_permute.py`` says what is folded).

Discovery is ``lowbit.passes.peg_family``, written once over the graph view; ONNX's op
vocabulary (which ops act on the last axis channel by channel) is ``OnnxView.channel_inputs``
(``lowbit.passes.view.onnx_channels``). What is ONNX's own: a shared channel vector (a bias or
gamma the exporter deduplicated) gets a permuted copy (``copies``), not a gather, which would
hide the linears' bias Adds from spotting.
"""

from __future__ import annotations

import onnx_ir as ir

from lowbit.passes import peg_family as _family
from lowbit.passes.view.onnx import OnnxView

__all__ = ["Family"]


class Family(_family.Family):
    """The channel family of the value ``seed`` (in ``graph``: by default the seed's)."""

    def __init__(self, seed: ir.Value, graph: ir.Graph | None = None):
        super().__init__(OnnxView(graph if graph is not None else seed.graph), seed)

    def settle_params(self) -> None:
        """``settle``, shared channel vectors copied."""
        self.settle(copy_vectors=True)
