"""Per-channel ranges of the tensors the linears read, measured on the calibration text::

    lo[c] = min_t x[t, c],   hi[c] = max_t x[t, c]

over every token ``t`` of every batch, padding included, as the quantizer's observer saw them:
with a forward pre-hook on the float model's module of each site's first reader
(``torch_ranges``), or as extra outputs of an ONNX file run by onnxruntime (``ort_ranges``;
the extra outputs live only in the serialized copy it runs).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit import progress
from lowbit.errors import ConfigError
from lowbit.report.data import Site

__all__ = ["merge_range", "ort_ranges", "torch_ranges"]

ORT_BYTES = 1_800_000_000     # a larger model goes to onnxruntime as a file (protobuf: < 2 GB)


def merge_range(site: Site, x: np.ndarray) -> None:
    """Widen ``site``'s per-channel range by ``x`` (any shape, channels last)."""
    x = x.reshape(-1, x.shape[-1])
    lo, hi = x.min(axis=0), x.max(axis=0)
    if site.lo is None:
        site.lo, site.hi = lo.astype(np.float64), hi.astype(np.float64)
    else:
        site.lo, site.hi = np.minimum(site.lo, lo), np.maximum(site.hi, hi)


def _hook(site: Site):
    def record(_module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            merge_range(site, args[0].detach().float().cpu().numpy())
    return record


def torch_ranges(model: torch.nn.Module, sites: list[Site], batches: Iterable[dict], *,
                 total: int | None = None) -> int:
    """Fill every site's ``lo`` / ``hi`` (or its ``note``) by running ``batches`` through
    ``model``; returns the number of batches."""
    hooks, count, t0 = [], 0, time.perf_counter()
    try:
        for site in sites:
            try:
                module: Any = model.get_submodule(site.readers[0])
            except AttributeError:
                site.note = f"{site.readers[0]} is not a module of the float model"
                continue
            hooks.append(module.register_forward_pre_hook(_hook(site)))
        with torch.no_grad():
            for batch in progress.bar(batches, total=total, desc="activation ranges",
                                      unit="batch"):
                model(**batch)
                count += 1
    finally:
        for h in hooks:
            h.remove()
    for site in sites:
        if site.lo is None and not site.note:
            site.note = "its module never ran on the calibration text"
    print(f"[lowbit] measured {len(hooks)} activation site(s) on {count} batch(es) in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return count


def ort_ranges(proto: Any, sites: list[Site], batches: Iterable[dict], *,
               total: int | None = None) -> int:
    """Fill every site's ``lo`` / ``hi`` by running ``batches`` through the ONNX model
    ``proto`` (an ``onnx.ModelProto`` with its weights; it gets the sites as extra outputs)
    on onnxruntime; inputs the model does not take are dropped. Returns the batch count."""
    import onnx

    from lowbit.backends.onnxruntime import OrtRunner

    have = {o.name for o in proto.graph.output}
    for s in sites:
        if s.key not in have:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(
                s.key, onnx.TensorProto.FLOAT, None))
    count, t0 = 0, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lowbit-report-") as tmp:
        src: Any = proto.SerializeToString() if proto.ByteSize() < ORT_BYTES else None
        if src is None:
            src = str(Path(tmp) / "ranges.onnx")
            onnx.save(proto, src, save_as_external_data=True, location="ranges.onnx.data")
        runner = OrtRunner(src, optimization="basic")
        index = {name: i for i, name in enumerate(runner.output_names)}
        for batch in progress.bar(batches, total=total, desc="activation ranges",
                                  unit="batch"):
            feed = {k: v for k, v in batch.items() if k in runner.input_names}
            try:
                outs = runner.run(feed)
            except Exception as e:  # onnxruntime raises its own types
                shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feed.items())
                reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
                raise ConfigError(f"onnxruntime cannot run the model on the calibration text "
                                  f"({shapes}): {reason}; give a --seq the model takes") from e
            for s in sites:
                merge_range(s, np.asarray(outs[index[s.key]], dtype=np.float32))
            count += 1
    print(f"[lowbit] measured {len(sites)} activation site(s) on {count} batch(es) in "
          f"{time.perf_counter() - t0:.1f} s (onnxruntime)", file=sys.stderr)
    return count
