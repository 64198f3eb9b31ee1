#!/usr/bin/env python
"""Gemma-3-270M wikitext-2 perplexity: BCQ post-training vs AlphaTuning, at 4 and 3 bits.

    python benchmarks/gemma_bcq_ppl.py [--bits 4,3] [--tokens 2048] [--ctx 512]
        [--train-windows 32] [--train-ctx 128] [--steps 60] [--lr 1e-3] [--alphas first]
        [--threads 2] [--out docs/accuracy.md]

1. Gemma-3-270M base (``lowbit.models.load_gemma``, sha256-verified GGUF, dequantized to fp32),
   captured at ``--ctx`` tokens for evaluation; the evaluation windows are those of
   ``benchmarks/gemma_ppl.py`` (the first ``ceil(tokens / (ctx - 1))`` chunks of
   ``wikitext2_test_raw.txt``, ``[BOS] + chunk``, every token scored).
2. Adaptation text, disjoint from the evaluation text: ``--train-windows`` windows of
   ``--train-ctx`` tokens from the *end* of the same file (the run prints the token ranges).
3. Per bit width: ``BCQ(bits, group=None)`` (one alpha set per output row, the AlphaTuning
   paper's setting) on every linear of the decoder blocks (126; the tied embedding / LM head
   stays float); perplexity of the post-training model; then AlphaTuning
   (``lowbit.train.alphatuning``: ``--alphas first`` = alpha_1 only, the paper's choice) for
   ``--steps`` steps of batch 1 with next-token cross-entropy on the adaptation windows, on a
   second capture at ``--train-ctx`` that shares the alphas; perplexity again. Also reported
   once per bit width: BCQ with group 128 (post-training only).
"""

from __future__ import annotations

import argparse
import math
import pathlib
import shlex
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gemma_ppl import DATA, perplexity, windows  # noqa: E402
from sst2_probe import replace_section  # noqa: E402

import lowbit  # noqa: E402
from lowbit.config import BCQ, Recipe  # noqa: E402
from lowbit.data import shared_data_dir  # noqa: E402
from lowbit.models import load_gemma  # noqa: E402
from lowbit.train.alphatuning import AlphaTuner, AlphaTuningConfig, planes_digest  # noqa: E402

MARKER = "gemma-bcq"


def log(msg: str) -> None:
    print(msg, flush=True)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) \
        else out


def share_alphas(src, dst) -> None:
    """Make ``dst`` (a second capture, same parameter names) use ``src``'s BCQ tensors."""
    params = dict(src.named_parameters())
    buffers = dict(src.named_buffers())
    for name, _ in list(dst.named_parameters()):
        owner, _, attr = name.rpartition(".")
        setattr(dst.get_submodule(owner) if owner else dst, attr, params[name])
    for name, _ in list(dst.named_buffers()):
        owner, _, attr = name.rpartition(".")
        (dst.get_submodule(owner) if owner else dst).register_buffer(attr, buffers[name])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", default="4,3")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--train-windows", type=int, default=32)
    p.add_argument("--train-ctx", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alphas", choices=("first", "all"), default="first")
    p.add_argument("--iters", type=int, default=15, help="BCQ refinement rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    command = "python benchmarks/gemma_bcq_ppl.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm, tok = load_gemma()
    bos = lm.config.bos_token_id
    ids = tok((shared_data_dir() / DATA).read_text(encoding="utf-8"), add_special_tokens=False,
              return_tensors="pt")["input_ids"][0]
    n = args.ctx - 1
    n_eval = math.ceil(args.tokens / n)
    eval_wins = windows(ids[:n_eval * n], args.ctx, bos)
    m = args.train_ctx - 1
    train_start = len(ids) - args.train_windows * m
    if train_start < n_eval * n:
        p.error("adaptation and evaluation text overlap: fewer --train-windows or --tokens")
    train_wins = windows(ids[train_start:], args.train_ctx, bos)
    log(f"{DATA}: {len(ids)} tokens; eval tokens 0..{n_eval * n - 1} ({len(eval_wins)} x "
        f"{args.ctx}); adaptation tokens {train_start}..{len(ids) - 1} ({len(train_wins)} x "
        f"{args.train_ctx})")
    gm = lowbit.capture(lm, (eval_wins[0],))
    gm_train = lowbit.capture(lm, (train_wins[0],))
    rows = [{"variant": "FP32", **perplexity(gm, eval_wins, "FP32")}]
    for bits in [int(b) for b in args.bits.split(",") if b]:
        for group in (128, None):
            recipe = Recipe(f"W{bits}_BCQ_{'ROW' if group is None else f'G{group}'}",
                            weight=BCQ(bits=bits, group=group, iters=args.iters),
                            activation=None)
            t = time.perf_counter()
            q = lowbit.quantize(gm, recipe, progress=True)
            fit_s = time.perf_counter() - t
            rep = q.meta["lowbit_bcq"]
            err = sum(r["rel_error"] for r in rep) / len(rep)
            unif = sum(r["uniform_rel_error"] for r in rep) / len(rep)
            worse = sum(r["rel_error"] > r["uniform_rel_error"] for r in rep)
            row = {"variant": f"BCQ PTQ ({recipe.name})", "bits": bits, "linears": len(rep),
                   "rel_error": err, "uniform_rel_error": unif, "layers_worse_than_uniform": worse,
                   "fit_s": fit_s, **perplexity(q, eval_wins, recipe.name)}
            rows.append(row)
            log(str(row))
            if group is not None:
                continue
            qt = lowbit.quantize(gm_train, recipe, progress=False)   # same fits, train shape
            share_alphas(q, qt)
            digest = planes_digest(q)
            tuner = AlphaTuner(q, (), AlphaTuningConfig(
                steps=args.steps, batch_size=1, lr=args.lr, alphas=args.alphas,
                warmup=max(1, args.steps // 10), log_every=max(1, args.steps // 6),
                checkpoint_every=args.steps))

            def loss_fn(batch, qt=qt):
                w = batch[0]
                logits = _logits(qt(w))[0, :-1]
                return torch.nn.functional.cross_entropy(logits.float(), w[0, 1:])

            fit = tuner.fit(loss_fn, train_wins, progress=True)
            row = {"variant": f"AlphaTuning ({recipe.name}, alphas={args.alphas})",
                   "bits": bits, "trainable": tuner.counts()["alpha"],
                   "train_s": fit.seconds, "planes_unchanged": planes_digest(q) == digest,
                   **perplexity(q, eval_wins, f"AlphaTuning W{bits}")}
            rows.append(row)
            log(str(row))
    total = sum(p_.numel() for p_ in lm.parameters())
    lines = ["## Gemma-3-270M: BCQ post-training vs AlphaTuning (wikitext-2 perplexity)", "",
             f"Command: `{command}` ({args.threads} threads, CPU, torch {torch.__version__}, "
             f"{time.perf_counter() - t0:.0f} s in all).", "",
             f"Evaluation: tokens 0..{n_eval * n - 1} of `{DATA}` ({len(eval_wins)} windows of "
             f"{args.ctx}); adaptation: tokens {train_start}..{len(ids) - 1} "
             f"({len(train_wins)} windows of {args.train_ctx}, disjoint), {args.steps} steps of "
             f"batch 1, lr {args.lr}, alphas={args.alphas}. Model parameters: {total:,}.", "",
             "| variant | bits | mean rel. error (BCQ / uniform RTN) | layers where BCQ > RTN "
             "| trainable | perplexity |", "|---|---|---|---|---|---|"]
    for r in rows:
        e = (f"{r['rel_error']:.4f} / {r['uniform_rel_error']:.4f}" if "rel_error" in r else "-")
        lines.append(f"| {r['variant']} | {r.get('bits', 'fp32')} | {e} | "
                     f"{r.get('layers_worse_than_uniform', '-')} | "
                     f"{r.get('trainable', '-') if 'trainable' not in r else format(r['trainable'], ',')} "
                     f"| {r['ppl']:.3f} |")
    text = "\n".join(lines)
    log("\n" + text)
    if args.out is not None:
        replace_section(args.out, text, MARKER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
