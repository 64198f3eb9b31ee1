"""Equivalence and structure checks for lowbit graphs: public API for tests and users' CI.

Numbers
    ``assert_equivalent(before, after, inputs, rtol=, atol=)`` compares every output element-wise,
    ``before`` being the reference::

        |after - before| <= atol + rtol * |before|      (NaN must sit where NaN sits)

    ``sqnr`` / ``assert_sqnr`` measure ``10 * log10(sum(ref^2) / sum((ref - test)^2))`` in dB, the
    floor that fake-quant graphs are held to. Tolerances are always the caller's: nothing here
    has a default tolerance.
Structure
    ``op_counts`` / ``assert_op_counts``, ``assert_untouched`` and ``assert_idempotent`` check the
    pass contract of ``lowbit/passes/infra.py``: ``pass_(graph) -> PassResult(graph, modified)``
    with an honest ``modified``.

Models are ``torch.nn.Module``s, ``fx.GraphModule``s, plain callables, or ONNX models (a path, an
``onnx.ModelProto`` or an ``onnx_ir.Model``) run by onnxruntime on CPU. The ``assert_*`` helpers
deep-copy modules and graphs first, so nothing the caller passes is mutated. Outputs are
flattened (tuples, lists, dicts, Hugging Face ``ModelOutput``s) and named by their path, e.g.
``last_hidden_state`` or ``1.0``; a lone tensor is ``output``; ONNX outputs keep their graph names.

Generated inputs (``inputs=None``) come from the model's own metadata: placeholder
``meta['val']`` of an ``fx.GraphModule`` from ``torch.export``, or ONNX graph input types. A
symbolic dimension becomes 1 when batch-like (its name contains "batch", or it is axis 0 of a
tensor of rank >= 2) and 8 otherwise. Float inputs are standard normal; integer or bool inputs
with "mask" in their name are ones; other integer inputs (token ids, token types, positions) are
uniform in ``[0, vocab)``, vocab being the row count of the embedding table the input indexes
(``aten.embedding``, or an ONNX ``Gather`` on an initializer) where one is found, else 100.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import math
import operator
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import torch
import torch.fx
import torch.utils._pytree as pytree

from lowbit.errors import ConfigError, VerifyError
from lowbit.passes.infra import PassResult

__all__ = [
    "EquivalenceReport", "InputSpec", "OutputStats", "assert_equivalent", "assert_idempotent",
    "assert_op_counts", "assert_sqnr", "assert_untouched", "compare", "input_specs",
    "make_inputs", "op_counts", "quantize_outputs", "run_model", "sqnr",
]

DEFAULT_VOCAB = 100
DEFAULT_BATCH = 1
DEFAULT_SEQ = 8
_WORST_SHOWN = 5
_DIFF_LINES_SHOWN = 40

Outputs = list[tuple[str, np.ndarray]]


# ---------------------------------------------------------------------------- inputs

@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (a str is a symbolic dimension), dtype and, for index
    inputs, the row count of the table it indexes (None when unknown)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: torch.dtype
    vocab: int | None = None

    def concrete_shape(self, batch: int = DEFAULT_BATCH, seq: int = DEFAULT_SEQ) -> tuple[int, ...]:
        """Fixed dimensions as they are; symbolic ones -> ``batch`` if batch-like, else ``seq``."""
        rank = len(self.shape)
        return tuple(d if isinstance(d, int) else batch if _batch_like(d, axis, rank) else seq
                     for axis, d in enumerate(self.shape))


def _batch_like(dim_name: str, axis: int, rank: int) -> bool:
    return "batch" in dim_name.lower() or (axis == 0 and rank >= 2)


def input_specs(model: Any) -> list[InputSpec]:
    """The inputs ``model`` declares: an fx.GraphModule from torch.export or an ONNX model.

    Raises:
        VerifyError: the model carries no input metadata (pass inputs explicitly instead).
    """
    if _is_onnx(model):
        return _onnx_specs(_onnx_proto(model))
    if isinstance(model, torch.fx.GraphModule):
        return _fx_specs(model)
    raise VerifyError(
        f"{type(model).__name__} carries no input metadata (only fx.GraphModules from "
        f"torch.export and ONNX models do); pass inputs explicitly"
    )


def make_inputs(specs: Sequence[InputSpec], *, seed: int = 0, batch: int = DEFAULT_BATCH,
                seq: int = DEFAULT_SEQ) -> dict[str, torch.Tensor]:
    """Seeded random inputs for ``specs``, by name (see the module docstring for the rules)."""
    gen = torch.Generator().manual_seed(seed)
    return {s.name: _random_tensor(s, s.concrete_shape(batch, seq), gen) for s in specs}


def _random_tensor(spec: InputSpec, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if spec.dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(spec.dtype)
    if "mask" in spec.name.lower():
        return torch.ones(shape, dtype=spec.dtype)
    if spec.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randint(0, spec.vocab or DEFAULT_VOCAB, shape, generator=gen, dtype=spec.dtype)


def _fx_specs(gm: torch.fx.GraphModule) -> list[InputSpec]:
    specs = []
    for node in gm.graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise VerifyError(
                f"placeholder {node.name!r} has no meta['val'] tensor (is this GraphModule from "
                f"torch.export?); pass inputs explicitly"
            )
        shape = tuple(d if isinstance(d, int) else str(d) for d in val.shape)
        specs.append(InputSpec(str(node.target), shape, val.dtype, _fx_vocab(gm, node)))
    return specs


def _fx_vocab(gm: torch.fx.GraphModule, node: torch.fx.Node) -> int | None:
    for user in node.users:
        if user.target is torch.ops.aten.embedding.default and user.args[1] is node:
            weight = user.args[0]
            if weight.op == "get_attr":
                return operator.attrgetter(weight.target)(gm).shape[0]
            return weight.meta["val"].shape[0]
    return None


def _onnx_specs(proto: onnx.ModelProto) -> list[InputSpec]:
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    vocab = {n.input[1]: initializers[n.input[0]].dims[0] for n in graph.node
             if n.op_type == "Gather" and n.domain in ("", "ai.onnx") and n.input[0] in initializers
             and all(a.name != "axis" or a.i == 0 for a in n.attribute)}
    specs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in tensor_type.shape.dim)
        dtype = torch.from_numpy(np.empty(0, np_dtype)).dtype
        specs.append(InputSpec(value.name, shape, dtype, vocab.get(value.name)))
    return specs


def _specs_of(*models: Any) -> list[InputSpec]:
    reasons = []
    for model in models:
        try:
            return input_specs(model)
        except VerifyError as e:
            reasons.append(str(e))
    raise VerifyError("cannot generate inputs: " + "; ".join(reasons))


# ---------------------------------------------------------------------------- running

def run_model(model: Any, inputs: Any) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``inputs`` (a tensor, a tuple of positional inputs or a dict by
    name) under ``torch.no_grad``; return its flattened outputs by name, in output order.

    The model is run as it is, not copied.
    """
    return dict(_runner(model)(inputs))


def _runner(model: Any) -> Callable[[Any], Outputs]:
    if _is_onnx(model):
        return _onnx_runner(model)
    if not callable(model):
        raise VerifyError(f"cannot run a {type(model).__name__}: expected a torch module, a "
                          f"callable or an ONNX model")
    return lambda inputs: _flatten_outputs(_call_torch(model, inputs))


def _clone(model: Any) -> Any:
    return copy.deepcopy(model) if isinstance(model, torch.nn.Module) else model


def _call_torch(fn: Callable, inputs: Any) -> Any:
    inputs = pytree.tree_map(_to_torch, inputs)
    with torch.no_grad():
        if isinstance(inputs, torch.Tensor):
            return fn(inputs)
        if isinstance(inputs, Mapping):
            args, kwargs = _fx_arguments(fn, inputs) if _is_exported(fn) else ((), inputs)
            return fn(*args, **kwargs)
        return fn(*inputs)


def _is_exported(fn: Any) -> bool:
    """An unlifted torch.export module: its in_spec says which inputs are positional."""
    return isinstance(fn, torch.fx.GraphModule) and getattr(fn, "_in_spec", None) is not None


def _fx_arguments(gm: torch.fx.GraphModule, inputs: Mapping[str, Any]) -> tuple[tuple, dict]:
    names = [str(n.target) for n in gm.graph.find_nodes(op="placeholder")]
    _check_names(names, inputs)
    return pytree.tree_unflatten([inputs[n] for n in names], gm._in_spec)


def _check_names(expected: Sequence[str], inputs: Mapping[str, Any]) -> None:
    if set(expected) != set(inputs):
        raise VerifyError(f"the model takes inputs {list(expected)}, got {list(inputs)}")


def _to_torch(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    return x.clone() if isinstance(x, torch.Tensor) else x


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _flatten_outputs(out: Any) -> Outputs:
    leaves, _ = pytree.tree_flatten_with_path(out)
    return [(_path_name(path), _to_numpy(leaf)) for path, leaf in leaves
            if isinstance(leaf, (torch.Tensor, np.ndarray, int, float))]


def _path_name(path: tuple) -> str:
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return ".".join(parts) or "output"


def _is_onnx(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike, onnx.ModelProto, ir.Model))


def _onnx_proto(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return ir.serde.serialize_model(model)
    _check_file(model)
    try:
        return onnx.load(os.fspath(model), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError ... for one meaning
        raise VerifyError(f"{model}: not a readable ONNX model: {type(e).__name__}: {e}") from e


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise VerifyError(f"{path}: no such file")


def _onnx_runner(model: Any) -> Callable[[Any], Outputs]:
    import onnxruntime as ort  # imported here: only ONNX checks need it

    if isinstance(model, (str, os.PathLike)):
        _check_file(model)
        source: Any = os.fspath(model)
    else:
        source = _onnx_proto(model).SerializeToString()
    try:
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        name = source if isinstance(source, str) else "the ONNX model"
        raise VerifyError(f"{name}: onnxruntime cannot load it: {e}") from e
    in_names = [i.name for i in session.get_inputs()]
    out_names = [o.name for o in session.get_outputs()]

    def run(inputs: Any) -> Outputs:
        return list(zip(out_names, session.run(None, _onnx_feed(inputs, in_names))))
    return run


def _onnx_feed(inputs: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        _check_names(names, inputs)
        return {n: _to_numpy(inputs[n]) for n in names}
    values = [inputs] if isinstance(inputs, (torch.Tensor, np.ndarray)) else list(inputs)
    if len(values) != len(names):
        raise VerifyError(f"the ONNX model takes {len(names)} inputs {list(names)}, "
                          f"got {len(values)}")
    return {n: _to_numpy(v) for n, v in zip(names, values)}


# ---------------------------------------------------------------------------- comparing

@dataclasses.dataclass(frozen=True)
class OutputStats:
    """Element-wise comparison of one output, ``after`` against the reference ``before``.

    ``worst`` holds up to five ``(index, before, after)``: mismatched elements first, then by
    absolute error. ``max_rel_err`` is inf where ``before`` is 0 and ``after`` is not.
    """

    name: str
    shape: tuple[int, ...]
    after_shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    mismatched: int
    worst: tuple[tuple[tuple[int, ...], float, float], ...]
    input_set: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def passed(self) -> bool:
        return self.shape == self.after_shape and self.mismatched == 0

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatched / self.numel if self.numel else 0.0

    def __str__(self) -> str:
        if self.shape != self.after_shape:
            return f"{self.name}: shape {self.shape} before, {self.after_shape} after  FAIL"
        head = (f"{self.name}: shape {self.shape}  max abs err {self.max_abs_err:.3g}  "
                f"max rel err {self.max_rel_err:.3g}  mismatched {self.mismatched}/{self.numel} "
                f"({100 * self.mismatch_fraction:.3g}%)  {'ok' if self.passed else 'FAIL'}")
        if self.passed:
            return head
        rows = [f"      {list(i)}: before {b:.8g}  after {a:.8g}  (abs err {abs(a - b):.3g})"
                for i, b, a in self.worst]
        return "\n".join([head, "    worst elements:", *rows])


def compare(before: Any, after: Any, *, rtol: float, atol: float, name: str = "output",
            input_set: int = 0) -> OutputStats:
    """Compare two arrays/tensors: ``|after - before| <= atol + rtol * |before|``, NaN == NaN."""
    ref, test = _as_float64(before), _as_float64(after)
    if ref.shape != test.shape:
        return OutputStats(name, ref.shape, test.shape, math.inf, math.inf, ref.size, (), input_set)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        same = (test == ref) | (np.isnan(test) & np.isnan(ref))
        err = np.where(same, 0.0, np.abs(test - ref))
        err[np.isnan(err)] = np.inf  # NaN on one side only
        bad = ~same & ~(np.isfinite(err) & (err <= atol + rtol * np.abs(ref)))
        rel = np.where(err == 0, 0.0, err / np.abs(ref))
    rel[np.isnan(rel)] = np.inf
    worst = tuple((tuple(int(i) for i in np.unravel_index(k, ref.shape)),
                   float(ref.flat[k]), float(test.flat[k])) for k in _worst(err, bad))
    return OutputStats(name, ref.shape, test.shape, float(err.max(initial=0.0)),
                       float(rel.max(initial=0.0)), int(bad.sum()), worst, input_set)


def _as_float64(x: Any) -> np.ndarray:
    return _to_numpy(x).astype(np.float64)


def _worst(err: np.ndarray, bad: np.ndarray) -> np.ndarray:
    pool = np.flatnonzero(bad) if bad.any() else np.arange(err.size)
    if pool.size > _WORST_SHOWN:
        pool = pool[np.argpartition(-err.flat[pool], _WORST_SHOWN - 1)[:_WORST_SHOWN]]
    return pool[np.argsort(-err.flat[pool], kind="stable")]


@dataclasses.dataclass(frozen=True)
class EquivalenceReport:
    """Per-output statistics of one ``assert_equivalent`` call (``seeds``: None when the
    caller gave the inputs)."""

    rtol: float
    atol: float
    outputs: tuple[OutputStats, ...]
    seeds: tuple[int, ...] | None

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __str__(self) -> str:
        source = "given inputs" if self.seeds is None else f"random inputs, seeds {list(self.seeds)}"
        head = (f"{len(self.outputs)} output(s), |after - before| <= atol + rtol * |before| "
                f"(rtol={self.rtol:g}, atol={self.atol:g}), {source}:")
        several = self.seeds is not None and len(self.seeds) > 1
        rows = [f"  {f'[input set {o.input_set}] ' if several else ''}{o}" for o in self.outputs]
        return "\n".join([head, *rows])


def assert_equivalent(before: Any, after: Any, inputs: Any = None, *, rtol: float, atol: float,
                      seed: int = 0, num_inputs: int = 1) -> EquivalenceReport:
    """Assert that ``after`` computes what ``before`` computes, on every output.

    Args:
        before, after: modules, GraphModules, callables or ONNX models (``before`` is the
            reference); modules are deep-copied first.
        inputs: a tensor, a tuple of positional inputs or a dict by name; None generates
            ``num_inputs`` seeded sets (seeds ``seed, seed + 1, ...``) from input metadata.
        rtol, atol: required; see the module docstring for the rule.

    Raises:
        AssertionError: an output differs; the message reports every output and the worst
            elements of each failing one.
        VerifyError: a model cannot be run, or inputs cannot be generated or fed.
    """
    _check_tolerance("rtol", rtol)
    _check_tolerance("atol", atol)
    if num_inputs < 1 or (inputs is not None and num_inputs != 1):
        raise ConfigError(f"num_inputs={num_inputs}: must be >= 1, and 1 when inputs are given")
    run_before, run_after = _runner(_clone(before)), _runner(_clone(after))
    seeds = None if inputs is not None else tuple(range(seed, seed + num_inputs))
    if seeds is None:
        sets = [inputs]
    else:
        specs = _specs_of(before, after)
        sets = [make_inputs(specs, seed=s) for s in seeds]
    stats = []
    for i, x in enumerate(sets):
        pairs = _pair_outputs(run_before(x), run_after(x))
        stats += [compare(b, a, rtol=rtol, atol=atol, name=n, input_set=i) for n, b, a in pairs]
    report = EquivalenceReport(rtol, atol, tuple(stats), seeds)
    if not report.passed:
        raise AssertionError(f"outputs differ: {report}")
    return report


def _check_tolerance(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _pair_outputs(before: Outputs, after: Outputs) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if len(before) != len(after):
        raise AssertionError(f"before has {len(before)} output(s) {[n for n, _ in before]}, "
                             f"after has {len(after)} {[n for n, _ in after]}")
    return [(nb if nb == na else f"{nb} / {na}", b, a)
            for (nb, b), (na, a) in zip(before, after)]


def sqnr(reference: Any, test: Any) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 * log10(sum(ref^2) / sum((ref-test)^2))``.

    +inf when identical, -inf when the reference is all zeros and the test is not, NaN when
    either holds a NaN.
    """
    ref, tst = _as_float64(reference), _as_float64(test)
    if ref.shape != tst.shape:
        raise VerifyError(f"sqnr: shapes differ: reference {ref.shape}, test {tst.shape}")
    noise = float(np.sum((ref - tst) ** 2))
    if noise == 0.0:
        return math.inf
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(np.sum(ref ** 2) / noise))


def assert_sqnr(reference_module: Any, test_module: Any, inputs: Any,
                min_db: float) -> dict[str, float]:
    """Assert every output of ``test_module`` is within ``min_db`` dB SQNR of the reference.

    ``inputs=None`` generates seed-0 inputs from metadata. Returns the SQNR of each output.
    """
    run_ref, run_test = _runner(_clone(reference_module)), _runner(_clone(test_module))
    if inputs is None:
        inputs = make_inputs(_specs_of(reference_module, test_module), seed=0)
    pairs = _pair_outputs(run_ref(inputs), run_test(inputs))
    dbs = {name: sqnr(r, t) for name, r, t in pairs}
    if all(db >= min_db for db in dbs.values()):
        return dbs
    rows = [f"  {name}: shape {r.shape}  SQNR {dbs[name]:.2f} dB  "
            f"{'ok' if dbs[name] >= min_db else 'FAIL'}" for name, r, _ in pairs]
    raise AssertionError("\n".join([f"SQNR below {min_db} dB:", *rows]))


# ---------------------------------------------------------------------------- structure

def op_counts(graph: Any) -> Counter[str]:
    """Operator counts of an FX graph (GraphModule or ExportedProgram) or an ONNX model.

    FX keys: ``str(target)`` for ATen/custom ops (``aten.linear.default``), the function name
    for Python functions (``getitem``), ``method:NAME`` and ``module:CLASS``; torch.export's
    input guard (``_guards_fn``) is not an op and is not counted. ONNX keys: ``OpType`` in the
    default domain, ``domain::OpType`` otherwise, subgraphs included.
    """
    if isinstance(graph, torch.export.ExportedProgram):
        graph = graph.graph_module
    if isinstance(graph, torch.fx.GraphModule):
        return Counter(_fx_op_name(graph, n) for n in graph.graph.nodes
                       if n.op.startswith("call_") and n.target != "_guards_fn")
    if _is_onnx(graph):
        counts: Counter[str] = Counter()
        _count_onnx(_onnx_proto(graph).graph, counts)
        return counts
    raise TypeError(f"op_counts takes an fx.GraphModule, ExportedProgram or ONNX model, "
                    f"got {type(graph).__name__}")


def _fx_op_name(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return f"method:{node.target}"
    if node.op == "call_module":
        return f"module:{type(gm.get_submodule(node.target)).__name__}"
    if isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _count_onnx(graph: onnx.GraphProto, counts: Counter[str]) -> None:
    for node in graph.node:
        default = node.domain in ("", "ai.onnx")
        counts[node.op_type if default else f"{node.domain}::{node.op_type}"] += 1
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _count_onnx(sub, counts)


def assert_op_counts(graph: Any, expected: Mapping[str, int], *,
                     exact: bool = False) -> Counter[str]:
    """Assert the ops named in ``expected`` occur that many times (0: absent). ``exact`` also
    refuses any op not named. Returns all counts."""
    counts = op_counts(graph)
    keys = set(expected) | (set(counts) if exact else set())
    wrong = [f"  {k}: expected {expected.get(k, 0)}, got {counts.get(k, 0)}"
             for k in sorted(keys) if expected.get(k, 0) != counts.get(k, 0)]
    if wrong:
        found = [f"  {k}: {v}" for k, v in sorted(counts.items())]
        raise AssertionError("\n".join(["op counts differ:", *wrong, "ops in the graph:", *found]))
    return counts


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """A graph's printed structure and a digest of each of its tensors (name -> digest)."""

    code: str
    tensors: dict[str, str]


def _snapshot(graph: Any) -> _Snapshot:
    if isinstance(graph, torch.fx.GraphModule):
        named = itertools.chain(graph.named_parameters(), graph.named_buffers(),
                                ((n.target, operator.attrgetter(n.target)(graph))
                                 for n in graph.graph.find_nodes(op="get_attr")))
        tensors = {name: _digest(t.dtype, t.shape, _tensor_bytes(t))
                   for name, t in named if isinstance(t, torch.Tensor)}
        return _Snapshot(graph.graph.python_code("self").src, tensors)
    proto = _onnx_proto(graph)
    structure = onnx.ModelProto()
    structure.CopyFrom(proto)
    del structure.graph.initializer[:]
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    tensors = {n: _digest(a.dtype, a.shape, a.tobytes()) for n, a in arrays.items()}
    return _Snapshot(onnx.printer.to_text(structure), tensors)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _digest(dtype: Any, shape: Sequence[int], data: bytes) -> str:
    return f"{dtype} {list(shape)} sha1:{hashlib.sha1(data).hexdigest()[:12]}"


def _snapshot_diff(a: _Snapshot, b: _Snapshot) -> str:
    lines = list(difflib.unified_diff(a.code.splitlines(), b.code.splitlines(), "before", "after",
                                      lineterm="", n=1))
    if len(lines) > _DIFF_LINES_SHOWN:
        lines = lines[:_DIFF_LINES_SHOWN] + [f"... ({len(lines) - _DIFF_LINES_SHOWN} more lines)"]
    for name in sorted(set(a.tensors) | set(b.tensors)):
        if a.tensors.get(name) != b.tensors.get(name):
            lines.append(f"tensor {name}: {a.tensors.get(name, 'absent')} -> "
                         f"{b.tensors.get(name, 'absent')}")
    return "\n".join(lines)


def _copy_graph(graph: Any) -> Any:
    if isinstance(graph, ir.Model):  # deepcopy recurses too deep on onnx_ir graphs
        return ir.serde.deserialize_model(ir.serde.serialize_model(graph))
    if isinstance(graph, (torch.fx.GraphModule, onnx.ModelProto)):
        return copy.deepcopy(graph)
    raise TypeError(f"expected an fx.GraphModule, onnx.ModelProto or onnx_ir.Model, "
                    f"got {type(graph).__name__}")


def _run_pass(pass_: Callable[[Any], PassResult], graph: Any) -> PassResult:
    result = pass_(graph)
    if not isinstance(result, PassResult):
        raise TypeError(f"{_pass_name(pass_)} returned {type(result).__name__}, "
                        f"not PassResult")
    return result


def _pass_name(pass_: Any) -> str:
    return getattr(pass_, "name", None) or type(pass_).__name__


def assert_untouched(pass_: Callable[[Any], PassResult], graph: Any) -> None:
    """Assert ``pass_`` leaves ``graph`` (run on a copy) alone and reports ``modified=False``."""
    work = _copy_graph(graph)
    before = _snapshot(work)
    result = _run_pass(pass_, work)
    diff = _snapshot_diff(before, _snapshot(result.graph))
    problems = (["reported modified=True"] if result.modified else []) + (
        [f"changed the graph:\n{diff}"] if diff else [])
    if problems:
        raise AssertionError(f"{_pass_name(pass_)} must leave this graph alone, but it "
                             + " and ".join(problems))


def assert_idempotent(pass_: Callable[[Any], PassResult], graph: Any) -> Any:
    """Assert a second run of ``pass_`` on its own output reports ``modified=False`` and changes
    nothing, and that a first run reporting ``modified=False`` changed nothing either.

    Runs on a copy of ``graph``; returns the graph after the first run.
    """
    name = _pass_name(pass_)
    work = _copy_graph(graph)
    original = _snapshot(work)
    first = _run_pass(pass_, work)
    once = _snapshot(first.graph)
    diff = _snapshot_diff(original, once)
    if diff and not first.modified:
        raise AssertionError(f"{name} reported modified=False but changed the graph:\n{diff}")
    second = _run_pass(pass_, first.graph)
    diff = _snapshot_diff(once, _snapshot(second.graph))
    if second.modified or diff:
        raise AssertionError(
            f"{name} is not idempotent: on its own output it reported "
            f"modified={second.modified}" + (f" and changed the graph:\n{diff}" if diff else "")
        )
    return first.graph


def quantize_outputs(gm, scale: float, zero_point: int):
    """Append a static u8 quantize/dequantize (``scale``, ``zero_point``) to every tensor
    output of the FX graph ``gm`` (modified in place and returned): two implementations of
    one quantized graph then end on the same output grid, and their agreement can be counted
    in output steps."""
    import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed

    qd = torch.ops.quantized_decomposed
    out = next(n for n in gm.graph.nodes if n.op == "output")

    def wrap(n):
        if not isinstance(n, torch.fx.Node):
            return n
        args = (scale, zero_point, 0, 255, torch.uint8)
        with gm.graph.inserting_before(out):
            q = gm.graph.call_function(qd.quantize_per_tensor.default, (n, *args))
            return gm.graph.call_function(qd.dequantize_per_tensor.default, (q, *args))

    out.args = (torch.fx.node.map_aggregate(out.args[0], wrap),)
    gm.recompile()
    return gm
