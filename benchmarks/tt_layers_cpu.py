#!/usr/bin/env python
"""One tensor-train layer against the dense int8 layer it replaces, CPU, per linear shape of
all-MiniLM-L6-v2 (issue 18's per-layer speed goal: a TT layer at M = 1 and M = 128 tokens at
least as fast as the dense int8 layer whenever its FLOPs are 3x lower or more).

    python benchmarks/tt_layers_cpu.py [--ranks 16,32,64,128] [--tokens 1,128] [--threads 2]
        [--iters 200] [--rounds 15] [--json benchmarks/results/tt_layers_cpu.json]

Shapes: 384 x 384 (attention q; k, v and o have the same shape and kernels), 384 -> 1536 (FFN
up) and 1536 -> 384 (FFN down), the real weights of layer 0. A TT layer of merged-halves rank r
runs ``y = (x A) B + b`` with A [in, r], B [r, out]: FLOPs ``(in r + r out) / (in out)`` of the
dense layer's. r is the bond between the halves as ``lowbit.tensor_train`` fits it (each bond
capped at what it can hold; here every asked rank fits).

Each layer goes through the path the model uses: the MiniLM cut to its first layer is captured,
``lowbit.tensor_train`` (the three layers, ``TT(ranks=r)``) + ``lowbit.materialize_tt``, then
``lowbit.quantize(W8A8)`` with the same calibration as benchmarks/minilm_tt_tvm.py (16 pydoc
sentences, seq 128), so each half gets an int8 per-channel weight and a static u8 input range
from real activations. Spotting needs the whole block to give a linear its role (a module with a
lone linear has none, and W8A8 would refuse it), so the layer is cut out of the quantized graph
afterwards: its float input becomes the one input of a small GraphModule holding the layer's
nodes (input quantizer, the linear or both halves with the rank-r requantizer, bias), which
``lowbit.compile(target="cpu")`` builds with default schedules for [1, M, in]. The input is the
layer's real input on a held-out sentence (its first M tokens).

Checks per compiled module: ``meta["lowering"]`` shows the int8 kernels (dense: one
``linear_u8s8``; TT: ``linear_u8s8_q``, whose epilogue requantizes the rank-r intermediate to u8,
then ``linear_u8s8``), and TVM agrees with the cut-out FX graph: the largest difference in steps
of an 8-bit grid over the output's range (as tests/test_minilm_tvm.py counts them) is at most
AGREE_STEPS.

Latency: ``lowbit.timing.measure`` medians of ``--iters`` module calls (torch tensor in, torch
tensor out: what a user pays), dense and TT variants interleaved for ``--rounds`` rounds; the ms
columns are the medians of the rounds' medians. Speed is paired: per round dense ms / TT ms
(measured back to back), the median over rounds kept (the quartiles shown). On this shared
machine a round's times jump between two levels together for every variant, so a ratio of the
two medians can compare a fast-phase median with a slow-phase one; the paired ratio cannot.
Diagnostics: the same modules timed inside the TVM VM (its ``time_evaluator``: inputs already
TVM tensors, no Python binding or output copy), each half cut out and compiled alone (``x A``
and ``h B``, each with its own input quantizer and float output), the layer's u8 input
quantizer alone (x -> u8, the dense graph's; an elementwise kernel), and the int8 GEMM kernels
alone (``linear_u8s8`` of each shape, default schedule, TVM's time evaluator as in
benchmarks/kernels_cpu.py), to see where a TT layer's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np
import torch
from torch import fx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from sst2_probe import cpu_flags, start_run

import lowbit
from lowbit.config import TT
from lowbit.data import pydoc_sentences, text_batches
from lowbit.io import write_text_atomic
from lowbit.models import load_minilm
from lowbit.timing import load_average, measure

LAYERS = (("384x384 (attn.q)", "encoder.layer.0.attention.self.query"),
          ("384->1536 (ffn.in)", "encoder.layer.0.intermediate.dense"),
          ("1536->384 (ffn.out)", "encoder.layer.0.output.dense"))
GOAL_FLOPS = 1 / 3       # the goal applies at FLOPs <= 1/3 of dense
AGREE_STEPS = 1.0        # TVM vs FX: integer GEMMs are exact; float epilogues in another order
                         # may flip a rounding tie of the rank-r requantizer, one u8 step of the
                         # intermediate, well under one output step (measured: < 1e-4)
QD = torch.ops.quantized_decomposed


def log(msg: str) -> None:
    print(f"[tt_layers] {msg}", file=sys.stderr, flush=True)


# ---- the layer cut out of the quantized graph ---------------------------------------------------
def _param_of(node: fx.Node) -> str:
    """The parameter a linear's weight is read from (through its dequantize)."""
    w = node.args[1]
    while w.op == "call_function":
        w = w.args[0]
    return str(w.target)


def _linear(q: fx.GraphModule, param: str) -> fx.Node:
    for n in q.graph.find_nodes(op="call_function", target=torch.ops.aten.linear.default):
        if _param_of(n) == param:
            return n
    raise KeyError(f"no linear reads {param}")


def _float_input(lin: fx.Node) -> fx.Node:
    """x of ``linear(dequantize(quantize(x)), ...)``: the float tensor before the input's
    quantizer."""
    dq = lin.args[0]
    if dq.target != QD.dequantize_per_tensor.default or dq.args[0].target != \
            QD.quantize_per_tensor.default:
        raise ValueError(f"{lin.name}: its input is not a static u8 quantizer's output")
    return dq.args[0].args[0]


def cut(q: fx.GraphModule, start: fx.Node, end: fx.Node) -> fx.GraphModule:
    """A GraphModule computing ``end`` from ``start`` (its one input): ``end``'s ancestors up
    to ``start``, with the constants they read. Reaching another graph input is an error."""
    g = fx.Graph()
    env = {start: g.placeholder("x")}

    def copy(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op == "placeholder":
                raise ValueError(f"{end.name} depends on graph input {n.name}, not only "
                                 f"on {start.name}")
            for a in n.all_input_nodes:
                copy(a)
            env[n] = g.node_copy(n, lambda a: env[a])
        return env[n]

    g.output(copy(end))
    return fx.GraphModule(q, g)


def layer_inputs(model, tok, seq: int) -> dict[str, torch.Tensor]:
    """Each layer's float input [1, seq, in] on a held-out sentence (eager model, hooks)."""
    x = next(text_batches(tok, pydoc_sentences(1, words=60, offset=100), batch_size=1,
                          seq_len=seq))
    got, hooks = {}, []
    for _, name in LAYERS:
        mod = model.get_submodule(name)
        hooks.append(mod.register_forward_hook(
            lambda m, a, out, name=name: got.__setitem__(name, a[0].detach().clone())))
    with torch.no_grad():
        model(**x)
    for h in hooks:
        h.remove()
    return got


# ---- compile, check, time -----------------------------------------------------------------------
def build_layer(quantized: dict, name: str, ranks: list[int], x: torch.Tensor):
    """Layer ``name`` compiled for ``x``: ``built`` ("dense" and each rank: the whole layer),
    the dense graph's input quantizer alone, and per rank the halves alone ``(x A, h B, h)``.
    Exits if a module is not on the int8 kernels or disagrees with its FX graph."""
    qd = quantized["dense"]
    lin = _linear(qd, name + ".weight_i8")
    built = {"dense": compiled(cut(qd, _float_input(lin), lin), x, ["linear_u8s8"])}
    quantizer = compiled(cut(qd, _float_input(lin), lin.args[0].args[0]), x, [])
    halves = {}
    for r in ranks:
        q = quantized[r]
        a, b = _linear(q, name + ".tt_a_i8"), _linear(q, name + ".tt_b_i8")
        built[r] = compiled(cut(q, _float_input(a), b), x, ["linear_u8s8_q", "linear_u8s8"])
        first = cut(q, _float_input(a), a)
        with torch.no_grad():
            h = first(x).contiguous()
        halves[r] = (compiled(first, x, ["linear_u8s8"]),
                     compiled(cut(q, _float_input(b), b), h, ["linear_u8s8"]), h)
    every = {**built, "quantizer": quantizer}
    for r, (ha, hb, _) in halves.items():
        every[f"A{r}"], every[f"B{r}"] = ha, hb
    bad = {k: (v["kinds"], v["max_steps"]) for k, v in every.items()
           if not (v["int8"] and v["agree"])}
    if bad:
        raise SystemExit(f"{name} M={x.shape[1]}: not on the int8 kernels or disagreeing with "
                         f"FX: {bad}")
    return built, quantizer, halves


def compiled(sub: fx.GraphModule, x: torch.Tensor, want_kinds: list[str]) -> dict:
    mod = lowbit.compile(sub, target="cpu", example_inputs=(x,), progress=False)
    kinds = [k for _, k in mod.meta["lowering"]]
    with torch.no_grad():
        want = sub(x).numpy().astype(np.float64)       # float64: u8 outputs too
    got = mod(x).numpy().astype(np.float64)
    step = (want.max() - want.min()) / 255
    steps = float(np.abs(want - got).max() / step)
    return {"mod": mod, "kinds": kinds, "int8": kinds == want_kinds, "max_steps": steps,
            "agree": steps <= AGREE_STEPS}


def _vm_timer(mod, x: torch.Tensor, number: int):
    """One ``time_evaluator`` call of the module's VM on ``x`` already a TVM tensor: seconds
    per call without the Python binding and copies. (The module's VM and parameters are
    private; a benchmark's look inside.)"""
    import tvm

    vm = mod._ready()
    args = [tvm.runtime.tensor(x.numpy(), mod.device), *mod._params]
    ev = vm.time_evaluator("main", mod.device, number=number, repeat=1)
    return lambda: ev(*args).mean


def gemm_us(m: int, n: int, k: int, threads: int, number: int, repeat: int) -> float:
    """The int8 GEMM kernel alone (``linear_u8s8`` [m, k] x [n, k]^T, the default schedule
    for this host, as benchmarks/kernels_cpu.py times it): median microseconds per call."""
    from lowbit.backends.tvm import kernels
    from lowbit.backends.tvm.check import time_kernels
    from lowbit.backends.tvm.kernels.cpu import for_target
    from lowbit.backends.tvm.target import host_target

    target = host_target(threads)
    func = kernels.default_schedule(for_target(kernels.linear_u8s8(m, n, k), target),
                                    target).mod["main"]
    return time_kernels([func], target, repeat=repeat, number=number)[0] * 1e6


def interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Each of ``fns`` (name -> a call returning a time), in turn, ``rounds`` times."""
    out: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for n, f in fns.items():
            out[n].append(f())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="16,32,64,128")
    ap.add_argument("--tokens", default="1,128", help="M: rows of the GEMMs, [1, M, in]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default="benchmarks/results/tt_layers_cpu.json")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)       # before TVM starts its pool
    command, started, t_start, machine = start_run("tt_layers_cpu.py", argv, args.threads)
    ranks = [int(r) for r in args.ranks.split(",")]
    tokens = [int(m) for m in args.tokens.split(",")]

    model, tok = load_minilm(quiet=True)
    model.encoder.layer = model.encoder.layer[:1]           # layer 0: all it takes
    calib = list(text_batches(tok, pydoc_sentences(16, words=60), batch_size=8, seq_len=128))
    inputs = layer_inputs(model, tok, max(tokens))
    gm = lowbit.capture(model, calib[0])
    names = [n for _, n in LAYERS]
    quantized = {"dense": lowbit.quantize(gm, lowbit.recipes.W8A8, calibration=calib,
                                          progress=False)}
    fits: dict[tuple[int, str], dict] = {}
    for r in ranks:
        t0 = time.perf_counter()
        tgm = lowbit.tensor_train(gm, {n: TT(ranks=r) for n in names}, progress=False)
        for e in tgm.meta["lowbit_tt"]:
            fits[r, e["linear"]] = e
        quantized[r] = lowbit.quantize(lowbit.materialize_tt(tgm), lowbit.recipes.W8A8,
                                       calibration=calib, progress=False)
        log(f"rank {r}: TT-SVD + W8A8 in {time.perf_counter() - t0:.1f} s")

    rows, diag = [], []
    for label, name in LAYERS:
        for m in tokens:
            x = inputs[name][:, :m].contiguous()
            qd = quantized["dense"]
            built, quantizer, halves = build_layer(quantized, name, ranks, x)
            calls = interleaved({k: (lambda v=v, x=x: measure(lambda: v["mod"](x),
                                                               iters=args.iters,
                                                               warmup=10).median_ms)
                                 for k, v in built.items()}, args.rounds)
            vm_fns = {k: _vm_timer(v["mod"], x, args.iters) for k, v in built.items()}
            vm_fns["quantizer"] = _vm_timer(quantizer["mod"], x, args.iters)
            for r, (ha, hb, h) in halves.items():
                vm_fns[f"A{r}"] = _vm_timer(ha["mod"], x, args.iters)
                vm_fns[f"B{r}"] = _vm_timer(hb["mod"], h, args.iters)
            vm = {k: float(np.median(v)) * 1e6 for k, v in
                  interleaved(vm_fns, args.rounds).items()}          # microseconds
            dense_ms = float(np.median(calls["dense"]))
            n_out, n_in = qd.get_submodule(name).get_buffer("weight_i8").shape
            gemm = {"dense": gemm_us(m, n_out, n_in, args.threads, args.iters, args.rounds)}
            for r in ranks:
                e = fits[r, name]
                assert (n_out, n_in) == tuple(e["shape"]), (name, e["shape"])
                mid = e["ranks"][len(e["in_modes"])]
                gemm[f"A{r}"] = gemm_us(m, mid, n_in, args.threads, args.iters, args.rounds)
                gemm[f"B{r}"] = gemm_us(m, n_out, mid, args.threads, args.iters, args.rounds)
                ratio = (n_in * mid + mid * n_out) / (n_in * n_out)
                tt_ms = float(np.median(calls[r]))
                per_round = [d / t for d, t in zip(calls["dense"], calls[r])]
                speed = float(np.median(per_round))
                applies = ratio <= GOAL_FLOPS + 1e-12
                rows.append({
                    "layer": label, "linear": name, "in": n_in, "out": n_out, "tokens": m,
                    "rank_asked": r, "tt_ranks": e["ranks"], "in_modes": e["in_modes"],
                    "out_modes": e["out_modes"], "rank": mid, "flop_ratio": ratio,
                    "dense_ms": dense_ms, "tt_ms": tt_ms, "speed_vs_dense": speed,
                    "speed_per_round": per_round, "dense_round_ms": calls["dense"],
                    "tt_round_ms": calls[r], "goal_applies": applies,
                    "met": (speed >= 1.0) if applies else None,
                    "vm_us": {"dense": vm["dense"], "tt": vm[r], "first_half": vm[f"A{r}"],
                              "second_half": vm[f"B{r}"], "input_quantizer": vm["quantizer"]},
                    "gemm_kernel_us": {"dense": gemm["dense"], "first_half": gemm[f"A{r}"],
                                       "second_half": gemm[f"B{r}"]},
                    "lowering": {"dense": built["dense"]["kinds"], "tt": built[r]["kinds"]},
                    "tvm_vs_fx_max_steps": {"dense": built["dense"]["max_steps"],
                                            "tt": built[r]["max_steps"]},
                    "load_average": load_average()})
                log(f"{label} M={m} r{mid}: dense {dense_ms:.4f} ms, TT {tt_ms:.4f} ms "
                    f"({speed:.2f}x); VM us dense {vm['dense']:.1f} TT {vm[r]:.1f} "
                    f"= A {vm[f'A{r}']:.1f} + B {vm[f'B{r}']:.1f}")
            diag.append({"layer": label, "tokens": m,
                         "call_overhead_us": dense_ms * 1e3 - vm["dense"]})

    print(table(rows))
    print()
    print(diag_table(rows))
    flags = cpu_flags()
    wall = time.perf_counter() - t_start
    print(f"\n`{command}`; {started:%Y-%m-%d %H:%M} UTC, wall {wall:.0f} s; {machine['cpu']}, "
          f"{machine['nproc']} cpu(s), flags `{' '.join(flags)}`; {args.threads} thread(s)")
    result = {"command": command, "date": f"{started:%Y-%m-%d %H:%M} UTC", "wall_s": wall,
              "machine": machine, "cpu_flags": flags, "threads": args.threads,
              "iters": args.iters, "rounds": args.rounds, "goal_flop_ratio": GOAL_FLOPS,
              "agree_steps": AGREE_STEPS, "rows": rows, "call_overhead": diag}
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    return 0


def table(rows: list[dict]) -> str:
    out = [("| layer | M | rank r (asked) | FLOPs vs dense | dense ms | TT ms | TT speed vs "
            "dense (quartiles) | goal applies (FLOPs <= 1/3) | met |"), "|---" * 9 + "|"]
    for r in rows:
        q1, q3 = np.percentile(r["speed_per_round"], [25, 75])
        met = ("yes" if r["met"] else "**no**") if r["goal_applies"] else (
            "n/a" if r["speed_vs_dense"] >= 1 else "n/a (slower)")
        asked = "" if r["rank"] == r["rank_asked"] else f" ({r['rank_asked']})"
        out.append(f"| {r['layer']} | {r['tokens']} | {r['rank']}{asked} | "
                   f"{r['flop_ratio']:.3f} | {r['dense_ms']:.4f} | {r['tt_ms']:.4f} | "
                   f"{r['speed_vs_dense']:.2f}x ({q1:.2f}-{q3:.2f}) | "
                   f"{'yes' if r['goal_applies'] else 'no'} | {met} |")
    return "\n".join(out)


def diag_table(rows: list[dict]) -> str:
    """Inside the VM (no Python call): dense, the TT layer, and its halves compiled alone."""
    out = [("| layer | M | rank r | call overhead us (dense: module - VM) | dense VM us | "
            "TT VM us | x A alone, VM us | h B alone, VM us | u8 input quantizer alone, VM us "
            "| GEMM kernels us: dense / A / B | GOP/s: dense / A / B |"), "|---" * 11 + "|"]
    for r in rows:
        v, g = r["vm_us"], r["gemm_kernel_us"]
        m, n_in, n_out, mid = r["tokens"], r["in"], r["out"], r["rank"]
        gops = [2 * m * a * b / (t * 1e3) for (a, b), t in
                zip(((n_in, n_out), (n_in, mid), (mid, n_out)),
                    (g["dense"], g["first_half"], g["second_half"]))]
        out.append(f"| {r['layer']} | {m} | {mid} | {r['dense_ms'] * 1e3 - v['dense']:.1f} | "
                   f"{v['dense']:.1f} | {v['tt']:.1f} | {v['first_half']:.1f} | "
                   f"{v['second_half']:.1f} | {v['input_quantizer']:.1f} | {g['dense']:.1f} / "
                   f"{g['first_half']:.1f} / {g['second_half']:.1f} | {gops[0]:.0f} / "
                   f"{gops[1]:.0f} / {gops[2]:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
