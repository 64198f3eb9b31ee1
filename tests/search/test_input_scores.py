"""Input choices in the integer-program search: the input score (lowbit.mixed_precision_acts)
against the output error it estimates, one input choice per linear, the latency budget."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.mixed_precision import _objective, _run, plan_for_budget, sensitivity_table
from lowbit.mixed_precision_acts import _linear_nodes, _tapped, _Taps, input_scores
from lowbit.search import Budget, PerHead, SearchSpace
from lowbit.search.sensitivity import distillation_error

from .conftest import ids

pytest.importorskip("highspy")

O_PROJ = "encoder.layer.0.attention.output.dense"
# The score is the diagonal (Gauss-Newton) estimate of the output error: cross terms of the
# rounding errors of different elements average out only roughly on one 8-token batch.
DIAGONAL_FACTOR = 2.0
ACTS = SearchSpace(group=32, activations=("fp", "fp16", "int8"))


def _measured(gm, batch, act):
    """0.5 sum_o mean((o - o_fp)^2) with O_PROJ's input quantized as ``act``."""
    nodes = _linear_nodes(gm, [O_PROJ])
    taps = _Taps([O_PROJ], True)
    taps.observe = True
    with torch.no_grad():
        ref = gm(*batch)
        _tapped(gm, nodes, taps)(*batch)
        for fq in taps.quant.values():
            fq.freeze()
        quantize = (lambda x, name: x.half().float()) if act == "fp16" else \
            (lambda x, name: taps.quant[name](x))
        taps.tap = quantize
        got = _tapped(gm, nodes, taps)(*batch)
    return distillation_error(got, ref)


@pytest.mark.parametrize("act", ["int8", "fp16"])
def test_input_score_estimates_the_output_error(bert1, act):
    batch = (ids(),)
    scores, _ = input_scores(bert1, [O_PROJ], ("fp", act), [batch] * 300, _run,
                             _objective(None), progress=False)
    predicted, measured = scores[O_PROJ][act], _measured(bert1, batch, act)
    assert scores[O_PROJ]["fp"] == 0.0
    assert measured > 0
    assert 1 / DIAGONAL_FACTOR < predicted / measured < DIAGONAL_FACTOR


def test_int8_costs_more_than_fp16_and_the_graph_is_untouched(bert1):
    before = bert1.graph.python_code("self").src
    scores, _ = input_scores(bert1, [O_PROJ, "encoder.layer.0.intermediate.dense"],
                             ("fp", "fp16", "int8"), [(ids(seed=s),) for s in range(3)],
                             _run, _objective(None), progress=False)
    for per in scores.values():
        assert 0 < per["fp16"] < per["int8"]
    assert bert1.graph.python_code("self").src == before
    assert all(not p.grad for p in bert1.parameters() if p.grad is not None)


@pytest.fixture(scope="module")
def table(bert1):
    return sensitivity_table(bert1, calibration=[(ids(seed=s),) for s in range(2)],
                             granularity=PerHead(), space=ACTS, prune_cost="taylor",
                             progress=False)


def test_a_linear_takes_one_input_and_int8_inputs_only_with_int8_weights(table):
    assert table.input_scores and {"fp16", "int8"} <= set(next(iter(
        table.input_scores.values())))
    for bits in (5.0, 7.0, 9.0):
        plan = plan_for_budget(table, Budget(avg_bits=bits), progress=False)
        for linear in {e.linear for e in plan.entries}:
            kept = [e for e in plan.entries if e.linear == linear and not e.pruned]
            assert len({e.act for e in kept}) <= 1
            assert all(e.code == "uniform" and e.bits == 8 for e in kept if e.act == "int8")


def _fake_latency(table):
    """int8 inputs 3x faster, fp weights 2x slower: a table the budget has to bind on."""
    return np.array([[0.0 if c.pruned else (1 / 3 if c.act == "int8" else 1.0)
                      * (2.0 if c.code == "fp" else 1.0) * (sg.rows[1] - sg.rows[0])
                      for c in table.candidates] for sg in table.subgroups]) * 1e-6


def test_latency_budget_binds_and_is_met(table):
    timed = table.with_latency(_fake_latency(table))
    free = plan_for_budget(timed, Budget(avg_bits=9.0), progress=False)
    slow = timed.latency_of(free)
    tight = 0.6 * slow
    fast = plan_for_budget(timed, Budget(avg_bits=9.0, seconds=tight), progress=False)
    assert timed.latency_of(fast) <= tight * (1 + 1e-9)
    assert fast.info["latency_seconds"] == pytest.approx(timed.latency_of(fast))
    assert fast.activations, "a binding latency budget should buy int8 inputs here"
    assert fast.info["sensitivity"] >= free.info["sensitivity"]


def test_latency_budget_errors(table):
    with pytest.raises(ConfigError, match="needs measured kernel times"):
        plan_for_budget(table, Budget(avg_bits=9.0, seconds=1.0), progress=False)
    timed = table.with_latency(_fake_latency(table))
    sens = timed.sensitivity.copy()
    sens[:, [c.pruned for c in timed.candidates]] = np.inf     # pruning would take 0 s
    unpruned = dataclasses.replace(timed, sensitivity=sens)
    with pytest.raises(ConfigError, match="latency budget of 1e-12 s cannot be met"):
        plan_for_budget(unpruned, Budget(avg_bits=9.0, seconds=1e-12), progress=False)
    with pytest.raises(ConfigError, match="with_latency"):
        table.with_latency(np.ones((2, 2)))
    with pytest.raises(ConfigError, match="Budget.seconds"):
        Budget(avg_bits=4, seconds=-1.0)


def test_dnas_refuses_input_choices(bert1):
    from lowbit.mixed_precision_dnas import dnas_plan
    with pytest.raises(ConfigError, match="searches weights only"):
        dnas_plan(bert1, 0.1, calibration=[(ids(),)], space=ACTS, progress=False)
