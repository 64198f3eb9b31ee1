"""Automatic mixed-precision search, the numerics: candidates and subgroups (``space``), their
real stored bytes (``cost``), second-order sensitivity (``sensitivity``), the integer program
(``ilp``, HiGHS), the differentiable search's mixture, temperature and lambda bisection
(``dnas``), measured kernel times (``latency``) and the plan they yield (``plan``). No graph
here (import-linter contract in pyproject.toml): ``lowbit.mixed_precision.search_precision``
and ``lowbit.mixed_precision_dnas.search_precision_dnas`` walk the graph and call these;
``lowbit.mixed_precision_latency.measure_latency`` compiles and times the kernels.
"""

from lowbit.search.cost import candidate_bytes
from lowbit.search.ilp import Budget, Narrowing, Solution, solve
from lowbit.search.latency import LatencyTable, latency_model, subgroup_latency
from lowbit.search.plan import Link, PlanEntry, PrecisionPlan
from lowbit.search.space import (
    Candidate,
    PerHead,
    PerNeurons,
    SearchSpace,
    Subgroup,
    WholeLinear,
    dequantized,
)

__all__ = ["Budget", "Candidate", "LatencyTable", "Link", "Narrowing", "PerHead", "PerNeurons",
           "PlanEntry", "PrecisionPlan",
           "SearchSpace", "Solution", "Subgroup", "WholeLinear", "candidate_bytes",
           "dequantized", "latency_model", "solve",
           "subgroup_latency"]
