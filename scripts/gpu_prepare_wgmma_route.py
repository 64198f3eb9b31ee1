"""Build here (no GPU) what scripts/gpu_check_wgmma_route.py checks on the GPU machine: the
sm_90a wgmma shells of `lowbit.compile`'s CUDA route (issue 20) one per shape and configuration,
and a tiny W8A8 BERT compiled for sm_90a (wgmma) and for sm_90 (mma.sync), into
.gpu_bundle/wg20 (git-ignored; carry it).

    python scripts/gpu_prepare_wgmma_route.py
"""
import json
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel

from lowbit import recipes
from lowbit.backends.tvm.kernels.cuda import shell_u8s8_wgmma
from lowbit.backends.tvm.lowering.pack import pack_rowmajor
from lowbit.backends.tvm.pipelines.cuda import build_kernel, fatbin_arches
from lowbit.backends.tvm.target import resolve_target
from lowbit.capture import capture
from lowbit.compiler import compile
from lowbit.quantize import quantize

out = Path(__file__).resolve().parents[1] / ".gpu_bundle" / "wg20"; out.mkdir(exist_ok=True)
tgt = resolve_target({"kind": "cuda", "arch": "sm_90a"})
rng = np.random.default_rng(0)
shapes = [(16, 128, 128, None), (300, 200, 320, None), (1024, 768, 3072, None),
          (130, 500, 48, "128x64_s6"), (257, 384, 1536, "128x128_s4"), (4096, 1536, 384, "128x192_s4"),
          (4096, 3072, 768, None), (4100, 776, 784, "64x192_s3_p"), (1000, 3000, 400, "128x256_s3_p"),
          (520, 520, 1040, "64x128_s4_p"), (2000, 1000, 256, "128x128_s6_p")]
cases = []
for i, (m, n, k, cfg) in enumerate(shapes):
    f = shell_u8s8_wgmma(m, n, k, config=cfg, target=tgt)
    lib = build_kernel(f, tgt)
    p = out / f"k{i}.so"; lib.export_library(str(p))
    assert fatbin_arches(p) == ["sm_90"], fatbin_arches(p)
    x = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    corr = rng.integers(-1000, 1000, n).astype(np.int32)
    scale = (rng.random(n) * 1e-3).astype(np.float32); bias = rng.standard_normal(n).astype(np.float32)
    np.savez(out / f"k{i}.npz", x=x, w=pack_rowmajor(torch.from_numpy(w)).numpy(), wplain=w, corr=corr, scale=scale, bias=bias)
    cases.append({"i": i, "m": m, "n": n, "k": k, "cfg": str(f.attrs["lowbit.config"])})
(out / "cases.json").write_text(json.dumps(cases))
torch.manual_seed(0)
for seq in (16, 200):
    cfgb = BertConfig(hidden_size=128, num_hidden_layers=1, num_attention_heads=4, intermediate_size=256, vocab_size=100)
    ids = torch.randint(0, 100, (1, seq)); inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    q = quantize(capture(BertModel(cfgb).eval(), inputs), recipes.W8A8, calibration=[inputs], progress=False)
    for arch in ("sm_90a", "sm_90"):
        mod = compile(q, target={"kind": "cuda", "arch": arch}, progress=False)
        d = mod.save(out / f"bert{seq}_{arch}")
        np.savez(d / "io.npz", input_ids=ids.numpy(), attention_mask=inputs["attention_mask"].numpy())
print("ok", cases)
