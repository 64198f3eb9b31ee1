"""Per-word mixed-precision word tables in TVM (lowering/word_bits.py, kernels/word_bits.py).

A tiny GPT-2 whose LM head is tied to its word embedding (random weights, vocabulary 512,
hidden 64) gets a mixed table: tiers of 4, 3, 2 and 1 bits, tiers 0 and 3 fitted uniform
(with offsets), tier 1 BCQ (none), tier 2 empty (its tokens moved to tier 1), so the lowering
drops a tier and the kernels see both operand forms.

- structure: the FX import holds one gather kernel over the three non-empty tiers (reading
  them in the BCQ kernel's column blocks) and one ``bcq_linear`` kernel per tier for the head;
  the lowering log and summary name both layers;
- the tied table is held once: the parameters the compiled module passes to ``main`` (after
  ``main_transform_params``) hold each tier's planes, alphas and offsets once, in the kernel
  layout, and nothing in the op layout (FX and ONNX);
- numbers: the module compiled for the CPU (this host, and AVX2 ``x86-64-v3``) from FX and
  from ONNX (the ONNX pass on the float export: ``lowbit.TieredEmbedding`` / ``TieredLinear``
  with a padded empty fourth tier) agrees with the FX graph in eager torch within LOGITS_RTOL;
  so do the untied heads (``head="separate"``, "float"), which hold the planes once too;
- the gather kernel alone, in both operand layouts (the op's, the BCQ kernel's), against
  ``lowbit::tiered_embedding`` for random ids and the first and last id of every tier, int64
  and int32 ids, with the registered CPU schedule;
- ids outside [0, V): the kernel clamps them (the nearest valid id's row, no read outside a
  buffer), the compiled module refuses them before the call (``RuntimeInputError`` naming
  the input, the value and the range: the kernel declares its ids to input_bounds.py);
- CUDA: the gather's registered schedule binds blocks and threads; compile only (needs nvcc):
  the model builds for sm_90 with a BCQ GEMV per tier in its cubin.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
import tvm
from tvm import relax

import lowbit
from lowbit.backends.tvm import kernels
from lowbit.backends.tvm.api import lowering_summary
from lowbit.backends.tvm.frontends.fx import import_graph
from lowbit.backends.tvm.kernels import word_bits as gather
from lowbit.backends.tvm.kernels.bcq import block_width
from lowbit.backends.tvm.lowering.bcq import pack_bcq
from lowbit.backends.tvm.lowering.word_bits import tiers_of
from lowbit.backends.tvm.runtime import RuntimeInputError
from lowbit.backends.tvm.target import host_target
from lowbit.errors import CompileError
from lowbit.passes.fx.word_bits import QuantizeWordBits as FxWordBits
from lowbit.passes.onnx import load_onnx
from lowbit.passes.onnx.word_bits import QuantizeWordBits as OnnxWordBits
from lowbit.quant import word_bits as wb
from lowbit.quant.word_ops import tiered_embedding, tiered_operands

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent.parent / "passes" / "onnx"))
import onnx_test_models as M  # shared test models (the path above)

VOCAB, HIDDEN = 512, 64
LOGITS_RTOL = 1e-5    # of the largest logit: fp32 sums in another order (measured ~2e-7)
GATHER_RTOL = 1e-6    # of the largest value: the q products summed in another order (exact here)
HOST = host_target(2)
POS = "wb_pos"        # the parameter the ids index (its name ends so on both frontends)
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")


@functools.cache
def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=4, vocab_size=VOCAB,
                                  n_positions=64, use_cache=False, bos_token_id=0,
                                  eos_token_id=0, tie_word_embeddings=True)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _mixed(weight: torch.Tensor, seed: int = 1) -> wb.TieredEmbedding:
    """Tiers 4/3/2/1 bits, tier 2 empty; tiers 0 and 3 uniform, tier 1 BCQ (module doc)."""
    v = weight.shape[0]
    counts = torch.randint(0, 30, (v,), generator=torch.Generator().manual_seed(seed))
    plan = wb.plan_by_rule(counts, 4, 2.0, method="uniform")
    plan = plan.with_tier(plan.rows(2), 1)
    fits = {m: wb.quantize_embedding(weight, dataclasses.replace(plan, method=m), iters=2,
                                     progress=False).tiers for m in ("uniform", "bcq")}
    tiers = (fits["uniform"][0], fits["bcq"][1], fits["bcq"][2], fits["uniform"][3])
    return wb.TieredEmbedding(plan, tiers)


@functools.cache
def _table() -> wb.TieredEmbedding:
    return _mixed(_gpt2().transformer.wte.weight.detach())


def _inputs(batch: int = 1, seq: int = 8) -> dict:
    return M.inputs(batch=batch, seq=seq, vocab=VOCAB)


def _logits(out) -> np.ndarray:
    y = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out
    return np.asarray(y.detach() if isinstance(y, torch.Tensor) else y)


def _close(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= rtol, f"max relative error {err:.3g} > {rtol}"


@functools.cache
def _fx(batch: int = 1, seq: int = 8):
    gm = lowbit.capture(_gpt2(), _inputs(batch, seq))
    assert FxWordBits(_table(), progress=False)(gm).modified
    return gm


@functools.cache
def _fx_module(target: str = "cpu"):
    return lowbit.compile(_fx(), target=target, progress=False)


@functools.cache
def _onnx_module():
    path = lowbit.export_onnx(lowbit.capture(_gpt2(), _inputs()),
                              Path(M._TMP.name) / "gpt2_tied_512_static.onnx")
    model = load_onnx(path)
    ir.external_data.load_to_model(model)
    assert OnnxWordBits(_table(), progress=False)(model).modified
    ex = {k: v.numpy() for k, v in _inputs().items()}
    return lowbit.compile(model, target="cpu", example_inputs=ex, progress=False)


def _eager(ids: torch.Tensor | None = None) -> np.ndarray:
    inputs = _inputs() if ids is None else {**_inputs(), "input_ids": ids}
    with torch.no_grad():
        return _logits(_fx()(**inputs))


# ---- structure ---------------------------------------------------------------------------------
def test_fx_import_has_one_gather_and_a_bcq_kernel_per_tier():
    gm = _fx()
    mod = import_graph(copy.deepcopy(gm), gm.meta["lowbit_example_inputs"]).mod
    kinds = [(kernels.kernel_kind(f), f) for _, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc)]
    gathers = [f for k, f in kinds if k == gather.KIND]
    assert len(gathers) == 1 and sum(k == "bcq_linear" for k, _ in kinds) == 3
    sizes = _table().plan.tier_sizes
    assert sizes[2] == 0
    assert [[int(x) for x in t] for t in gathers[0].attrs["lowbit.tiers"]] == [
        [4, sizes[0], 1], [3, sizes[1], 0], [1, sizes[3], 1]]
    assert [int(w) for w in gathers[0].attrs["lowbit.widths"]] == [
        block_width(n) for n in sizes if n]          # the head kernel's column blocks
    groups = sorted(int(f.attrs["lowbit.offset"]) for k, f in kinds if k == "bcq_linear")
    assert groups == [0, 1, 1]                       # offsets of the uniform tiers only


def _tier_tensors(te: wb.TieredEmbedding) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(op layout, kernel layout): every non-empty tier's planes, alpha (, offset)."""
    ops, op_layout, kernel_layout = tiered_operands(te), [], []
    for p, a, o in zip(ops["planes"], ops["alpha"], ops["offset"]):
        if a.shape[0]:
            op_layout += [p, a, *([o] if o.numel() else [])]
            kernel_layout += pack_bcq(p, a, o if o.numel() else None, None)[:-1]   # no bias
    return [t.numpy() for t in op_layout], [t.numpy() for t in kernel_layout]


@pytest.mark.parametrize("frontend", ["fx", "onnx"])
def test_tied_table_is_held_once(frontend):
    """What ``main`` reads every call (the parameters after ``main_transform_params``): each
    tier operand once, in the kernel layout, that the lookup and the tied head share."""
    mod = _fx_module() if frontend == "fx" else _onnx_module()
    mod._ready()                                     # runs main_transform_params
    params = [p.numpy() for p in mod._params]
    op_layout, kernel_layout = _tier_tensors(_table())

    def copies(t: np.ndarray) -> int:
        return sum(p.shape == t.shape and p.dtype == t.dtype and np.array_equal(p, t)
                   for p in params)

    assert [copies(t) for t in kernel_layout] == [1] * len(kernel_layout)
    assert [copies(t) for t in op_layout] == [0] * len(op_layout)
    planes = sum(t.nbytes for t in kernel_layout if t.dtype == np.uint8)
    assert sum(p.nbytes for p in params if p.dtype == np.uint8) == planes   # all uint8: planes


def test_lowering_log_and_summary_name_the_layers():
    log = [tuple(x) for x in _fx_module().meta["lowering"]]
    assert [k for _, k in log if k.startswith("tiered")] == ["tiered_embedding", "tiered_linear"]
    line = lowering_summary(log, None)
    # the 2 blocks' 8 Conv1D linears (addmm) are float here: only the word table is quantized
    assert "1 tiered lookup(s), 1 tiered LM head(s)" in line and "8 fp32 linear(s)" in line


# ---- numbers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["cpu", "x86-64-v3"])
def test_fx_module_agrees_with_eager(target):
    got = _fx_module(target)(**{k: v.numpy() for k, v in _inputs().items()})
    _close(_logits(got), _eager(), LOGITS_RTOL)


@pytest.mark.parametrize("head", ["separate", "float"])
def test_untied_heads_agree_and_hold_the_planes_once(head):
    """``head="separate"`` (own alphas and offsets, the planes and pos shared) and "float":
    the lookup still reads the kernel layout, the planes are held once, logits as in FX."""
    gm = lowbit.capture(_gpt2(), _inputs())
    assert FxWordBits(_table(), head=head, progress=False)(gm).modified
    mod = lowbit.compile(gm, target="cpu", progress=False)
    with torch.no_grad():
        want = _logits(gm(**_inputs()))
    _close(_logits(mod(**{k: v.numpy() for k, v in _inputs().items()})), want, LOGITS_RTOL)
    planes = [t for t in _tier_tensors(_table())[1] if t.dtype == np.uint8]
    assert sum(p.numpy().nbytes for p in mod._params if str(p.dtype) == "uint8") == sum(
        t.nbytes for t in planes)


def test_onnx_module_agrees_with_fx():
    mod = _onnx_module()
    assert [k for _, k in mod.meta["lowering"] if k.startswith("tiered")] == [
        "tiered_embedding", "tiered_linear"]
    got = mod(**{k: v.numpy() for k, v in _inputs().items()})
    _close(_logits(got), _eager(), LOGITS_RTOL)


@functools.cache
def _small_table() -> wb.TieredEmbedding:
    return _mixed(torch.randn(300, 48, generator=torch.Generator().manual_seed(3)), seed=4)


def _gather_case(ids: np.ndarray, layout: str):
    """(table, gather kernel, its input arrays) for the standalone mixed table, ids [M], the
    tiers in the op's ``layout`` ("op") or the BCQ kernel's column blocks ("blocks")."""
    te = _small_table()
    ops = tiered_operands(te)
    arrays = [ids, ops["pos"].numpy()]
    config, widths = [], []
    for p, a, o in zip(ops["planes"], ops["alpha"], ops["offset"]):
        if a.shape[0]:
            config.append((a.shape[2], a.shape[0], o.numel() > 0))
            widths.append((16, 64)[len(widths) % 2])      # both widths: W = 64 for n >= 256
            tier = [p, a, *([o] if o.numel() else [])] if layout == "op" else pack_bcq(
                p, a, o if o.numel() else None, None, widths[-1])[:-1]
            arrays += [t.numpy() for t in tier]
    assert [n % w for (_, n, _), w in zip(config, widths)] == [4, 56, 0]   # padded blocks
    func = gather.tiered_embedding(len(ids), 48, config, str(ids.dtype),
                                   widths if layout == "blocks" else None)
    return te, func, arrays


def _run(func, arrays, d: int = 48) -> np.ndarray:
    sch = kernels.default_schedule(func, HOST)
    assert sch is not None
    script = sch.mod["main"].script()
    assert "T.vectorized(8)" in script
    assert ("T.parallel" in script) == (len(arrays[0]) * d >= gather.PARALLEL_MIN)
    lib = tvm.compile(sch.mod["main"].with_attr("global_symbol", "main"), HOST)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    args.append(tvm.runtime.tensor(np.zeros((len(arrays[0]), d), np.float32), dev))
    lib["main"](*args)
    return args[-1].numpy()


@pytest.mark.parametrize("layout", ["op", "blocks"])
@pytest.mark.parametrize("dtype", ["int64", "int32"])
@pytest.mark.parametrize("m", [3, 200])
def test_gather_kernel_matches_the_op(dtype, m, layout):
    te = _small_table()
    edges = [int(i) for t in range(len(te.plan.bits)) if te.plan.tier_sizes[t]
             for i in te.plan.rows(t)[[0, -1]]]
    ids = torch.randint(0, 300, (m,), generator=torch.Generator().manual_seed(m))
    ids[:len(edges)] = torch.tensor(edges)[:m]
    _, func, arrays = _gather_case(ids.numpy().astype(dtype), layout)
    ops = tiered_operands(te)
    want = tiered_embedding(ids, ops["pos"], ops["planes"], ops["alpha"], ops["offset"])
    _close(_run(func, arrays), want.numpy(), GATHER_RTOL)


# ---- ids outside [0, V) --------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["op", "blocks"])
def test_gather_kernel_clamps_out_of_range_ids(layout):
    ids = np.array([-1, 300, 299, 0, -2**40, 2**40, 300 + 7, 5], np.int64)
    te, func, arrays = _gather_case(ids, layout)
    ops = tiered_operands(te)
    want = tiered_embedding(torch.from_numpy(ids.clip(0, 299)), ops["pos"], ops["planes"],
                            ops["alpha"], ops["offset"])
    _close(_run(func, arrays), want.numpy(), GATHER_RTOL)


@pytest.mark.parametrize("frontend", ["fx", "onnx"])
def test_module_refuses_out_of_range_ids(frontend):
    mod = _fx_module() if frontend == "fx" else _onnx_module()
    bounds = mod.meta["input_bounds"]["input_ids"]
    assert (bounds["min"], bounds["max"]) == (0, VOCAB - 1) and bounds["table"].endswith(POS)
    feeds = {k: v.numpy() for k, v in _inputs().items()}
    for bad in (VOCAB, -1, 2**33):
        ids = feeds["input_ids"].copy()
        ids[0, 3] = bad
        with pytest.raises(RuntimeInputError, match=rf"input 'input_ids': value {bad} at "
                                                    rf"position \[0, 3\].*\[0, {VOCAB - 1}\]"):
            mod(**{**feeds, "input_ids": ids})
    ids = feeds["input_ids"].copy()
    ids[0, :2] = [0, VOCAB - 1]                        # the edges run
    _close(_logits(mod(**{**feeds, "input_ids": ids})), _eager(torch.from_numpy(ids)),
           LOGITS_RTOL)


# ---- errors --------------------------------------------------------------------------------------
def _var(name, shape, dtype="float32"):
    return relax.Var(name, relax.TensorType(shape, dtype))


def test_bad_operands_name_the_node_and_shapes():
    planes = [_var("p0", (2, 10, 8), "uint8"), _var("p1", (1, 6, 8), "uint8")]
    alpha = [_var("a0", (10, 1, 2)), _var("a1", (6, 1, 1))]
    offset = [_var("o0", (0,)), _var("o1", (6, 1))]
    tiers, d = tiers_of(_var("pos", (16,), "int32"), planes, alpha, offset, "node x")
    assert d == 64 and [(t.q, t.n, t.offset is not None) for t in tiers] == [
        (2, 10, False), (1, 6, True)]
    with pytest.raises(CompileError, match=r"node x: tier 1 needs .* alpha float32 \[7, 1, 1\]"):
        tiers_of(_var("pos", (16,), "int32"), planes, [alpha[0], _var("a1", (7, 1, 1))],
                 offset, "node x")
    with pytest.raises(CompileError, match=r"node x: pos must be int32 \[V\].*int32 \[17\]"):
        tiers_of(_var("pos", (17,), "int32"), planes, alpha, offset, "node x")
    with pytest.raises(CompileError, match=r"node x: tier 1 offset must be \[n=6, 1\]"):
        tiers_of(_var("pos", (16,), "int32"), planes, alpha, [offset[0], _var("o", (6,))],
                 "node x")


# ---- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 200])
def test_gather_on_cuda_binds_blocks_and_threads(m):
    """One thread per lookup and plane byte, ``CUDA_THREADS`` per block (no GPU needed)."""
    _, func, _ = _gather_case(np.zeros(m, np.int64), "blocks")
    sch = kernels.default_schedule(func, tvm.target.Target({"kind": "cuda", "arch": "sm_90"}))
    assert sch is not None
    script = sch.mod["main"].script()
    blocks = -(-m * 48 // 8 // gather.CUDA_THREADS)
    assert f'T.thread_binding({blocks}, thread="blockIdx.x")' in script
    assert f'T.thread_binding({gather.CUDA_THREADS}, thread="threadIdx.x")' in script
    assert 'scope="local"' in script                 # the row index, once per thread


@needs_nvcc
def test_cuda_build_for_sm90(tmp_path):
    from lowbit.backends.tvm.kernels.cuda import CALLED
    from lowbit.backends.tvm.pipelines.cuda import fatbin_arches

    gm = _fx(1, 4)                                   # M = 4 rows: the BCQ decode GEMV
    CALLED.clear()
    mod = lowbit.compile(gm, target="cuda", progress=False)      # no GPU here: nothing runs
    n0, n1, _, n3 = _table().plan.tier_sizes
    cols = {n: "c32" if n >= 256 else "c16" for n in (n0, n1, n3)}     # block width 64 / 16
    assert {c for c in CALLED if c.startswith("lowbit_bcq_gemv_")} == {
        f"lowbit_bcq_gemv_4_q4_{cols[n0]}_o1_p0", f"lowbit_bcq_gemv_4_q3_{cols[n1]}_o0_p0",
        f"lowbit_bcq_gemv_4_q1_{cols[n3]}_o1_p0"}, CALLED
    folder = mod.save(tmp_path / "m")
    assert fatbin_arches(folder / "model.so") == ["sm_90"]
    lib = (folder / "model.so").read_bytes()
    assert b"lowbit_tiered_embedding_" in lib and b"__global__" not in lib
