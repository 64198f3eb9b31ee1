#!/usr/bin/env python
"""Tensor-train MiniLM on SST-2: TT-SVD, layer-by-layer distillation, then end-to-end task
training (issue 18 item 6, accuracy and size).

    python benchmarks/minilm_tt_sst2.py [--ranks 16,32,64] [--bits 8,4] [--teacher-epochs 1]
        [--distill-steps 300] [--e2e-epochs 1] [--lr 1e-3] [--e2e-lr 3e-4] [--batch 32]
        [--seq 64] [--n-train N]
        [--embedding-bits 4] [--teacher-cache FILE] [--device cuda|cpu] [--json out.json]
        [--save DIR]

1. Teacher: all-MiniLM-L6-v2 (real weights) -> mean pool -> Linear(384, 2), every parameter
   fine-tuned on ``sst2_train.tsv`` (cross-entropy, ``--teacher-epochs``, lr 5e-5 / head 1e-3,
   as ``fp_full`` of benchmarks/alphatuning_sst2.py, whose Data / loss / accuracy it reuses).
2. Per rank x bits: the fine-tuned encoder captured (``lowbit.capture``, dynamic batch and
   length), every attention and FFN linear replaced by TT cores (``lowbit.tensor_train``, TT
   with ``ranks`` as the max rank of every bond, balanced modes, int8 / int4 learnable-scale
   fake quantization of the cores); the head starts as the teacher's.
3. ``LayerwiseDistiller`` (``lowbit.train.distill``): per block, ``--distill-steps`` steps on
   training sentences matching the teacher's block output (normalised MSE), only that block's
   cores and scales trained.
4. End to end: the cores, scales and head trained ``--e2e-epochs`` on the task, loss =
   cross-entropy + KL to the teacher's logits, lr ``--e2e-lr`` (cores, scales; 3e-4) and 1e-3
   (head).
``--embedding-bits b``: the word embedding (30,522 x 384, half of MiniLM's parameters) is also
rounded to b-bit asymmetric integers per row (min-max, weight-only, frozen; fp32 scale and zero
point per row), in the teacher's copy used by the student only; 0 keeps it fp32.
``--save DIR``: each trained student to ``DIR/student-r<rank>-<bits>.pt`` (``save_student``:
the capture's state without the word embedding, the head, and the word embedding as its integer
codes with per-row scale and zero point, which is exact), for benchmarks/minilm_tt_tvm.py
``--student`` (TVM on CPU) and scripts/gpu_prepare_tt.py (sm_90). ``--ranks ""`` trains and
caches the teacher only.
Reported per row: dev accuracy after TT-SVD alone, after the layerwise stage and after the
end-to-end stage; bytes of the encoder linears (cores at ``bits``, their fp32 scales) and of the
whole model (embeddings, norms and biases at fp32) against FP32, and the merged form's FLOPs
per token of the TT linears against the dense ones.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from alphatuning_sst2 import Data, accuracy, make_loss
from sst2_probe import write_atomic

import lowbit
from lowbit.capture import to_device
from lowbit.config import TT, PerChannel, QuantSpec
from lowbit.data import read_sst2
from lowbit.models.minilm import load_minilm
from lowbit.quant.numerics import quantize_weight
from lowbit.train.distill import (
    DistillConfig,
    LayerwiseDistiller,
    student_parameters,
)
from lowbit.train.loop import Group, LoopConfig, Trainer


def log(msg: str) -> None:
    print(f"[minilm-tt-sst2] {msg}", file=sys.stderr, flush=True)


def train_teacher(args, train: Data, dev: Data):
    """The fine-tuned teacher; with ``--teacher-cache`` loaded from (or saved to) that file."""
    torch.manual_seed(args.seed)
    model, _ = load_minilm(quiet=True)
    head = torch.nn.Linear(model.config.hidden_size, 2)
    model.to(args.device).eval()
    head.to(args.device)
    _, logits = make_loss(model, head)
    cache = args.teacher_cache
    if cache is not None and cache.exists():
        state = torch.load(cache, map_location=args.device)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        for p in [*model.parameters(), *head.parameters()]:
            p.requires_grad_(False)
        acc = 100 * accuracy(logits, dev)
        log(f"teacher: loaded from {cache}, dev {acc:.2f}%")
        return model, head, acc
    steps = max(1, int(args.teacher_epochs * len(train) / args.batch))
    cfg = LoopConfig(steps=steps, batch_size=args.batch, warmup=int(0.06 * steps),
                     seed=args.seed, log_every=max(1, steps // 10), checkpoint_every=steps)
    trainer = Trainer([Group("model", list(model.named_parameters()), 5e-5),
                       Group("head", list(head.named_parameters()), 1e-3)], cfg, label="teacher")
    loss_fn, _ = make_loss(model, head)
    fit = trainer.fit(loss_fn, train, train.collate)
    for p in [*model.parameters(), *head.parameters()]:
        p.requires_grad_(False)
    if cache is not None:
        torch.save({"model": model.state_dict(), "head": head.state_dict()}, cache)
    acc = 100 * accuracy(logits, dev)
    log(f"teacher: {steps} steps in {fit.seconds:.0f} s, dev {acc:.2f}%")
    return model, head, acc


def capture(model, tok):
    enc = tok(["a short example", "another one here"], padding=True, return_tensors="pt")
    example = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return lowbit.capture(model.cpu(), example, dynamic=True)


WORD = "embeddings.word_embeddings.weight"


def quantize_words(student, bits: int) -> tuple[int, dict]:
    """Round the student's word embedding per row to ``bits`` (asymmetric, frozen from here on);
    returns its bytes (codes + fp32 scale and zero point per row) and the codes, scale and zero
    point (what ``save_student`` stores)."""
    w = student.get_parameter(WORD)
    spec = QuantSpec(bits=bits, symmetric=False, granularity=PerChannel(axis=0))
    codes, scale, zp = quantize_weight(w, spec, WORD)
    with torch.no_grad():
        w.copy_((codes.float() - zp) * scale)
    return w.numel() * bits // 8 + 8 * w.shape[0], {"codes": codes, "scale": scale,
                                                    "zero_point": zp}


def save_student(path: pathlib.Path, student, head, rank: int, bits: int | None,
                 word: dict | None, seq: int) -> None:
    """The trained student, compactly (module docstring, ``--save``); written atomically.
    ``word``: ``quantize_words``' codes (None: the fp32 word embedding is stored)."""
    state = {k: v.detach().cpu() for k, v in student.state_dict().items() if k != WORD}
    out = {"rank": rank, "bits": bits, "seq": seq, "state": state,
           "head": {k: v.cpu() for k, v in head.state_dict().items()},
           "word": word or {"weight": student.get_parameter(WORD).detach().cpu()}}
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(path)


def load_student(path: pathlib.Path) -> tuple[dict, dict, dict]:
    """``save_student``'s file -> (student state with the word embedding, head state, info)."""
    d = torch.load(path, map_location="cpu")
    word = d["word"]
    if "codes" in word:
        w = (word["codes"].float() - word["zero_point"]) * word["scale"]
    else:
        w = word["weight"]
    state = dict(d["state"])
    state[WORD] = w
    info = {k: d[k] for k in ("rank", "bits", "seq")}
    return state, d["head"], info


def sizes(student, teacher_model, bits: int | None, word_bytes: int | None) -> dict:
    """Bytes: TT cores at ``bits`` (fp32 without) and their fp32 scales; the rest of the model
    (embeddings, norms, biases) at fp32. FLOPs per token of the merged TT linears (x A B) vs
    the dense ones."""
    report = student.meta["lowbit_tt"]
    cores = sum(r["params"] for r in report)
    dense = sum(r["dense_params"] for r in report)
    scales = sum(p.numel() for n, p in student.named_parameters() if ".tt_quant" in n)
    rest = sum(p.numel() for p in teacher_model.parameters()) - dense
    linear_bytes = cores * (bits or 32) // 8 + 4 * scales
    rest_bytes = 4 * rest
    if word_bytes is not None:
        rest_bytes += word_bytes - 4 * student.get_parameter(WORD).numel()
    per_row = [(r["flops"]["merged"] / r["rows"], r["flops"]["dense"] / r["rows"])
               for r in report]
    return {"tt_params": cores, "dense_params": dense, "scales": scales,
            "linear_bytes": linear_bytes, "linear_fp32_bytes": 4 * dense,
            "model_bytes": linear_bytes + rest_bytes, "model_fp32_bytes": 4 * (dense + rest),
            "flops_per_token_tt": int(sum(m for m, _ in per_row)),
            "flops_per_token_dense": int(sum(d for _, d in per_row))}


def run_tt(args, rank: int, bits: int | None, teacher, head0, tok, train: Data, dev: Data
           ) -> dict:
    row: dict = {"rank": rank, "bits": bits}
    t0 = time.perf_counter()
    tgm = capture(teacher, tok)
    student = lowbit.tensor_train(tgm, TT(ranks=rank, bits=bits), progress=False)
    row["tt_svd_s"] = round(time.perf_counter() - t0, 1)
    row["rel_error"] = round(sum(r["rel_error"] for r in student.meta["lowbit_tt"])
                             / len(student.meta["lowbit_tt"]), 4)
    word_bytes, word = (quantize_words(student, args.embedding_bits) if args.embedding_bits
                        else (None, None))
    row["embedding_bits"] = args.embedding_bits or 32
    row.update(sizes(student, teacher, bits, word_bytes))
    row["compression"] = round(row["model_fp32_bytes"] / row["model_bytes"], 2)
    tgm, student = to_device(tgm, args.device), to_device(student, args.device)
    head = torch.nn.Linear(head0.in_features, 2).to(args.device)
    head.load_state_dict(head0.state_dict())
    _, logits = make_loss(student, head)
    row["acc_svd"] = round(100 * accuracy(logits, dev), 2)

    def run(m, b):
        return m(input_ids=b[0], attention_mask=b[1])

    dcfg = DistillConfig(steps=args.distill_steps, batch_size=args.batch, lr=args.lr,
                         warmup=args.distill_steps // 10, seed=args.seed,
                         log_every=max(1, args.distill_steps // 4),
                         checkpoint_every=args.distill_steps)
    t0 = time.perf_counter()
    fits = LayerwiseDistiller(tgm, student, dcfg, run=run).fit(train, train.collate)
    row["distill_s"] = round(time.perf_counter() - t0, 1)
    row["distill_loss"] = [[round(f.losses[0], 4), round(f.losses[-1], 4)] for f in fits]
    row["acc_layerwise"] = round(100 * accuracy(logits, dev), 2)

    _, t_logits = make_loss(tgm, head0)

    def e2e_loss(batch):
        ids, mask, y = batch
        with torch.no_grad():
            t = t_logits(ids, mask)
        s = logits(ids, mask)
        kl = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1),
                                        log_target=True, reduction="batchmean")
        return torch.nn.functional.cross_entropy(s, y) + kl

    steps = max(1, int(args.e2e_epochs * len(train) / args.batch))
    for p in student.parameters():
        p.requires_grad_(False)
    cfg = LoopConfig(steps=steps, batch_size=args.batch, warmup=int(0.06 * steps),
                     seed=args.seed + 1, log_every=max(1, steps // 5), checkpoint_every=steps)
    trainer = Trainer([Group("tt", student_parameters(student), args.e2e_lr),
                       Group("head", list(head.named_parameters()), 1e-3)], cfg,
                      label=f"end to end r{rank} {bits or 'fp32'}")
    fit = trainer.fit(e2e_loss, train, train.collate)
    row["e2e_s"] = round(fit.seconds, 1)
    row["acc_e2e"] = round(100 * accuracy(logits, dev), 2)
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        path = args.save / f"student-r{rank}-{bits or 'fp32'}.pt"
        save_student(path, student, head, rank, bits, word, args.seq)
        row["saved"] = path.name
    log(json.dumps(row))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="16,32,64")
    ap.add_argument("--bits", default="8,4", help="core bits; 0 for float cores")
    ap.add_argument("--teacher-epochs", type=float, default=1.0)
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--e2e-epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3, help="cores and scales, layerwise stage")
    ap.add_argument("--e2e-lr", type=float, default=3e-4, help="cores and scales, end to end")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--teacher-cache", type=pathlib.Path, default=None,
                    help="load the fine-tuned teacher from this file, or save it there")
    ap.add_argument("--embedding-bits", type=int, default=4, help="0: fp32 word embedding")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=pathlib.Path, default=None)
    ap.add_argument("--save", type=pathlib.Path, default=None,
                    help="folder for the trained students (save_student)")
    args = ap.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",") if r]
    bits = [int(b) or None for b in args.bits.split(",") if b]
    _, tok = load_minilm(quiet=True)
    texts, labels = read_sst2("train")
    if args.n_train:
        texts, labels = texts[:args.n_train], labels[:args.n_train]
    train = Data(tok, texts, labels, args.seq, args.device)
    dev = Data(tok, *read_sst2("dev"), args.seq, args.device)
    t_start = time.perf_counter()
    teacher, head, teacher_acc = train_teacher(args, train, dev)
    meta = {"command": "python benchmarks/minilm_tt_sst2.py " + " ".join(argv or sys.argv[1:]),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
            "host": platform.processor() or platform.machine(), "torch": torch.__version__,
            "n_train": len(train), "n_dev": len(dev), "teacher_dev_accuracy": round(teacher_acc, 2)}
    rows = []
    for r in ranks:
        for b in bits:
            teacher.to(args.device)
            rows.append(run_tt(args, r, b, teacher, head, tok, train, dev))
            meta["seconds"] = round(time.perf_counter() - t_start)
            if args.json:
                write_atomic(args.json, json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
