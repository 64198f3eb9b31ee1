"""Channel families on FX graphs, for PegPermute (``peg_permute.py`` says what is folded).

Discovery is ``lowbit.passes.peg_family``, written once over the graph view, from the seed
PEG quantizer; the ATen op vocabulary (which ops act on the last axis channel by channel,
which reads are order-free) is ``FxView.channel_inputs`` / ``order_free``
(``lowbit.passes.view.fx_channels``). A parameter read outside the family gets a gather
(``aten.index_select``), a channel vector too.
"""

from __future__ import annotations

from torch import fx

from lowbit.passes.peg_family import Family
from lowbit.passes.peg_family import discover as _discover
from lowbit.passes.view.fx import LINEARS, FxView
from lowbit.passes.view.fx_channels import NORMS, linear_bias

__all__ = ["LINEARS", "NORMS", "Family", "bias_of", "discover"]


def bias_of(node: fx.Node) -> list[fx.Node]:
    """The bias a linear node adds itself (``linear(x, W, b)``, ``addmm(b, x, W)``)."""
    return linear_bias(None, node)


def discover(gm: fx.GraphModule, seed: fx.Node) -> Family:
    """The settled family of the quantizer node ``seed`` over a fresh view of ``gm``."""
    return _discover(FxView(gm), seed, copy_vectors=False)
