"""lowbit::tiered_embedding / lowbit::tiered_linear: the remap (every id reaches its own row),
the lookup bit-exact against ``TieredEmbedding.lookup``, the tied head against
``x @ dequantize().T``, bounds-checked ids, operand checks, autograd and torch.export keeping
one node per op."""

from __future__ import annotations

import pytest
import torch

from lowbit.quant import word_bits as wb
from lowbit.quant import word_ops
from lowbit.quant.word_ops import (
    TIERED_EMBEDDING,
    TIERED_LINEAR,
    tiered_embedding,
    tiered_linear,
    tiered_operands,
    tiered_weight,
)

V, D = 200, 32
HEAD_RTOL = 1e-5   # float32: per-tier GEMMs and one [V, D] GEMM sum the same products differently


def _tiers(method="bcq", empty_tier=False, seed=0, v=V, d=D) -> wb.TieredEmbedding:
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 40, (v,), generator=gen)
    plan = wb.plan_by_rule(counts, 4, 2.0, method=method)
    if empty_tier:                                  # tier 1 loses every row to tier 0
        plan = plan.with_tier(plan.rows(1), 0)
    return wb.quantize_embedding(torch.randn(v, d, generator=gen), plan, iters=3,
                                 progress=False)


def _call(op, first, ops, *extra):
    return op(first, ops["pos"], ops["planes"], ops["alpha"], ops["offset"], *extra)


@pytest.mark.parametrize("method", ["bcq", "uniform"])
@pytest.mark.parametrize("empty_tier", [False, True])
def test_every_id_maps_to_its_own_row(method, empty_tier):
    te = _tiers(method, empty_tier)
    ops = tiered_operands(te)
    pos = ops["pos"].long()
    assert ops["pos"].dtype == torch.int32 and torch.equal(pos.sort().values, torch.arange(V))
    tier, row = te.plan.remap()
    starts = [0, *torch.tensor(te.plan.tier_sizes).cumsum(0).tolist()]
    for t in range(len(te.plan.bits)):               # tier t's ids occupy its block, in order
        ids = te.plan.rows(t)
        assert torch.equal(pos[ids], torch.arange(starts[t], starts[t + 1]))
        assert torch.equal(row[ids], torch.arange(ids.numel())) and (tier[ids] == t).all()
    if empty_tier:
        assert ops["planes"][1].shape[1] == 0
    table = te.dequantize()
    assert torch.equal(tiered_weight(**ops), table)
    assert torch.equal(_call(tiered_embedding, torch.arange(V), ops), table)


@pytest.mark.parametrize("method", ["bcq", "uniform"])
def test_lookup_bit_exact(method):
    te = _tiers(method)
    ops = tiered_operands(te)
    ids = torch.randint(0, V, (3, 11), generator=torch.Generator().manual_seed(1))
    ids[0, :4] = ids[0, 4]                             # repeats
    y = _call(tiered_embedding, ids, ops)
    assert y.shape == (3, 11, D) and torch.equal(y, te.lookup(ids))
    assert torch.equal(_call(tiered_embedding, ids.to(torch.int32), ops), y)


@pytest.mark.parametrize("method", ["bcq", "uniform"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [word_ops.ROW_CHUNK, 7])
def test_tied_head_matches_dequantized_table(method, bias, chunk, monkeypatch):
    monkeypatch.setattr(word_ops, "ROW_CHUNK", chunk)      # 7: tiers split into row chunks
    te = _tiers(method, empty_tier=True)
    ops = tiered_operands(te)
    x = torch.randn(2, 5, D)
    b = torch.randn(V) if bias else None
    y = _call(tiered_linear, x, ops, b)
    ref = x @ te.dequantize().T + (b if bias else 0)
    assert y.shape == (2, 5, V)
    assert (y - ref).abs().max() <= HEAD_RTOL * ref.abs().max()


@pytest.mark.parametrize("bad", [V, -1])
def test_out_of_range_ids_raise(bad):
    ops = tiered_operands(_tiers())
    with pytest.raises(IndexError, match=rf"token id {bad} is outside the vocabulary 0\.\.{V - 1}"):
        _call(tiered_embedding, torch.tensor([[0, bad]]), ops)


@pytest.mark.parametrize("edit, match", [
    (lambda o: o.update(pos=o["pos"].long()), "pos must be int32"),
    (lambda o: o.update(alpha=o["alpha"][:-1]), "same number"),
    (lambda o: o.update(pos=o["pos"][:-1]), "V=199"),
    (lambda o: o["alpha"].__setitem__(0, o["alpha"][0][:, :, :1]), "tier 0: .*alpha must be"),
])
def test_bad_operands_name_the_mismatch(edit, match):
    ops = tiered_operands(_tiers())
    edit(ops)
    with pytest.raises(ValueError, match=match):
        _call(tiered_embedding, torch.tensor([1, 2]), ops)
    with pytest.raises(ValueError, match=match):
        _call(tiered_linear, torch.randn(2, D), ops, None)


@pytest.mark.parametrize("chunk", [word_ops.ROW_CHUNK, 3])
def test_autograd_matches_finite_differences(chunk, monkeypatch):
    monkeypatch.setattr(word_ops, "ROW_CHUNK", chunk)
    v, d = 30, 8                                            # small: gradcheck is O(in * out)
    te = _tiers("uniform", empty_tier=True, v=v, d=d)       # offsets present, an empty tier
    ops = tiered_operands(te)
    alpha = [a.double().requires_grad_() for a in ops["alpha"]]
    offset = [o.double().requires_grad_() for o in ops["offset"]]
    ids = torch.randint(0, v, (2, 9), generator=torch.Generator().manual_seed(2))
    t = len(alpha)

    def emb(*a):
        return tiered_embedding(ids, ops["pos"], ops["planes"], list(a[:t]), list(a[t:]))

    def head(x, b, *a):
        return tiered_linear(x, ops["pos"], ops["planes"], list(a[:t]), list(a[t:]), b)

    x = torch.randn(2, 3, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(v, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(emb, (*alpha, *offset))
    assert torch.autograd.gradcheck(head, (x, b, *alpha, *offset))


def test_export_keeps_one_node_each():
    ops = tiered_operands(_tiers())
    t = len(ops["planes"])

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("pos", ops["pos"])
            for i in range(t):
                self.register_buffer(f"p{i}", ops["planes"][i])
                self.register_buffer(f"o{i}", ops["offset"][i])
                self.register_parameter(f"a{i}", torch.nn.Parameter(ops["alpha"][i]))

        def forward(self, ids):
            tiers = [[getattr(self, f"{k}{i}") for i in range(t)] for k in "pao"]
            return tiered_linear(tiered_embedding(ids, self.pos, *tiers), self.pos, *tiers, None)

    ids = torch.randint(0, V, (2, 6))
    ep = torch.export.export(M(), (ids,), dynamic_shapes=({0: torch.export.Dim("b"),
                                                          1: torch.export.Dim("s")},))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets == [TIERED_EMBEDDING, TIERED_LINEAR]
    assert torch.equal(ep.module()(ids), M()(ids))
