"""Transformer spotting on torch.fx graphs: ``lowbit.passes.spot`` (the algorithm, once for
every IR) over ``lowbit.passes.view.fx.FxView``. Kept as the FX import path; ``all_norms``
lists every norm of a GraphModule, with or without a role."""

from lowbit.passes.spot import find_transformer
from lowbit.passes.view.fx import all_norms

__all__ = ["all_norms", "find_transformer"]
