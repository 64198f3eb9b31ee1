"""Index bounds of module inputs: the range each input must stay in for every gather it drives
to read (or, for scatters, write) inside its table.

TVM's gathers do not check their indices: ``take`` in mode "fast" (what both importers emit for
embeddings and ONNX Gather), ``index_tensor``, ``gather_elements``, ``gather_nd`` and their
scatter twins read ``table[idx]`` along an axis of extent ``n`` as they are told; an index
outside ``[0, n)`` reads another buffer's memory or segfaults. When the indices are a module
input ``x`` passed only through ops whose output values are a subset of their input values
(integer astype, reshape, expand_dims, squeeze, permute_dims, broadcast_to, slices, repeat, tile,
concat/split with constants), every read is in bounds iff::

    lo <= min(x)  and  max(x) <= hi,      lo = 0, hi = n - 1

which ``CompiledModule`` checks on the host before the VM call. Negative indices are refused
(torch embedding refuses them; "fast" take does no wrapping) except where the graph wraps them
itself, as the ONNX importer does for Gather: ``idx' = where(idx < 0, idx + n, idx)``, then
``lo = -n``. A cast to a narrower integer type on the way (int64 ids -> int8 would wrap 200
to -56) intersects the range with that type's. An input driving several gathers gets the
intersection of their ranges. Ranges are stricter than needed where only part of an input is
used (a slice): safe, never looser.

Result, per input (by the Relax parameter name, as in ``meta["inputs"]``)::

    {"input_ids": {"min": 0, "max": 30521, "table": "p_embeddings_word_embeddings_weight"}}

Handled: the gathers above in ``main``'s bindings (takes in modes "wrap", "clip", "nan" cannot
leave their table and are skipped), and each ``call_tir`` of a kernel declaring its index
operands (``KERNEL_INDEX_ATTR`` on the PrimFunc: ``[[index arg, table arg, table axis], ..]``;
the per-word gather of kernels/word_bits.py clamps its ids and declares them so they are
checked all the same): an index arg into an axis of extent n is bounded to ``[0, n - 1]``.
Not bounded, with a ``UnsafeIndexWarning`` naming them:
indices computed from an input by arithmetic (RoBERTa's ``cumsum(mask) + pad`` position ids),
tables of unknown extent; such models still run unchecked. Control flow (``relax.If``) and
gathers inside called Relax functions are not searched (the importers emit neither).
"""

from __future__ import annotations

import warnings

import numpy as np
import tvm
from tvm import relax

__all__ = ["KERNEL_INDEX_ATTR", "UnsafeIndexWarning", "input_bounds"]

KERNEL_INDEX_ATTR = "lowbit.index_operands"     # kernels/word_bits.py INDEX_OPERANDS

# ops whose output values all come from their first argument (or its tuple fields)
_PRESERVING = {"relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.permute_dims",
               "relax.broadcast_to", "relax.flatten", "relax.strided_slice", "relax.repeat",
               "relax.tile", "relax.flip", "relax.split", "relax.dynamic_strided_slice"}
_JOINING = {"relax.concat", "relax.stack"}
# ops whose result depends on their argument's shape (static here), not on its values
_SHAPE_ONLY = {"relax.shape_of", "relax.zeros_like", "relax.ones_like"}
_GATHERS = {"relax.take", "relax.gather_elements", "relax.scatter_elements", "relax.gather_nd",
            "relax.scatter_nd", "relax.index_tensor", "relax.index_put"}


class UnsafeIndexWarning(UserWarning):
    """A gather's indices depend on a module input in a way the boundary check cannot bound."""


def _static(shape) -> list[int] | None:
    try:
        return [int(d) for d in shape.values]
    except (TypeError, AttributeError, ValueError):
        return None


def _describe(data: relax.Expr) -> str:
    if isinstance(data, relax.Var):
        return str(data.name)
    return f"a {getattr(data.ty, 'dtype', '?')}{_static(getattr(data.ty, 'shape', None))} tensor"


def _gathers(call: relax.Call, value_of) -> list[tuple[relax.Expr, int | None, str]]:
    """``(indices, extent of the indexed axis or None, table)`` for each index operand."""
    name, args, attrs = call.op.name, call.args, call.attrs
    if name not in _GATHERS:
        return []
    shape = _static(getattr(args[0].ty, "shape", None))
    table = _describe(args[0])

    def extent(axes) -> int | None:
        if shape is None:
            return None
        try:
            return min(shape[a] for a in axes) if axes else None
        except IndexError:
            return None

    if name == "relax.take":
        if str(attrs.mode) != "fast":
            return []
        axis = attrs.axis
        return [(args[1], extent([0] if axis is None else [int(axis)]), table)]
    if name in ("relax.gather_elements", "relax.scatter_elements"):
        return [(args[1], extent([int(attrs.axis)]), table)]
    if name in ("relax.gather_nd", "relax.scatter_nd"):
        b = int(attrs.batch_dims) if name == "relax.gather_nd" else 0
        k = _static(args[1].ty.shape)
        # one bound for every coordinate: the smallest indexed extent (stricter where they differ)
        return [(args[1], extent(range(b, b + k[-1])) if k else None, table)]
    if name in ("relax.index_tensor", "relax.index_put"):
        idx = value_of(args[1])
        fields = list(idx.fields) if isinstance(idx, relax.Tuple) else []
        return [(f, extent([i]), table) for i, f in enumerate(fields)]
    return []


def _kernel_gathers(call: relax.Call, mod: tvm.IRModule | None
                    ) -> list[tuple[relax.Expr, int | None, str]]:
    """``_gathers`` of a ``call_tir`` whose kernel declares its index operands."""
    if mod is None or _op(call) != "relax.call_tir" or not isinstance(call.args[1], relax.Tuple):
        return []
    func = dict(mod.functions_items()).get(call.args[0])
    if not isinstance(func, tvm.tirx.PrimFunc) or KERNEL_INDEX_ATTR not in func.attrs:
        return []
    args, out = list(call.args[1].fields), []
    for idx, tbl, axis in ((int(a) for a in e) for e in func.attrs[KERNEL_INDEX_ATTR]):
        shape = _static(getattr(args[tbl].ty, "shape", None))
        n = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        out.append((args[idx], n, _describe(args[tbl])))
    return out


class _Walk:
    """Dataflow over ``main``'s bindings: ``exact[v] = (input, wrap, lo, hi)`` when every value
    of ``v`` is a value of that input (``wrap``: the extent negatives were wrapped by, or 0;
    ``[lo, hi]``: the values that pass the casts on the way unchanged), ``deps[v]`` the inputs
    ``v`` depends on in any way."""

    def __init__(self, func: relax.Function, num_inputs: int, mod: tvm.IRModule | None = None):
        self.mod = mod
        self.params = list(func.params[:num_inputs])
        self.exact: dict = {p: (str(p.name), 0, -np.inf, np.inf) for p in self.params}
        self.deps: dict = {p: frozenset([str(p.name)]) for p in self.params}
        self.values: dict = {}
        self.bounds: dict[str, dict] = {}
        self.unsafe: list[str] = []
        for block in func.body.blocks:
            for b in block.bindings:
                self.bind(b.var, b.value)

    def value_of(self, e):
        while isinstance(e, relax.Var) and e in self.values:
            e = self.values[e]
        return e

    def src(self, e):
        return self.exact.get(e) if isinstance(e, relax.Var) else None

    def depends(self, e) -> frozenset:
        return frozenset().union(*(self.deps.get(v, ()) for v in relax.analysis.free_vars(e)))

    def bind(self, var: relax.Var, value: relax.Expr) -> None:
        self.values[var] = value
        self.deps[var] = frozenset() if _op(value) in _SHAPE_ONLY else self.depends(value)
        src = self.follow(value)
        if src is not None:
            self.exact[var] = src
        if _op(value) is not None:
            for idx, n, table in (_gathers(value, self.value_of)
                                  + _kernel_gathers(value, self.mod)):
                self.gather(idx, n, table, value.op.name)

    def follow(self, value):
        """The (input, wrap, lo, hi) all of ``value``'s values come from, or None."""
        if isinstance(value, relax.Var):
            return self.src(value)
        if isinstance(value, relax.TupleGetItem):
            return self.src(value.tuple_value)
        name = _op(value)
        if name is None:
            return None
        args = value.args
        if name in _PRESERVING:
            return self.src(args[0])
        if name == "relax.astype":
            src, dtype = self.src(args[0]), str(value.attrs.dtype)
            if src is None or not dtype.startswith(("int", "uint")):
                return None
            info = np.iinfo(np.dtype(dtype))
            return (src[0], src[1], max(src[2], int(info.min)), min(src[3], int(info.max)))
        if name in _JOINING:
            fields = self.value_of(args[0])
            fields = list(fields.fields) if isinstance(fields, relax.Tuple) else [args[0]]
            srcs = {self.src(f) for f in fields if self.depends(f)}
            return srcs.pop() if len(srcs) == 1 and None not in srcs else None
        if name == "relax.where":
            return self.wrapped(*args)
        return None

    def wrapped(self, cond, if_neg, x):
        """``where(x < 0, x + e, x)``: x's values when non-negative; negatives wrapped by e."""
        src, c = self.src(x), self.value_of(cond)
        if src is None or not (_op(c) == "relax.less"
                               and c.args[0].same_as(x) and _int_const(c.args[1]) == 0):
            return None
        add = self.value_of(if_neg)
        e = None
        if _op(add) == "relax.add" and add.args[0].same_as(x):
            e = self.extent_value(add.args[1])
        return (src[0], e or 0, src[2], src[3])

    def extent_value(self, e) -> int | None:
        """A constant, or ``take(shape_to_tensor(shape_of(D)), axis)`` with D's shape static."""
        e = self.value_of(e)
        if _op(e) == "relax.astype":
            e = self.value_of(e.args[0])
        if _int_const(e) is not None:
            return _int_const(e)
        if _op(e) == "relax.take":
            st = self.value_of(e.args[0])
            axis = _int_const(e.args[1])
            if axis is not None and _op(st) == "relax.shape_to_tensor":
                so = self.value_of(st.args[0])
                if _op(so) == "relax.shape_of":
                    shape = _static(so.args[0].ty.shape)
                    return shape[axis] if shape and -len(shape) <= axis < len(shape) else None
        return None

    def gather(self, idx, n: int | None, table: str, op: str) -> None:
        src = self.src(idx)
        if src is None or n is None:
            inputs = self.depends(idx)
            if inputs:
                why = "of unknown extent" if src is not None else "computed from"
                self.unsafe.append(f"{op} of {table}: indices {why} input(s) {sorted(inputs)}")
            return
        name, wrap, cast_lo, cast_hi = src
        lo = max(-wrap if 0 < wrap <= n else 0, cast_lo)
        hi = min(n - 1, cast_hi)
        old = self.bounds.get(name)
        if old is None:
            self.bounds[name] = {"min": int(lo), "max": int(hi), "table": table}
        else:
            self.bounds[name] = {"min": int(max(lo, old["min"])), "max": int(min(hi, old["max"])),
                                 "table": table if hi < old["max"] else old["table"]}


def _op(e) -> str | None:
    """The operator name of a call to a Relax op, else None."""
    if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
        return str(e.op.name)
    return None


def _int_const(e) -> int | None:
    if isinstance(e, tvm.ir.GenericConst):
        v = e.value.numpy()
        if v.size == 1 and v.dtype.kind in "iu":
            return int(v.reshape(()))
    return None


def input_bounds(mod: tvm.IRModule, num_inputs: int) -> dict[str, dict]:
    """``{input name: {"min", "max", "table"}}`` for the first ``num_inputs`` parameters of
    ``mod["main"]`` that drive gathers (module docstring); warns about gathers it cannot bound."""
    walk = _Walk(mod["main"], num_inputs, mod)
    for what in walk.unsafe:
        warnings.warn(f"{what}: not checked at the module boundary; out-of-range values read "
                      f"outside the table", UnsafeIndexWarning, stacklevel=2)
    return walk.bounds
