#!/usr/bin/env python
"""AlphaTuning vs fine-tuning baselines: all-MiniLM-L6-v2 (real weights) on GLUE SST-2.

    python benchmarks/alphatuning_sst2.py [--bits 4,3] [--epochs 1] [--batch 32] [--seq 64]
        [--device cpu|cuda] [--variants fp_full,fp_head,lora,bcq_head,alpha_first,alpha_all]
        [--n-train N] [--val N --alpha-lrs 3e-4,1e-3,3e-3] [--json out.json]
        [--doc docs/accuracy.md]

Every variant is the same classifier: MiniLM -> mean over unmasked tokens -> Linear(384, 2),
trained with cross-entropy on ``sst2_train.tsv`` (``--n-train`` sentences, default all 67,349)
and evaluated on the 872 sentences of ``sst2_dev.tsv``, with the same batches in the same
order (``lowbit.train.loop.Trainer``: batch order by step and seed), AdamW, 6% linear warmup
then linear decay, gradient clipping at 1. What trains:

    fp_full      every parameter of the float model + the head          lr 5e-5, head 1e-3
    fp_head      the head only (float model frozen)                      head 1e-3
    lora         peft LoRA r=8 (alpha 16) on query/value + the head      lr 5e-4, head 1e-3
    bcq_head     BCQ post-training (lowbit.quantize, W<b>_BCQ) frozen, head only
    alpha_first  AlphaTuning, the paper's setting: BCQ with one alpha set per output row, only
                 alpha_1 trained (+ head)                                lr --alpha-lr
    alpha_all    AlphaTuning with every alpha of BCQ group 128 trained (+ head)

BCQ variants quantize every encoder linear (36) with ``BCQ(bits, group)``: per row for
``alpha_first`` and ``bcq_head`` rows marked "row", group 128 otherwise. The BCQ model is the
captured FX graph of ``lowbit.quantize`` (``lowbit::bcq_linear`` ops), moved to the device with
``lowbit.capture.to_device``. Trainable parameter counts are reported per variant, and the
ratio of full fine-tuning's count to each. The learning rates are fixed in advance (no search
on dev): common values for each method, stated above.

Learning-rate search without looking at dev: ``--val N`` holds out N training sentences (a
seeded random choice; the rest are trained on) and ``--alpha-lrs`` runs the AlphaTuning
variants once per learning rate; the rate with the best held-out accuracy is marked "chosen"
per variant and bit width, and dev accuracy is reported for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sst2_probe import replace_section, write_atomic  # noqa: E402

import lowbit  # noqa: E402
from lowbit.capture import to_device  # noqa: E402
from lowbit.config import BCQ, Recipe  # noqa: E402
from lowbit.data import read_sst2  # noqa: E402
from lowbit.models.minilm import load_minilm, mean_pool  # noqa: E402
from lowbit.train.alphatuning import AlphaTuner, AlphaTuningConfig, planes_digest  # noqa: E402
from lowbit.train.loop import Group, LoopConfig, Trainer  # noqa: E402

VARIANTS = ("fp_full", "fp_head", "lora", "bcq_head", "bcq_head_g128", "alpha_first",
            "alpha_all")
FP_VARIANTS = ("fp_full", "fp_head", "lora")
LR = {"fp_full": 5e-5, "lora": 5e-4, "head": 1e-3}


def log(msg: str) -> None:
    print(f"[alphatuning-sst2] {msg}", file=sys.stderr, flush=True)


class Data:
    """Pre-tokenized sentences; ``collate`` pads a batch to its longest sentence."""

    def __init__(self, tok, texts, labels, seq: int, device):
        enc = tok(texts, truncation=True, max_length=seq)
        self.items = list(zip(enc["input_ids"], labels))
        self.pad, self.device = tok.pad_token_id, device

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def collate(self, batch):
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (row, _) in enumerate(batch):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        y = torch.tensor([label for _, label in batch])
        return ids.to(self.device), mask.to(self.device), y.to(self.device)


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state


def make_loss(encoder, head):
    def logits(ids, mask):
        return head(mean_pool(_hidden(encoder(input_ids=ids, attention_mask=mask)), mask,
                              normalize=False))

    def loss_fn(batch):
        ids, mask, y = batch
        return torch.nn.functional.cross_entropy(logits(ids, mask), y)

    return loss_fn, logits


@torch.no_grad()
def accuracy(logits, data: Data, batch: int = 128) -> float:
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    right = 0
    for s in range(0, len(order), batch):
        ids, mask, y = data.collate([data[i] for i in order[s:s + batch]])
        right += int((logits(ids, mask).argmax(-1) == y).sum())
    return right / len(data)


def bcq_model(model, tok, bits: int, group: int | None, device):
    enc = tok(["a short example", "another one here"], padding=True, return_tensors="pt")
    example = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    gm = lowbit.capture(model, example, dynamic=True)
    recipe = Recipe(f"W{bits}_BCQ_{'ROW' if group is None else f'G{group}'}",
                    weight=BCQ(bits=bits, group=group), activation=None)
    t0 = time.perf_counter()
    qgm = lowbit.quantize(gm, recipe, progress=False)
    fit_s = time.perf_counter() - t0
    errs = [r["rel_error"] for r in qgm.meta["lowbit_bcq"]]
    return to_device(qgm, device, inplace=True), fit_s, sum(errs) / len(errs)


def run_variant(name: str, bits: int | None, args, tok, train: Data, dev: Data,
                val: Data | None = None) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model, _ = load_minilm(quiet=True)
    head = torch.nn.Linear(model.config.hidden_size, 2)
    total_fp = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in head.parameters())
    steps = max(1, int(args.epochs * len(train) / args.batch))
    loop = dict(steps=steps, batch_size=args.batch, warmup=int(0.06 * steps), seed=args.seed,
                log_every=max(1, steps // 10), checkpoint_every=steps)
    row: dict = {"variant": name, "bits": bits, "steps": steps}
    head_group = Group("head", list(head.named_parameters()), LR["head"])
    if name in FP_VARIANTS:
        encoder = model
        if name == "lora":
            import peft

            encoder = peft.get_peft_model(model, peft.LoraConfig(
                r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"]))
        encoder.to(device).eval()
        head.to(device)
        for p in encoder.parameters():
            p.requires_grad_(False)
        groups = [head_group]
        if name == "fp_full":
            groups.append(Group("model", list(encoder.named_parameters()), LR["fp_full"]))
        elif name == "lora":
            groups.append(Group("lora", [(n, p) for n, p in encoder.named_parameters()
                                         if "lora_" in n], LR["lora"]))
        trainer = Trainer(groups, LoopConfig(**loop), label=f"{name}")
        row["trainable"] = sum(p.numel() for g in groups for _, p in g.params)
        loss_fn, logits = make_loss(encoder, head)
        fit = trainer.fit(loss_fn, train, train.collate, progress=True)
    else:
        group = None if name in ("bcq_head", "alpha_first") else 128
        encoder, fit_s, err = bcq_model(model, tok, bits, group, device)
        head.to(device)
        row.update(group="row" if group is None else group, fit_seconds=round(fit_s, 1),
                   mean_rel_error=round(err, 4))
        digest = planes_digest(encoder)
        loss_fn, logits = make_loss(encoder, head)
        if name.startswith("bcq_head"):
            for p in encoder.parameters():
                p.requires_grad_(False)
            trainer = Trainer([head_group], LoopConfig(**loop), label=name)
            row["trainable"] = sum(p.numel() for p in head.parameters())
            fit = trainer.fit(loss_fn, train, train.collate, progress=True)
        else:
            cfg = AlphaTuningConfig(**loop, lr=args.alpha_lr, head_lr=LR["head"],
                                    alphas="first" if name == "alpha_first" else "all")
            tuner = AlphaTuner(encoder, head.parameters(), cfg)
            row["trainable"] = tuner.counts()["trainable"]
            fit = tuner.fit(loss_fn, train, train.collate, progress=True)
        row["planes_unchanged"] = planes_digest(encoder) == digest
    if name.startswith("alpha_"):
        row["alpha_lr"] = args.alpha_lr
    if val is not None:
        row["val_accuracy"] = round(100 * accuracy(logits, val), 2)
    row.update(dev_accuracy=round(100 * accuracy(logits, dev), 2),
               train_seconds=round(fit.seconds, 1),
               final_loss=round(sum(fit.losses[-50:]) / len(fit.losses[-50:]), 4),
               ratio_vs_full=round(total_fp / row["trainable"], 1))
    log(json.dumps(row))
    return row


def table(rows: list[dict], meta: dict) -> str:
    lines = ["## AlphaTuning on SST-2 (all-MiniLM-L6-v2)", "",
             f"Command: `{meta['command']}`", "",
             f"Run on {meta['device']} ({meta['host']}); torch {meta['torch']}; "
             f"{meta['n_train']} training sentences, {meta['epochs']} epoch(s) of batch "
             f"{meta['batch']} ({rows[0]['steps']} steps); dev: {meta['n_dev']} sentences. "
             + (f"Learning rates of the alpha_* rows chosen on {meta['n_val']} held-out "
                f"training sentences (val), not on dev." if meta["n_val"] else
                "The learning rates are fixed in advance (benchmarks/alphatuning_sst2.py)."), "",
             "| variant | bits | alpha group | alpha lr | trainable params | full FT / trainable "
             "| BCQ rel. error | val acc % | dev acc % | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lr = f"{r['alpha_lr']:g}" + (" (chosen)" if r.get("chosen") else "") \
            if "alpha_lr" in r else "-"
        lines.append(f"| {r['variant']} | {r['bits'] or 'fp32'} | {r.get('group', '-')} | "
                     f"{lr} | {r['trainable']:,} | {r['ratio_vs_full']:,}x | "
                     f"{r.get('mean_rel_error', '-')} | {r.get('val_accuracy', '-')} | "
                     f"{r['dev_accuracy']} | {r['train_seconds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", default="4,3")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--alpha-lr", type=float, default=1e-4)
    ap.add_argument("--alpha-lrs", default=None,
                    help="comma list: run the alpha_* variants once per learning rate")
    ap.add_argument("--val", type=int, default=0,
                    help="hold out this many training sentences to choose --alpha-lrs on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=pathlib.Path, default=None)
    ap.add_argument("--doc", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")
    bits = [int(b) for b in args.bits.split(",") if b]
    if args.device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    _, tok = load_minilm(quiet=True)
    texts, labels = read_sst2("train")
    if args.n_train:
        texts, labels = texts[:args.n_train], labels[:args.n_train]
    val = None
    if args.val:
        if not 0 < args.val < len(texts):
            ap.error(f"--val must be in 1..{len(texts) - 1}, got {args.val}")
        perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(args.seed))
        held = set(perm[:args.val].tolist())
        val = Data(tok, [t for i, t in enumerate(texts) if i in held],
                   [y for i, y in enumerate(labels) if i in held], args.seq, args.device)
        texts = [t for i, t in enumerate(texts) if i not in held]
        labels = [y for i, y in enumerate(labels) if i not in held]
    train = Data(tok, texts, labels, args.seq, args.device)
    dev = Data(tok, *read_sst2("dev"), args.seq, args.device)
    lrs = [float(v) for v in args.alpha_lrs.split(",")] if args.alpha_lrs else [args.alpha_lr]
    rows = []
    for v in variants:
        for b in ([None] if v in FP_VARIANTS else bits):
            for lr in (lrs if v.startswith("alpha_") else [args.alpha_lr]):
                args.alpha_lr = lr
                rows.append(run_variant(v, b, args, tok, train, dev, val))
                if args.json:
                    write_atomic(args.json, json.dumps({"rows": rows}, indent=1))
    if val is not None:           # the learning rate chosen on the held-out split, per setting
        best: dict = {}
        for r in rows:
            key = (r["variant"], r["bits"])
            if key not in best or r["val_accuracy"] > best[key]["val_accuracy"]:
                best[key] = r
        for r in best.values():
            r["chosen"] = True
    meta = {"command": "python benchmarks/alphatuning_sst2.py " + " ".join(argv or sys.argv[1:]),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
            "host": platform.processor() or platform.machine(), "torch": torch.__version__,
            "n_train": len(train), "n_dev": len(dev), "n_val": len(val) if val else 0,
            "epochs": args.epochs, "batch": args.batch}
    text = table(rows, meta)
    print(text)
    if args.json:
        write_atomic(args.json, json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.doc:
        replace_section(args.doc, text, marker="alphatuning-sst2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
