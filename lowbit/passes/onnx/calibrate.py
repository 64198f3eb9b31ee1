"""Calibration on ONNX graphs: activation ranges from runtime runs of the float model.

For each static activation site t (``plan_sites``), over batches b = 1..B:

    observer_t.update(t(b))                 t(b): the site tensor, fetched as an extra output
    lo_t, hi_t = observer_t.range()
    s_t, z_t   = qparams_from_range(lo_t, hi_t, qmin, qmax, symmetric)

with the observers of ``lowbit.quant.observers.make_observer`` and the numerics of
``lowbit.quant.numerics`` (PEG sites: per-channel observers and ``lowbit.quant.peg``
grouping, channels sorted by their own range when ``permute``; scale / zero point are then
[C] vectors): the same objects FX calibration feeds, so the same data gives the
same ranges up to float rounding between torch and onnxruntime. Memory is constant in B: each
batch's outputs are dropped once the observers have seen them. The model is not changed: the
extra outputs live only in the serialized copy onnxruntime runs (in memory, or in a temporary
folder with external data for models over ~1.8 GB or loaded with external data).

Batches are dicts ``{input name: array or tensor}`` (entries the model does not take are
dropped, with a log line), tuples of positional inputs, or one tensor (as for
``lowbit.calibrate``); a NaN / inf reaching an observer raises CalibrationError naming the
site and batch.

The runtime is the caller's (passes know no backend): ``runner`` is a factory of ``Runner``s,
``lowbit.backends.onnxruntime.OrtRunner`` in lowbit's own entry points::

    qparams = calibrate(model, plan.static(), batches, runner=OrtRunner)
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir
import torch

from lowbit.config import PerEmbeddingGroup
from lowbit.errors import CalibrationError
from lowbit.passes.onnx.insert_qdq import Site
from lowbit.passes.onnx.load import EXTERNAL_DATA_BYTES, has_external_data, initializer_bytes
from lowbit.progress import bar as progress_bar
from lowbit.progress import say
from lowbit.quant.numerics import qparams_from_range
from lowbit.quant.observers import make_observer
from lowbit.quant.peg import spec_qparams

__all__ = ["Runner", "RunnerFactory", "calibrate", "observe", "qparams"]

log = logging.getLogger("lowbit.passes.onnx")


class Runner(Protocol):
    """What calibration needs of an ONNX runtime session (``OrtRunner`` is one)."""

    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: Mapping[str, Any]) -> list[np.ndarray]:
        """Outputs in ``output_names`` order for ``{input name: array or tensor}``."""


RunnerFactory = Callable[..., Runner]
"""Called as ``runner(model, threads, optimization="basic")``: ``model`` serialized bytes or a
file path, ``threads`` intra-op threads or None (the runtime's default); "basic" asks for
constant folding and redundant-node removal only, so the observed tensors are the float
graph's own (no fusion changes their numbers)."""


@contextlib.contextmanager
def _with_outputs(model: ir.Model, values: Sequence[ir.Value]) -> Iterator[Any]:
    """A serialized copy of ``model`` that also outputs ``values`` (bytes, or a file path)."""
    graph = model.graph
    added = [v for v in dict.fromkeys(values) if not v.is_graph_output()]
    untyped = [v for v in added if v.type is None]
    for v in untyped:
        v.type = ir.TensorType(ir.DataType.FLOAT)
    graph.outputs.extend(added)
    try:
        if has_external_data(model) or initializer_bytes(model) > EXTERNAL_DATA_BYTES:
            with tempfile.TemporaryDirectory(prefix="lowbit-calib-") as tmp:
                path = pathlib.Path(tmp) / "calib.onnx"
                ir.save(model, path, external_data="calib.onnx.data")
                _drop_outputs(graph, added)
                added = []
                yield str(path)
        else:
            yield ir.to_proto(model).SerializeToString()
    finally:
        _drop_outputs(graph, added)
        for v in untyped:
            v.type = None


def _drop_outputs(graph: ir.Graph, added: list) -> None:
    # pop() one by one: slice deletion leaves the values marked as graph outputs (onnx_ir 1.1)
    for _ in added:
        graph.outputs.pop()


def _feed(runner: Runner, batch: Any, ignored: set) -> dict[str, Any]:
    """``batch`` as ``{input name: value}``. Dict entries the model does not take (a tokenizer's
    ``token_type_ids`` for a model exported without them) are dropped, once logged."""
    if isinstance(batch, dict):
        extra = set(batch) - set(runner.input_names)
        if extra - ignored:
            log.info("calibration: ignoring input(s) the model does not take: %s",
                     sorted(extra - ignored))
            ignored |= extra
        return {k: v for k, v in batch.items() if k not in extra}
    args = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    if len(args) != len(runner.input_names):
        raise CalibrationError(f"calibration batch has {len(args)} positional input(s); the "
                               f"model takes {runner.input_names}")
    return dict(zip(runner.input_names, args))


def calibrate(model: ir.Model, sites: Sequence[Site], batches: Iterable[Any], *,
              runner: RunnerFactory, progress: bool = True, threads: int | None = None
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Observe ``sites`` (static activation sites of ``plan_sites``) over ``batches`` run by
    ``runner`` (``OrtRunner``); returns ``{site name: (scale f32, zero point i64)}`` for
    ``InsertQDQ``. (``observe`` then ``qparams``, for callers that work on the ranges in
    between.)

    Raises:
        CalibrationError: no batches, a batch that does not fit the model's inputs, or NaN/inf.
    """
    return qparams(sites, observe(model, sites, batches, runner=runner, progress=progress,
                                  threads=threads))


def observe(model: ir.Model, sites: Sequence[Site], batches: Iterable[Any], *,
            runner: RunnerFactory, progress: bool = True, threads: int | None = None
            ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The calibrated ranges ``{site name: (lo, hi)}`` of the static ``sites`` (per channel,
    [C] each, at PEG sites; scalars elsewhere). Raises as ``calibrate``."""
    sites = [s for s in sites if not s.spec.dynamic]
    if not sites:
        return {}
    observers = {s.name: make_observer(s.spec.observer, s.name, qmin=s.spec.qmin,
                                       qmax=s.spec.qmax, symmetric=s.spec.symmetric,
                                       per_channel=isinstance(s.spec.granularity,
                                                              PerEmbeddingGroup))
                 for s in sites}
    count, t0 = 0, time.perf_counter()
    with _with_outputs(model, [s.value for s in sites]) as src:
        session = runner(src, threads, optimization="basic")
        index = {name: i for i, name in enumerate(session.output_names)}
        ignored: set = set()
        for batch in progress_bar(batches, desc="calibrating (onnxruntime)", unit="batch",
                                  enabled=progress):
            outs = session.run(_feed(session, batch, ignored))
            for s in sites:
                observers[s.name].update(torch.from_numpy(outs[index[s.value.name]]))
            del outs
            count += 1
    if count == 0:
        raise CalibrationError("calibration data is empty: give at least one batch "
                               f"({len(sites)} activation quantizers need ranges)")
    say(f"calibrated on {count} batch(es) in {time.perf_counter() - t0:.1f} s "
        f"({len(sites)} activation observers)", enabled=progress)
    return {s.name: observers[s.name].range() for s in sites}


def qparams(sites: Sequence[Site], ranges: dict, orders: dict | None = None
            ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{site name: (scale, zero point)}`` from ``observe``'s ranges; PEG sites group their
    channels by ``orders[name]`` when given (``peg_permute.peg_orders``), else as their spec
    says (``lowbit.quant.peg.spec_qparams``)."""
    out, orders = {}, orders or {}
    for s in sites:
        if s.spec.dynamic:
            continue
        lo, hi = ranges[s.name]
        if isinstance(s.spec.granularity, PerEmbeddingGroup):   # PEG: per-channel [C] vectors
            out[s.name] = spec_qparams(lo, hi, s.spec, orders.get(s.name), site=s.name)
        else:
            out[s.name] = qparams_from_range(lo, hi, s.spec.qmin, s.spec.qmax,
                                             s.spec.symmetric)
    return out
