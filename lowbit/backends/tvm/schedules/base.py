"""What every rule set shares: target gating once, the kernel registry rule, the guard.

Rules are dlight ``ScheduleRule``s: ``apply(func, target, tunable)`` returns a schedule, or
None when the PrimFunc is not its own, and ``ApplyDefaultSchedule`` tries the next rule.

    TargetRule    a rule for some TVM target kinds (``KINDS``): ``apply`` declines every other
                  target and anything that is not a PrimFunc, then calls ``schedule``
    LowbitKernel  a lowbit kernel (``lowbit.kernel`` attribute): the implementation the kernel
                  registry holds for (kind, target kind) (kernels/registry.py), on any target
    Guarded       a rule whose schedule primitive failed on an unexpected PrimFunc declines it
                  (the next rule tries) instead of failing the whole compile
"""

from __future__ import annotations

import logging

import tvm
from tvm import tirx
from tvm.s_tir import dlight as dl

from lowbit.backends.tvm.kernels import KERNEL_ATTR, default_schedule

__all__ = ["Guarded", "LowbitKernel", "TargetRule", "apply_rules", "prim_funcs",
           "put_tuned"]

log = logging.getLogger("lowbit.tvm")


class TargetRule(dl.ScheduleRule):
    """A schedule rule for the TVM target kinds in ``KINDS`` (module docstring)."""

    KINDS: tuple[str, ...] = ()

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name not in self.KINDS:
            return None
        return self.schedule(func, target, tunable)

    def schedule(self, func: tirx.PrimFunc, target, tunable):
        raise NotImplementedError


class LowbitKernel(dl.ScheduleRule):
    """Apply the implementation the kernel registry holds for a lowbit kernel on this target
    (None: not a lowbit kernel, or no implementation for this target kind, or it declined)."""

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or KERNEL_ATTR not in func.attrs:
            return None
        return default_schedule(func, target)


class Guarded(dl.ScheduleRule):
    """``rule``, declining the PrimFuncs it fails on (module docstring); a PrimFunc no rule
    takes stays unscheduled. With ``loud``, a lowbit kernel the rule fails on for a reason
    other than a shape it refuses by design (ValueError) is logged as a warning: it falls to
    the generic rules, correct but several times slower."""

    def __init__(self, rule: dl.ScheduleRule, loud: bool = False):
        self.rule = rule
        self.loud = loud

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as e:  # noqa: BLE001  (TVM raises ScheduleError, TVMError, ...)
            loud = (self.loud and not isinstance(e, ValueError)
                    and isinstance(func, tirx.PrimFunc) and KERNEL_ATTR in func.attrs)
            (log.warning if loud else log.debug)("%s declined a PrimFunc: %s",
                                                 type(self.rule).__name__, e)
            return None


def prim_funcs(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def put_tuned(mod: tvm.IRModule, tuned) -> None:
    """Put the ``tuned`` PrimFuncs (name -> scheduled, from tune.tune_module) in place."""
    for gv in list(mod.get_global_vars()) if tuned else []:
        if gv.name_hint in tuned:
            mod[gv] = tuned[gv.name_hint].with_attr("tirx.is_scheduled", True)


def apply_rules(mod: tvm.IRModule, target, rules: list) -> tvm.IRModule:
    """Schedule every still-unscheduled PrimFunc of ``mod`` with the first of ``rules`` that
    takes it; returns the module and leaves the rest as they are."""
    with target:
        return dl.ApplyDefaultSchedule(*rules)(mod)
