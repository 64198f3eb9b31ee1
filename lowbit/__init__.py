"""lowbit: compiler-style graph passes that quantize and compress transformer models and lower
them into Apache TVM integer kernels.

    gm = lowbit.capture(model, example_inputs)
    tmap = lowbit.find_transformer(gm)
"""

from lowbit import config, errors
from lowbit.capture import capture
from lowbit.passes.infra import Pass, PassResult, Pipeline
from lowbit.passes.patterns import TransformerMap

__version__ = "0.1.0"

__all__ = ["capture", "find_transformer", "config", "errors", "Pass", "PassResult", "Pipeline",
           "TransformerMap", "__version__"]


def find_transformer(graph) -> TransformerMap:
    """Spot the transformer structure of a captured graph (FX GraphModule)."""
    from lowbit.passes.fx.spot import find_transformer as _fx

    return _fx(graph)
