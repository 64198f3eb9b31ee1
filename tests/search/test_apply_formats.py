"""Mixed formats of a PrecisionPlan (``lowbit.apply_precision``: prune, ``SplitRowBlocks``,
``QuantizeFormats``, q/dq) on tiny one-layer BERT, Llama (GQA) and Gemma-3 graphs, and one
TVM module mixing the kernels.

- storage: which format and kernel each (code, bits, group) takes (``precision_plan.storage``);
- structure: a linear with blocks of several formats becomes one linear (or ``bcq_linear``) per
  block + one ``cat``; op counts follow the per-block report; honest ``modified`` and
  idempotence of the split and quantize passes; the user's graph is not touched;
- numbers (weight-only): the graph equals the float graph whose weights are, block by block,
  ``search.space.dequantized`` of the kept rows and columns (zeros where pruned), FP32_TOL;
- TVM: one module holds linear_u8s8 (with calibration), linear_w4a16, bcq_linear and fp32
  GEMMs; it agrees with the FX graph (weight-only kernels within WEIGHT_ONLY_ATOL as the
  BCQ / W4A16 tests; with the W8A8 blocks within W8A8_ATOL).
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
import torch.utils._pytree as pytree

from lowbit.apply_precision import apply_precision
from lowbit.config import PerGroup
from lowbit.passes.fx.prune_subgroups import PruneSubgroups
from lowbit.passes.fx.quantize_formats import PRECISION_META, QuantizeFormats
from lowbit.passes.fx.split_rows import SplitRowBlocks
from lowbit.passes.precision_plan import fitted_space, match_plan, storage
from lowbit.passes.spot import find_transformer
from lowbit.search import SearchSpace, dequantized
from lowbit.testing import assert_idempotent, assert_untouched, op_counts

FP32_TOL = 1e-5           # the same dequantized weights; BCQ planes sum alphas in fp32
WEIGHT_ONLY_ATOL = 1e-4   # TVM vs FX, as tests/backends/test_bcq_kernels.py and W4A16
# W8A8 blocks: TVM and FX quantize the same inputs with the same scales; an input on a
# rounding tie may land one step away (see tests/backends/tvm/test_compile.py).
W8A8_ATOL = 2e-3

MIXED = (("uniform", 4), ("bcq", 3), ("uniform", 8), ("fp", 32), ("uniform", 2), ("bcq", 2),
         ("uniform", 3), ("fp", 16))
PRUNE = ("block0.kv0", "block0.ffn1")
PRUNE_FFN = ("block0.ffn1",)          # GPT-2: heads of a fused qkv do not prune
SPACES = {
    "per_row": SearchSpace(group=None, bcq_iters=2),
    "group32_affine_offset": SearchSpace(group=32, symmetric=False, bcq_iters=2,
                                         bcq_offset=True),
}

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def ids(batch: int = 1, seed: int = 0) -> torch.Tensor:      # as conftest.py draws them
    return torch.randint(0, 1000, (batch, 8), generator=torch.Generator().manual_seed(seed))


def reference(gm, plan):
    """Float graph with each kept block's weight ``dequantized`` over its kept columns."""
    tmap = find_transformer(gm)
    ref = copy.deepcopy(gm)
    params = dict(ref.named_parameters())
    pruned = {}
    for e in plan.entries:
        if e.pruned:
            pruned.setdefault(e.linear, []).extend(range(*e.rows))
    cols = {}
    for b in tmap.blocks:
        cols[b.attn.o.name] = set(pruned.get(getattr(b.attn.q, "name", None), []))
        cols[b.ffn.down.name] = set(pruned.get(b.ffn.up.name, []))
    refs = {r.name: r for _, r in tmap.linears()}
    with torch.no_grad():
        for e in plan.entries:
            if e.pruned:
                continue
            r, (a, b) = refs[e.linear], e.rows
            w = params[r.weight] if r.weight_layout == "out_in" else params[r.weight].t()
            keep = [c for c in range(e.in_features) if c not in cols.get(e.linear, ())]
            block = torch.zeros(b - a, e.in_features)
            space = fitted_space(plan.space, len(keep))         # the group pruning leaves
            block[:, keep] = dequantized(w[a:b][:, keep], e.candidate, space)
            w[a:b] = block
        for linear, rows in pruned.items():       # heads / neurons: their consumer columns
            for b in tmap.blocks:
                for src, dst in ((b.attn.q, b.attn.o), (b.ffn.up, b.ffn.down)):
                    if src is not None and linear == src.name:
                        w = params[dst.weight]
                        (w if dst.weight_layout == "out_in" else w.t())[:, rows] = 0
    return ref


def _same(a, b, tol):
    for x, y in zip(pytree.tree_leaves(a), pytree.tree_leaves(b), strict=True):
        torch.testing.assert_close(torch.as_tensor(x), y, rtol=0, atol=tol)


def test_storage_of_each_format():
    row, g32 = SearchSpace(group=None), SearchSpace(group=32, symmetric=False)
    table = {
        ("uniform", 8, row, 64): ("int8", "fp32"), ("uniform", 4, row, 64): ("int4", None),
        ("uniform", 4, row, 96): ("codes", "bcq_linear"),       # K not a power of two
        ("uniform", 2, row, 64): ("codes", "bcq_linear"), ("uniform", 6, row, 64): ("dequant",
                                                                                   "fp32"),
        ("uniform", 4, g32, 64): ("codes", "bcq_linear"),       # affine: a zero point
        ("uniform", 8, g32, 64): ("dequant", "fp32"), ("bcq", 3, row, 64): ("bcq", None),
        ("fp", 16, row, 64): ("fp16", "fp32"), ("fp", 32, row, 64): ("fp32", "fp32"),
    }
    for (code, bits, space, k), (kind, kernel) in table.items():
        st = storage(code, bits, space, k)
        assert st.kind == kind and (kernel is None or st.kernel == kernel), (code, bits, k)
    assert storage("uniform", 8, row, 64, activations=True).kernel == "linear_u8s8"
    assert storage("uniform", 4, row, 64).spec.granularity == PerGroup(64)
    assert storage("bcq", 3, SearchSpace(group=32, bcq_offset=True), 64).spec.offset


@pytest.mark.parametrize("space", list(SPACES), ids=str)
@pytest.mark.parametrize("name", ["bert1", "llama1", "gemma1", "gpt2_1"])
def test_mixed_blocks_take_their_formats(name, space, request, plan_for):
    gm = request.getfixturevalue(name)
    plan = plan_for(gm, pruned=PRUNE_FFN if name == "gpt2_1" else PRUNE, choices=MIXED,
                    space=SPACES[space])
    before = {n: p.clone() for n, p in gm.state_dict().items()}
    q = apply_precision(gm, plan, progress=False)
    report = q.meta[PRECISION_META]
    assert sum(r["rows"][1] - r["rows"][0] for r in report) == sum(
        e.rows[1] - e.rows[0] for e in plan.entries if not e.pruned)
    counts, kinds = op_counts(q), [r["storage"] for r in report]
    blocks = collections.Counter(r["linear"] for r in report)
    split = [name for name, n in blocks.items() if n > 1]
    assert counts["aten.cat.default"] - op_counts(gm)["aten.cat.default"] == len(split) > 0
    assert counts["lowbit.bcq_linear.default"] == kinds.count("bcq") + kinds.count("codes")
    assert counts["quantized_decomposed.dequantize_per_channel_group.default"] == \
        kinds.count("int4") + (kinds.count("int8") + kinds.count("dequant")
                               if space != "per_row" else 0)
    assert {"bcq", "codes", "fp32", "fp16"} <= set(kinds)
    x = {"input_ids": ids(pytree.tree_leaves(gm.meta["lowbit_example_inputs"])[0].shape[0], 4)}
    _same(q(**x), reference(gm, plan)(**x), FP32_TOL)
    assert all(torch.equal(before[n], p) for n, p in gm.state_dict().items())


def test_split_and_quantize_passes_are_idempotent(llama1, plan_for):
    plan = plan_for(llama1, pruned=PRUNE, choices=MIXED)
    assert_untouched(SplitRowBlocks(), llama1)                    # no plan tags: nothing to do
    assert_untouched(QuantizeFormats(plan.space, progress=False), llama1)
    pruned = PruneSubgroups(plan)(copy.deepcopy(llama1)).graph
    split = assert_idempotent(SplitRowBlocks(), pruned)
    n_split = sum(len(lp.blocks) > 1 for lp in match_plan(llama1, plan).linears)
    assert op_counts(split)["aten.cat.default"] - op_counts(pruned)["aten.cat.default"] == \
        n_split > 0
    quantized = assert_idempotent(QuantizeFormats(plan.space, progress=False), split)
    kinds = [r["storage"] for r in quantized.meta[PRECISION_META]]
    assert op_counts(quantized)["lowbit.bcq_linear.default"] == kinds.count("bcq") + \
        kinds.count("codes")


def test_calibration_makes_int8_blocks_w8a8(llama1, plan_for):
    plan = plan_for(llama1, choices=(("uniform", 8), ("uniform", 4)))
    batches = [{"input_ids": ids(2, s)} for s in range(2)]
    weight_only = op_counts(apply_precision(llama1, plan, progress=False))
    w8a8 = op_counts(apply_precision(llama1, plan, calibration=batches, progress=False))
    assert "quantized_decomposed.quantize_per_tensor.default" not in weight_only
    n_int8 = sum(c == ("uniform", 8) for c in [(e.code, e.bits) for e in plan.entries])
    assert 0 < w8a8["quantized_decomposed.quantize_per_tensor.default"] <= n_int8


def test_one_tvm_module_mixes_the_kernels(llama1, plan_for):
    pytest.importorskip("tvm")
    import lowbit
    from lowbit.backends.tvm.kernels.isa import isa_of
    from lowbit.backends.tvm.target import host_target

    plan = plan_for(llama1, pruned=PRUNE, choices=(("uniform", 4), ("bcq", 3), ("uniform", 8),
                                                   ("fp", 32), ("uniform", 3)))
    batches = [{"input_ids": ids(2, s)} for s in range(2)]
    x = {"input_ids": ids(2, 7)}
    for calibration, atol in ((None, WEIGHT_ONLY_ATOL), (batches, W8A8_ATOL)):
        q = apply_precision(llama1, plan, calibration=calibration, progress=False)
        mod = lowbit.compile(q, target="cpu", progress=False)
        kinds = [k for _, k in mod.meta["lowering"]]
        assert {"linear_w4a16", "bcq_linear"} <= set(kinds)
        assert any(k.startswith("fp32") for k in kinds)
        if calibration is not None and isa_of(host_target()) is not None:
            assert "linear_u8s8" in kinds
        _same(mod(**x), q(**x), atol)


def test_a_searched_plan_applies(llama1):
    """search_precision -> apply_precision: a plan of the integer program, pruning included
    at this budget, applies and equals its weights."""
    pytest.importorskip("highspy")
    from lowbit.mixed_precision import search_precision
    from lowbit.search import Budget, PerHead, PerNeurons

    space = SearchSpace(bits=(0, 2, 3, 4, 8), group=None, bcq_iters=2)
    batches = [{"input_ids": ids(2, s)} for s in range(2)]
    plan = search_precision(llama1, Budget(avg_bits=2.5), calibration=batches,
                            granularity=(PerHead(), PerNeurons(32)), space=space,
                            progress=False)
    assert any(e.pruned for e in plan.entries)
    q = apply_precision(llama1, plan, progress=False)
    x = {"input_ids": ids(2, 9)}
    _same(q(**x), reference(llama1, plan)(**x), FP32_TOL)
