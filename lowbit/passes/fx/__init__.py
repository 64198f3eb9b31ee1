"""Passes over torch.fx GraphModules captured by ``lowbit.capture``."""

from lowbit.passes.fx.spot import find_transformer

__all__ = ["find_transformer"]
