#!/usr/bin/env python
"""TT-SVD of all-MiniLM-L6-v2's encoder linears at several ranks, before any training (issue 18
phase 1: the initialisation the distillation of phase 4 starts from).

    python benchmarks/minilm_tt.py [--ranks 16,32,64,128] [--eval 64] [--seq 64] [--threads 1]
        [--out /tmp/lb/minilm_tt.json]

Per rank (every attention and FFN linear, balanced modes: 384 -> (16, 24), 1536 -> (32, 48)):
the cores' parameters over the dense weights', the mean relative Frobenius error
``|W - W_tt| / |W|`` of the 36 linears, the extra error int8 / int4 cores add
(``|W_q - W_tt| / |W_tt|``, one learned-scale grid per bond channel as ``TT.bits`` starts, and
per tensor for comparison), and end to end (``lowbit.tensor_train``, FX, float cores) the mean
cosine of the mean-pooled sentence embedding vs FP32 on the first ``--eval`` SST-2 dev
sentences.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import lowbit
from lowbit.config import TT, PerTensor, QuantSpec
from lowbit.data import read_sst2, text_batches
from lowbit.io import write_text_atomic
from lowbit.models import load_minilm
from lowbit.models.minilm import mean_pool
from lowbit.quant import tt
from lowbit.quant.numerics import fake_quantize, weight_qparams

ROLES = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out")


def quant_error(fit: tt.TTWeight, bits: int, per_bond: bool) -> float:
    d, cores = len(fit.cores), []
    for k, c in enumerate(fit.cores):
        if per_bond:
            cores.append(tt.TTCoreQuant(c, bits, tt.core_axis(k, d))(c).detach())
        else:
            spec = QuantSpec(bits=bits, granularity=PerTensor())
            s, z = weight_qparams(c, spec)
            lim = 2 ** (bits - 1) - 1
            cores.append(fake_quantize(c, s, z, -lim, lim))
    a, b = fit.halves(cores)
    ref = fit.full()
    return float(((a @ b).t() - ref).norm() / ref.norm())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="16,32,64,128")
    p.add_argument("--eval", type=int, default=64)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/lb/minilm_tt.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_minilm(quiet=True)
    held = list(text_batches(tok, read_sst2("dev")[0][:a.eval], batch_size=8, seq_len=a.seq))
    gm = lowbit.capture(model, held[0], dynamic=True)
    ref = [mean_pool(gm(**b).last_hidden_state, b["attention_mask"]) for b in held]
    weights = {ref_.name: gm.get_parameter(ref_.weight).detach()
               for role, ref_ in lowbit.find_transformer(gm).linears() if role in ROLES}
    rows = []
    for r in (int(x) for x in a.ranks.split(",")):
        t0 = time.perf_counter()
        errs, q, params, dense = [], {k: [] for k in ("int8", "int8_tensor", "int4",
                                                       "int4_tensor")}, 0, 0
        for name, w in weights.items():
            modes = tt.layer_modes(TT(ranks=r), w.shape[1], w.shape[0], name)
            fit = tt.tt_svd(w, *modes, ranks=r, where=name)
            errs.append(float((fit.full() - w).norm() / w.norm()))
            params, dense = params + fit.params, dense + w.numel()
            for bits in (8, 4):
                q[f"int{bits}"].append(quant_error(fit, bits, True))
                q[f"int{bits}_tensor"].append(quant_error(fit, bits, False))
        tgm = lowbit.tensor_train(gm, TT(ranks=r), layers=ROLES, progress=False)
        with torch.no_grad():
            cos = torch.cat([torch.nn.functional.cosine_similarity(
                mean_pool(tgm(**b).last_hidden_state, b["attention_mask"]), e)
                for b, e in zip(held, ref)]).mean()
        row = {"rank": r, "param_ratio": round(params / dense, 4),
               "rel_error": round(sum(errs) / len(errs), 4),
               **{k: round(sum(v) / len(v), 4) for k, v in q.items()},
               "cosine": round(float(cos), 4), "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_text_atomic(a.out, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
