#!/usr/bin/env python
"""Per-sentence agreement on the real all-MiniLM-L6-v2 (W8A8): FX fake-quant vs float, TVM vs
FX, the eager exact-integer graph (LegalizeQuantLinear's ``lowbit::`` ops run by torch) vs FX,
and TVM vs that graph; sentence-embedding cosines, SST-2 dev sentences, one batch.

    python benchmarks/tvm_agreement.py [--n 16] [--seq 128]

Shows where end-to-end differences come from: exact integer accumulation alone (no TVM)
versus TVM's float kernels (docs/tvm.md, "Agreement with the FX fake-quant graph").
"""

from __future__ import annotations

import argparse
import copy
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=16, help="dev sentences (one batch)")
    p.add_argument("--seq", type=int, default=128)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import lowbit
    from lowbit.backends.tvm.lowering.legalize import LegalizeQuantLinear
    from lowbit.data import read_sst2, text_batches
    from lowbit.models import load_minilm
    from lowbit.models.minilm import mean_pool

    torch.set_num_threads(2)
    model, tok = load_minilm(quiet=True)
    dev, _ = read_sst2("dev")
    train, _ = read_sst2("train")
    batch = next(text_batches(tok, dev[:args.n], batch_size=args.n, seq_len=args.seq))
    calib = list(text_batches(tok, train[8000:8000 + 4 * args.n], batch_size=args.n,
                              seq_len=args.seq))
    gm = lowbit.capture(model, batch)
    q = lowbit.quantize(gm, lowbit.recipes.W8A8, calibration=calib, progress=False)
    exact = copy.deepcopy(q)
    LegalizeQuantLinear()(exact)
    mod = lowbit.compile(q, progress=False)
    with torch.no_grad():
        out = {"float": gm(**batch).last_hidden_state, "FX": q(**batch).last_hidden_state,
               "exact-int": exact(**batch).last_hidden_state}
    out["TVM"] = torch.as_tensor(np.asarray(mod(**batch)[0]))
    emb = {k: mean_pool(v, batch["attention_mask"]) for k, v in out.items()}
    print("tokens            " + " ".join(f"{int(n):6d}" for n in batch["attention_mask"].sum(1)))
    for a, b in (("FX", "float"), ("TVM", "FX"), ("exact-int", "FX"), ("TVM", "exact-int")):
        cos = torch.cosine_similarity(emb[a], emb[b]).tolist()
        print(f"{a + ' vs ' + b:18s}" + " ".join(f"{c:6.4f}" for c in cos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
