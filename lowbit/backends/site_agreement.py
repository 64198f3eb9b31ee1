"""Per-site agreement of a quantized FX graph and its QDQ ONNX export, teacher-forced.

End to end, two correct implementations of one quantized network drift apart: float sums in a
different order move a value across a rounding tie now and then (about 1e-5 of elements per
site here), and each such one-step flip perturbs everything downstream, so later sites flip
more. Comparing final outputs therefore measures that cascade, not whether the two graphs
quantize the same way. This check removes the cascade: at every static activation site,
onnxruntime's own float input is quantized with the FX node's (scale, zero point, grid) by
torch's ``quantize_per_tensor`` (``quantize_per_channel`` at PEG sites: per-channel scale and
zero-point vectors along the hidden axis), and the integers are compared with onnxruntime's
QuantizeLinear output. It also checks that both graphs hold the same sites in the same order
with the same parameters (every element of a PEG site's vectors, and its axis).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import numpy_helper

from lowbit.backends.onnxruntime import OrtRunner
from lowbit.errors import LowbitError

__all__ = ["SiteAgreement", "site_agreement"]

qd = torch.ops.quantized_decomposed


@dataclasses.dataclass
class SiteAgreement:
    """Per-site integer mismatch: ``off_by_one[i]`` fraction of elements that differ,
    ``max_diff[i]`` the largest integer difference; ``sites`` the FX node names."""

    sites: list[str]
    off_by_one: list[float]
    max_diff: list[int]

    @property
    def worst_fraction(self) -> float:
        return max(self.off_by_one, default=0.0)

    @property
    def worst_diff(self) -> int:
        return max(self.max_diff, default=0)

    def __str__(self) -> str:
        rows = [f"{s:<40} off-by-one {f:.2e}  max {d}"
                for s, f, d in zip(self.sites, self.off_by_one, self.max_diff)]
        return "\n".join(rows + [f"{len(self.sites)} sites; worst fraction "
                                 f"{self.worst_fraction:.2e}, worst diff {self.worst_diff}"])


def _const(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise LowbitError(f"site_agreement: {name} is not a constant in the ONNX graph")


_SITES = (qd.quantize_per_tensor.default, qd.quantize_per_channel.default)


def _fx_qparams(qgm: fx.GraphModule, node: fx.Node) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(scale f32, zero point i64, axis or None) of an FX activation quantizer."""
    def value(a):
        if isinstance(a, fx.Node) and a.op == "get_attr":
            a = _attr(qgm, a.target)
        return np.asarray(a.detach().numpy() if isinstance(a, torch.Tensor) else a)

    if node.target is qd.quantize_per_channel.default:
        return (value(node.args[1]).astype(np.float32), value(node.args[2]).astype(np.int64),
                int(node.args[3]))
    return np.float32(node.args[1]), np.int64(node.args[2]), None


def _attr(qgm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = qgm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def site_agreement(qgm: fx.GraphModule, onnx_path: str | os.PathLike,
                   inputs: Mapping[str, torch.Tensor]) -> SiteAgreement:
    """Teacher-forced agreement at every static activation quantizer (per tensor, or per
    channel at PEG sites)."""
    fx_sites = [n for n in qgm.graph.nodes if n.op == "call_function" and n.target in _SITES]
    model = onnx.load(os.fspath(onnx_path))
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"
               and n.input[1] not in {i.name for i in model.graph.input}]
    q_nodes = [n for n in q_nodes if _is_static(model, n)]
    if len(q_nodes) != len(fx_sites):
        raise LowbitError(f"site_agreement: FX graph has {len(fx_sites)} static quantize sites, "
                          f"the ONNX graph {len(q_nodes)}")
    params = []
    for fx_node, q in zip(fx_sites, q_nodes):
        scale, zp, axis = _fx_qparams(qgm, fx_node)
        o_scale = _const(model, q.input[1]).astype(np.float32)
        o_zp = _const(model, q.input[2]).astype(np.int64)
        if np.shape(o_scale) != np.shape(scale) or not (
                np.array_equal(o_scale, scale) and np.array_equal(o_zp, zp)):
            raise LowbitError(f"site_agreement: {fx_node.name} quantizes with "
                              f"({_brief(scale)}, {_brief(zp)}), ONNX {q.name} with "
                              f"({_brief(o_scale)}, {_brief(o_zp)})")
        params.append(axis)
    names = [q.input[0] for q in q_nodes] + [q.output[0] for q in q_nodes]
    known = {o.name for o in model.graph.output}
    for name in dict.fromkeys(names):
        if name not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    runner = OrtRunner(model, optimization="disable")   # the QDQ math op by op
    outs = dict(zip(runner.output_names, runner.run(
        {name: np.asarray(inputs[name]) for name in runner.input_names})))
    values = {name: outs[name] for name in names}
    fractions, diffs = [], []
    for fx_node, q, axis in zip(fx_sites, q_nodes, params):
        x = torch.from_numpy(values[q.input[0]])
        if axis is None:
            ours = qd.quantize_per_tensor(x, *fx_node.args[1:])
        else:
            scale, zp, _ = _fx_qparams(qgm, fx_node)
            ours = qd.quantize_per_channel(x, torch.from_numpy(scale).double(),
                                           torch.from_numpy(zp), axis, *fx_node.args[4:])
        ours = ours.numpy().astype(np.int64)
        theirs = values[q.output[0]].astype(np.int64)
        diff = np.abs(ours - theirs)
        fractions.append(float(np.count_nonzero(diff) / diff.size))
        diffs.append(int(diff.max()))
    return SiteAgreement([n.name for n in fx_sites], fractions, diffs)


def _brief(a) -> str:
    a = np.asarray(a)
    return str(a.item()) if a.size == 1 else f"[{a.size}] {np.array2string(a[:4])}..."


def _is_static(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    try:
        _const(model, node.input[1])
        return True
    except LowbitError:
        return False
