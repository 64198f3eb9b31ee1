"""lowbit.quant.word_bits: token counting, the (b, r) rule and budget mode, the unseen-token
rules ("lowest", "rank"), groups within a row, remap exactness, per-tier fits, the plan as data
(edit, JSON, save/load), config errors.

Tolerances: exact equality where the same float32 ops run on the same rows (a tier's table is
``bcq.fit`` of exactly those rows); FP32_TOL where only the batch of rows differs (chunked vs
whole-table fits: batched least squares may round differently in the last bit).
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.quant import bcq, word_bits
from lowbit.quant.word_bits import (
    TieredEmbedding,
    WordBitsPlan,
    feasible_range,
    frequency_blind,
    plan_by_rule,
    plan_for_budget,
    quantize_embedding,
    token_counts,
)

FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}


class WordTokenizer:
    """A tiny whitespace tokenizer with the Hugging Face call convention: id 0 is BOS (added
    only with special tokens), words get ids in order of first sight."""

    def __init__(self, vocab: list[str]):
        self.ids = {w: i + 1 for i, w in enumerate(vocab)}

    def __call__(self, texts, add_special_tokens=True):
        bos = [0] if add_special_tokens else []
        return {"input_ids": [bos + [self.ids[w] for w in t.split()] for t in texts]}


def _zipf_counts(v: int, unseen: int, seed: int = 0) -> torch.Tensor:
    """Zipf-like counts over a shuffled vocabulary, ``unseen`` of them 0, with ties."""
    g = torch.Generator().manual_seed(seed)
    c = (10_000 / torch.arange(1, v + 1, dtype=torch.float64)).floor().to(torch.int64) + 1
    c[v - unseen:] = 0
    return c[torch.randperm(v, generator=g)]


def _embedding(v: int, d: int, seed: int = 0) -> torch.Tensor:
    """Real-ish rows: a shared low-rank part plus heavy-tailed noise, each row its own scale."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(v, 4, generator=g) @ torch.randn(4, d, generator=g)
    noise = torch.distributions.StudentT(3.0).sample((v, d))
    return (0.3 * low + noise) * torch.rand(v, 1, generator=g).add(0.5)


def _assert_frequency_order(plan: WordBitsPlan) -> None:
    """Every token of tier t has count >= every token of tier t+1, and among equal counts
    the smaller id sits in the higher tier."""
    c = plan.counts
    nonempty = [t for t in range(len(plan.bits)) if plan.tier_sizes[t]]
    for a, b in itertools.pairwise(nonempty):
        hi, lo = plan.rows(a), plan.rows(b)
        assert c[hi].min() >= c[lo].max()
        tie = int(c[hi].min())
        if tie == int(c[lo].max()):
            assert hi[c[hi] == tie].max() < lo[c[lo] == tie].min()


# ---- counting ------------------------------------------------------------------------------

def test_token_counts_counts_without_special_tokens():
    tok = WordTokenizer(["a", "b", "c"])
    texts = (t for t in ["a b a", "c", "a", "", "b b"])      # any iterable, split in batches
    counts = token_counts(texts, tok, vocab_size=6, batch=2, progress=False)
    assert counts.dtype == torch.int64 and counts.tolist() == [0, 3, 3, 1, 0, 0]
    assert token_counts([], tok, 4, progress=False).tolist() == [0, 0, 0, 0]


def test_progress_goes_to_stderr(capsys):
    counts = token_counts(["a b", "b"], WordTokenizer(["a", "b"]), 3)
    quantize_embedding(_embedding(30, 8), plan_by_rule(counts.repeat(10), b=2), iters=1)
    err = capsys.readouterr()
    assert not err.out and "counted 2 text(s), 3 tokens" in err.err and "done" in err.err


def test_token_counts_refuses_ids_outside_the_table():
    tok = WordTokenizer(["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"id 3, outside the table's 0\.\.2"):
        token_counts(["a c"], tok, vocab_size=3, progress=False)
    with pytest.raises(ConfigError, match="vocab_size"):
        token_counts(["a"], tok, vocab_size=0, progress=False)
    with pytest.raises(ConfigError, match="batch"):
        token_counts(["a"], tok, vocab_size=4, batch=0, progress=False)


# ---- the rule --------------------------------------------------------------------------------

def test_rule_b4_r2_gives_26_over_15_bits():
    counts = torch.arange(300, 0, -1)                       # all seen, V divisible by 15
    plan = plan_by_rule(counts, b=4, r=2.0)
    assert plan.bits == (4, 3, 2, 1)
    assert plan.tier_sizes == (20, 40, 80, 160)
    assert plan.average_bits == pytest.approx(26 / 15, abs=1e-12)
    assert plan.r == pytest.approx(2.0)
    assert plan_by_rule(counts, b=1).tier_sizes == (300,)
    assert plan_by_rule(counts, b=3, r=1.0).tier_sizes == (100, 100, 100)


def test_tiers_follow_frequency_order_with_ties_by_id():
    counts = _zipf_counts(997, unseen=0)
    for b, r in [(4, 2.0), (3, 0.5), (2, 5.0)]:
        plan = plan_by_rule(counts, b=b, r=r)
        assert sum(plan.tier_sizes) == 997
        _assert_frequency_order(plan)
    flat = plan_by_rule(torch.full((30,), 7), b=4, r=2.0)   # all tied: tiers by id alone
    assert [flat.rows(t).tolist() for t in range(4)] == [
        list(range(2)), list(range(2, 6)), list(range(6, 14)), list(range(14, 30))]


def test_rule_sizes_are_within_one_row_of_proportional():
    for v in (7, 100, 1001):
        for b, r in [(4, 2.0), (4, 1.3), (3, 0.7)]:
            sizes = plan_by_rule(torch.arange(v, 0, -1), b=b, r=r).tier_sizes
            share = torch.tensor([r ** i for i in range(b)], dtype=torch.float64)
            exact = v * share / share.sum()
            assert (torch.tensor(sizes) - exact).abs().max() < 1 + 1e-9


def test_unseen_tokens_take_the_lowest_tier():
    counts = _zipf_counts(600, unseen=100)
    plan = plan_by_rule(counts, b=4, r=2.0)           # rule's lowest tier (320) holds them
    assert plan.tier_sizes == (40, 80, 160, 320)
    assert (plan.tier[counts == 0] == 3).all()
    _assert_frequency_order(plan)


def test_unseen_tokens_extend_a_too_small_lowest_tier_upward():
    counts = _zipf_counts(600, unseen=450)            # rule's lowest tier: 320 < 450
    plan = plan_by_rule(counts, b=4, r=2.0)
    assert (plan.tier[counts == 0] == 3).all()
    # the tiers above keep their tops and lose their bottoms: 40 | 80 | 160 -> 30 | 0
    assert plan.tier_sizes == (40, 80, 30, 450)
    _assert_frequency_order(plan)
    everything = plan_by_rule(torch.zeros(45, dtype=torch.int64), b=4)
    assert everything.tier_sizes == (0, 0, 0, 45)


# ---- budget mode ----------------------------------------------------------------------------

@pytest.mark.parametrize("target", [1.5, 2.0, 2.5, 3.0])
def test_budget_hits_the_target(target):
    counts = _zipf_counts(3000, unseen=300)
    plan = plan_for_budget(counts, target, method="uniform")
    assert plan.bits == (4, 3, 2, 1) and plan.method == "uniform"
    assert abs(plan.average_bits - target) <= 3 / 3000          # (bits[0] - bits[-1]) / V
    assert (plan.tier[counts == 0] == 3).all()
    _assert_frequency_order(plan)


def test_budget_with_other_tier_bits_and_range_ends():
    counts = _zipf_counts(3000, unseen=300)
    lo, hi = feasible_range(counts, (4, 2))
    assert (lo, hi) == (2.0, pytest.approx((4 * 2700 + 2 * 300) / 3000))
    assert plan_for_budget(counts, lo, (4, 2)).tier_sizes == (0, 3000)
    assert plan_for_budget(counts, hi, (4, 2)).tier_sizes == (2700, 300)
    mid = plan_for_budget(counts, 3.0, (4, 2))
    assert abs(mid.average_bits - 3.0) <= 2 / 3000
    assert plan_for_budget(counts, 3, (3,)).tier_sizes == (3000,)


def test_budget_outside_the_feasible_range_names_it():
    counts = _zipf_counts(3000, unseen=300)
    with pytest.raises(ConfigError, match=r"\[1\.0000, 3\.7000\].*300 of 3000 tokens are unseen"):
        plan_for_budget(counts, 3.9)
    with pytest.raises(ConfigError, match=r"\[1\.0000, 3\.7000\]"):
        plan_for_budget(counts, 0.5)
    with pytest.raises(ConfigError, match=r"\[2\.0000, 2\.0000\]"):
        plan_for_budget(counts, 2.5, (2,))
    with pytest.raises(ConfigError, match="avg_bits"):
        plan_for_budget(counts, float("nan"))


# ---- the plan as data -------------------------------------------------------------------------

def test_remap_inverts_rows():
    plan = plan_by_rule(_zipf_counts(500, unseen=50), b=4, r=1.5)
    tier, row = plan.remap()
    for t in range(4):
        ids = plan.rows(t)
        assert torch.equal(ids, ids.sort().values)
        assert torch.equal(tier[ids], torch.full_like(ids, t))
        assert torch.equal(row[ids], torch.arange(ids.numel()))


def test_with_tier_edits_a_copy_only():
    plan = plan_by_rule(_zipf_counts(300, unseen=30), b=4)
    before = plan.tier.clone()
    edited = plan.with_tier([5, 7], 0)
    assert torch.equal(plan.tier, before) and plan.r is not None
    assert edited.tier[[5, 7]].tolist() == [0, 0] and edited.r is None
    assert int((edited.tier != plan.tier).sum()) == int((plan.tier[[5, 7]] != 0).sum())
    assert torch.equal(plan.with_tier(3, 2).tier[3], torch.tensor(2))
    with pytest.raises(ConfigError, match="tier 4 does not exist"):
        plan.with_tier([1], 4)
    with pytest.raises(ConfigError, match=r"0\.\.299"):
        plan.with_tier([300], 1)


def test_frequency_blind_keeps_sizes_and_bits_only():
    plan = plan_by_rule(_zipf_counts(600, unseen=60), b=4)
    blind = frequency_blind(plan, seed=1)
    assert blind.bits == plan.bits and blind.tier_sizes == plan.tier_sizes
    assert not torch.equal(blind.tier, plan.tier)
    assert torch.equal(frequency_blind(plan, seed=1).tier, blind.tier)


def test_dict_and_file_round_trip(tmp_path):
    plan = plan_for_budget(_zipf_counts(400, unseen=40), 2.0, method="uniform")
    back = WordBitsPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert (back.bits, back.method, back.r) == (plan.bits, plan.method, plan.r)
    assert torch.equal(back.tier, plan.tier) and torch.equal(back.counts, plan.counts)
    path = tmp_path / "sub" / "plan.json"
    plan.save(path)
    loaded = WordBitsPlan.load(path)
    assert torch.equal(loaded.tier, plan.tier) and torch.equal(loaded.counts, plan.counts)
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]     # no temp file left
    bare = WordBitsPlan((2, 1), torch.tensor([0, 1, 1]))
    assert WordBitsPlan.from_dict(bare.to_dict()).counts is None


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": (3, 3), "tier": [0, 1]}, "strictly descending"),
    ({"bits": (5, 1), "tier": [0, 1]}, r"ints in 1\.\.4"),
    ({"bits": (), "tier": [0]}, r"ints in 1\.\.4"),
    ({"bits": (2, 1), "tier": [0, 2]}, r"tier values must lie in 0\.\.1"),
    ({"bits": (2, 1), "tier": [0.0, 1.0]}, "integer tensor"),
    ({"bits": (2, 1), "tier": [0, 1], "counts": [1, 2, 3]}, "counts has 3 entries"),
    ({"bits": (2, 1), "tier": [0, 1], "counts": [1, -2]}, "counts must be >= 0"),
    ({"bits": (2, 1), "tier": [0, 1], "method": "int4"}, "method must be one of"),
])
def test_bad_plans_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        WordBitsPlan(**kwargs)


def test_bad_rule_and_file_arguments_are_refused(tmp_path):
    counts = torch.arange(10)
    for b in (0, 5, True):
        with pytest.raises(ConfigError, match="b must be an int"):
            plan_by_rule(counts, b=b)
    for r in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="r must be a finite number"):
            plan_by_rule(counts, r=r)
    with pytest.raises(ConfigError, match="integer tensor"):
        plan_by_rule(counts.float())
    with pytest.raises(ConfigError, match="not a lowbit.word_bits/1 plan"):
        WordBitsPlan.from_dict({"bits": [1], "tier": [0]})
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read a plan"):
        WordBitsPlan.load(tmp_path / "bad.json")


# ---- the quantized table ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["bcq", "uniform"])
def test_remap_exactness(method):
    w = _embedding(240, 16)
    plan = plan_by_rule(_zipf_counts(240, unseen=40), b=4, r=1.5, method=method)
    emb = quantize_embedding(w, plan, iters=3, progress=False)
    table = emb.dequantize()
    tier, row = plan.remap()
    per_tier = [t.dequantize() for t in emb.tiers]
    for i in range(240):
        assert torch.equal(table[i], per_tier[tier[i]][row[i]])
    fit = bcq.fit if method == "bcq" else (lambda x, b, g, iters=0: bcq.uniform_as_bcq(x, b, g))
    for t, b in enumerate(plan.bits):                       # each tier: its own rows' fit
        assert torch.equal(per_tier[t], fit(w[plan.rows(t)], b, None, iters=3).dequantize())
    ids = torch.tensor([[0, 239, 5], [5, 17, 100]])
    assert torch.equal(emb.lookup(ids), table[ids])


@pytest.mark.parametrize("method", ["bcq", "uniform"])
def test_one_tier_equals_the_plain_per_row_fit(method):
    w = _embedding(96, 16, seed=2)
    plan = WordBitsPlan((3,), torch.zeros(96, dtype=torch.int64), method=method)
    got = quantize_embedding(w, plan, iters=4, progress=False).dequantize()
    want = bcq.fit(w, 3, None, iters=4) if method == "bcq" else bcq.uniform_as_bcq(w, 3)
    assert torch.equal(got, want.dequantize())


def test_chunked_fit_matches_the_whole_tier(monkeypatch):
    w = _embedding(50, 16, seed=3)
    plan = WordBitsPlan((2,), torch.zeros(50, dtype=torch.int64))
    whole = quantize_embedding(w, plan, iters=4, progress=False)
    monkeypatch.setattr(word_bits, "_FIT_CHUNK", 7)
    chunked = quantize_embedding(w, plan, iters=4, progress=False)
    assert torch.equal(chunked.tiers[0].planes_i8, whole.tiers[0].planes_i8)
    torch.testing.assert_close(chunked.dequantize(), whole.dequantize(), **FP32_TOL)


@pytest.mark.parametrize("method", ["bcq", "uniform"])
def test_row_error_falls_with_more_bits(method):
    w = _embedding(400, 32, seed=4)
    plan = WordBitsPlan((4, 3, 2, 1), torch.arange(400) % 4, method=method)  # mixed rows
    table = quantize_embedding(w, plan, iters=5, progress=False).dequantize()
    rel = ((w - table).norm(dim=1) / w.norm(dim=1))
    means = [float(rel[plan.rows(t)].mean()) for t in range(4)]
    assert means == sorted(means), means                     # 4 bits best, 1 bit worst
    for b in (1, 2, 3):                                      # same rows, one more bit
        one = WordBitsPlan((b,), torch.zeros(400, dtype=torch.int64), method=method)
        more = WordBitsPlan((b + 1,), one.tier, method=method)
        e1 = (w - quantize_embedding(w, one, iters=5, progress=False).dequantize()).norm(dim=1)
        e2 = (w - quantize_embedding(w, more, iters=5, progress=False).dequantize()).norm(dim=1)
        assert float(e2.mean()) < float(e1.mean()) and float((e2 <= e1).float().mean()) > 0.95


def test_nbytes_counts_planes_scales_and_remap():
    plan = plan_by_rule(torch.arange(30, 0, -1), b=4, r=2.0)      # sizes 2, 4, 8, 16
    w = _embedding(30, 16)
    nb = quantize_embedding(w, plan, iters=1, progress=False).nbytes()
    coded = 4 * 2 + 3 * 4 + 2 * 8 + 1 * 16                      # plane rows
    assert nb == {"planes": coded * 2, "alpha": coded * 2, "offset": 0, "remap": 30 * 4,
                  "total": coded * 4 + 120}
    uni = WordBitsPlan((3,), torch.zeros(30, dtype=torch.int64), method="uniform")
    nb = quantize_embedding(w, uni, progress=False).nbytes()
    assert nb == {"planes": 3 * 30 * 2, "alpha": 30 * 2, "offset": 30 * 2, "remap": 0,
                  "total": 180 + 120}
    one_used = WordBitsPlan((4, 3), torch.ones(30, dtype=torch.int64))   # rows in id order
    assert quantize_embedding(w, one_used, iters=1, progress=False).nbytes()["remap"] == 0


def test_bad_tables_are_refused():
    plan = plan_by_rule(torch.arange(30, 0, -1), b=2)
    with pytest.raises(ConfigError, match=r"float \[V=30, D\]"):
        quantize_embedding(torch.randn(31, 8), plan, progress=False)
    emb = quantize_embedding(torch.randn(30, 8), plan, iters=1, progress=False)
    with pytest.raises(ConfigError, match="1 tier tables for 2 tiers"):
        TieredEmbedding(plan, emb.tiers[:1])
    with pytest.raises(ConfigError, match="the plan says"):
        TieredEmbedding(plan, emb.tiers[::-1])


# ---- unseen="rank" ----------------------------------------------------------------------------

def test_rank_cuts_through_unseen_tokens_by_id():
    counts = _zipf_counts(600, unseen=450)            # "lowest" would clamp: (40, 80, 30, 450)
    plan = plan_by_rule(counts, b=4, r=2.0, unseen="rank")
    assert plan.tier_sizes == (40, 80, 160, 320) and plan.unseen == "rank"   # the rule's own
    _assert_frequency_order(plan)
    unseen_ids = (counts == 0).nonzero().flatten()          # ascending id
    tiers = plan.tier[unseen_ids]
    assert set(tiers.tolist()) == {2, 3}                    # a boundary runs through them
    assert torch.equal(tiers, tiers.sort().values)          # tier index non-decreasing in id
    lowest_seen_tier = int(plan.tier[counts > 0].max())
    assert lowest_seen_tier <= int(tiers.min())             # every seen token ranks above


def test_rank_without_unseen_tokens_is_the_lowest_rule():
    counts = _zipf_counts(500, unseen=0)
    for target in (1.7, 2.6):
        a = plan_for_budget(counts, target)
        b = plan_for_budget(counts, target, unseen="rank")
        assert torch.equal(a.tier, b.tier) and (a.unseen, b.unseen) == ("lowest", "rank")


@pytest.mark.parametrize("target", [1.5, 2.5, 3.0, 3.9, 4.0])
def test_rank_reaches_every_average_up_to_the_top_tier(target):
    counts = _zipf_counts(3000, unseen=2600)
    assert feasible_range(counts, unseen="rank") == (1.0, 4.0)
    assert feasible_range(counts)[1] == pytest.approx((4 * 400 + 2600) / 3000)   # "lowest"
    plan = plan_for_budget(counts, target, unseen="rank", method="uniform", group=8)
    assert abs(plan.average_bits - target) <= 3 / 3000
    assert (plan.method, plan.group, plan.unseen) == ("uniform", 8, "rank")
    _assert_frequency_order(plan)
    with pytest.raises(ConfigError, match=r"\[1\.0000, 1\.4000\].*unseen='rank'"):
        plan_for_budget(counts, target)                     # "lowest" cannot


def test_rank_range_ends_and_bad_unseen():
    counts = _zipf_counts(300, unseen=200)
    assert plan_for_budget(counts, 4.0, (4, 2), unseen="rank").tier_sizes == (300, 0)
    assert plan_for_budget(counts, 2.0, (4, 2), unseen="rank").tier_sizes == (0, 300)
    with pytest.raises(ConfigError, match=r"\[2\.0000, 4\.0000\] \(choose a target"):
        plan_for_budget(counts, 4.5, (4, 2), unseen="rank")
    for call in (lambda: plan_by_rule(counts, unseen="first"),
                 lambda: plan_for_budget(counts, 2.0, unseen=None),
                 lambda: feasible_range(counts, unseen="highest")):
        with pytest.raises(ConfigError, match="unseen must be one of"):
            call()
    with pytest.raises(ConfigError, match="unseen must be one of"):
        WordBitsPlan((2, 1), torch.tensor([0, 1]), unseen="rnak")


def test_edits_and_controls_forget_the_rule():
    plan = plan_by_rule(_zipf_counts(300, unseen=200), b=3, unseen="rank", group=8)
    assert (plan.with_tier([1], 0).unseen, plan.with_tier([1], 0).r) == (None, None)
    blind = frequency_blind(plan)
    assert (blind.unseen, blind.r, blind.group, blind.method) == (None, None, 8, "bcq")


# ---- groups within a row ----------------------------------------------------------------------

def test_group_and_unseen_round_trip_and_old_plans_load():
    plan = plan_for_budget(_zipf_counts(400, unseen=300), 2.5, method="uniform", group=16,
                           unseen="rank")
    d = json.loads(json.dumps(plan.to_dict()))
    back = WordBitsPlan.from_dict(d)
    assert (back.group, back.unseen, back.method, back.r) == (16, "rank", "uniform", plan.r)
    assert torch.equal(back.tier, plan.tier)
    old = {k: v for k, v in d.items() if k not in ("group", "unseen")}   # before both existed
    assert (WordBitsPlan.from_dict(old).group, WordBitsPlan.from_dict(old).unseen) == \
        (None, "lowest")
    hand = WordBitsPlan((2, 1), torch.tensor([0, 1, 1])).to_dict()
    del hand["group"], hand["unseen"]
    assert WordBitsPlan.from_dict(hand).unseen is None                  # no r: not a rule


@pytest.mark.parametrize("group", [0, 4, 12, -8, True, 8.0, "32"])
def test_bad_groups_are_refused(group):
    with pytest.raises(ConfigError, match="group must be None"):
        WordBitsPlan((2, 1), torch.tensor([0, 1]), group=group)
    with pytest.raises(ConfigError, match="group must be None"):
        plan_by_rule(torch.arange(10), b=2, group=group)


def test_group_must_divide_the_width():
    plan = plan_by_rule(torch.arange(30, 0, -1), b=2, group=24)
    with pytest.raises(ConfigError, match="group=24 does not divide the table's width D=32"):
        quantize_embedding(torch.randn(30, 32), plan, progress=False)


@pytest.mark.parametrize("method", ["bcq", "uniform"])
def test_grouped_tiers_are_the_grouped_fit_of_their_rows(method):
    w = _embedding(240, 32, seed=5)
    plan = plan_by_rule(_zipf_counts(240, unseen=40), b=4, r=1.5, method=method, group=8)
    emb = quantize_embedding(w, plan, iters=3, progress=False)
    fit = bcq.fit if method == "bcq" else (lambda x, b, g, iters=0: bcq.uniform_as_bcq(x, b, g))
    for t, b in enumerate(plan.bits):
        want = fit(w[plan.rows(t)], b, 8, iters=3)
        got = emb.tiers[t]
        assert (got.group, got.groups) == (8, 4) and got.alpha_f32.shape[1:] == (4, b)
        assert torch.equal(got.dequantize(), want.dequantize())
    table = emb.dequantize()
    ids = torch.tensor([[0, 239, 5], [5, 17, 100]])
    assert torch.equal(emb.lookup(ids), table[ids])
    per_row = quantize_embedding(w, dataclasses.replace(plan, group=None), iters=3,
                                 progress=False)
    err = lambda e: float((e.dequantize() - w).norm())
    assert err(emb) < err(per_row)                                  # finer scales, less error


def test_group_none_is_the_per_row_table_exactly():
    w = _embedding(120, 16, seed=6)
    counts = _zipf_counts(120, unseen=20)
    a = quantize_embedding(w, plan_by_rule(counts, b=3), iters=3, progress=False)
    b = quantize_embedding(w, plan_by_rule(counts, b=3, group=16), iters=3, progress=False)
    for x, y in zip(a.tiers, b.tiers):            # group = D: the same fit, G = 1
        assert x.groups == y.groups == 1
        assert torch.equal(x.planes_i8, y.planes_i8) and torch.equal(x.alpha_f32, y.alpha_f32)


def test_grouped_nbytes_and_bits_per_element():
    plan = plan_by_rule(torch.arange(30, 0, -1), b=4, r=2.0, group=8)   # sizes 2, 4, 8, 16
    w = _embedding(30, 32)
    emb = quantize_embedding(w, plan, iters=1, progress=False)
    coded = 4 * 2 + 3 * 4 + 2 * 8 + 1 * 16                             # plane rows
    nb = emb.nbytes()
    assert nb == {"planes": coded * 4, "alpha": coded * 4 * 2, "offset": 0, "remap": 30 * 4,
                  "total": coded * 12 + 120}
    bpe = emb.bits_per_element()
    assert bpe["code"] == pytest.approx(coded / 30)
    assert bpe["scales"] == pytest.approx(coded / 30 * (1 + 16 / 8))    # + one fp16 alpha / 8
    assert bpe["total"] == pytest.approx(bpe["scales"] + 32 / 32)       # + an int32 per row
    uni = WordBitsPlan((3,), torch.zeros(30, dtype=torch.int64), method="uniform", group=16)
    ue = quantize_embedding(w, uni, progress=False)
    assert ue.nbytes() == {"planes": 3 * 30 * 4, "alpha": 30 * 2 * 2, "offset": 30 * 2 * 2,
                           "remap": 0, "total": 360 + 240}
    assert ue.bits_per_element() == pytest.approx(
        {"code": 3.0, "scales": 3 + 2 * 16 / 16, "total": 3 + 2 * 16 / 16})


def test_tiers_of_another_group_are_refused():
    counts = torch.arange(30, 0, -1)
    w = torch.randn(30, 16)
    grouped = quantize_embedding(w, plan_by_rule(counts, b=2, group=8), iters=1,
                                 progress=False)
    with pytest.raises(ConfigError, match="groups of 16"):
        TieredEmbedding(plan_by_rule(counts, b=2), grouped.tiers)
