"""Build BCQ models for sm_90 here (no GPU), with their references, for
scripts/gpu_check_bcq_models.py on the GPU machine (issues 15 and 16, end to end on CUDA).

    python scripts/gpu_prepare_bcq_models.py [--out .gpu_bundle/bcq_models] \
        [--models minilm,gemma] [--word-plan PLAN.json] [--ctx 128]

- ``minilm_w3_b1`` / ``minilm_w3_onnx_b1``: the real all-MiniLM-L6-v2 (word embedding cut to the rows the test
  sentences use, as scripts/gpu_prepare.py does, to fit the transfer limit) with W3_BCQ,
  compiled from the FX graph and from its ONNX export; reference: the FX graph's output.
- ``tiny_gemma_{ctx16,m1}`` (only when asked): a 2-layer Gemma-3 with random weights, a per-word
  table on Zipf counts and W3_BCQ: the kernels of the real model in a few MB.
- ``gemma_ctx<ctx>`` and ``gemma_m1``: Gemma-3-270M with the per-word table of ``--word-plan``
  (a per-row ``WordBitsPlan`` JSON, e.g. one benchmarks/gemma_word_bits.py saved; the tied LM
  head reads the same tiers) and W3_BCQ on every decoder linear; one wikitext-2 window of
  ``--ctx`` tokens (``[BOS]`` + text) and a decode-length call (``[BOS]``, M = 1). References:
  the FX graph's logits (the last 8 positions in full, the argmax of every position) and the
  float model's argmax. Both modules hold the same weights: params_gemma.bin is saved once.
  ``gemma_onnx_*`` (and ``tiny_gemma_onnx_*``): the same quantized graphs exported to ONNX
  (``lowbit.BCQLinear`` and per-word nodes) and compiled from the file; same references; one
  params file per input shape (``params_gemma_onnx_<tag>.bin``).

Each folder holds a saved CompiledModule (params.bin moved to ``params_<model>.bin``) and io.npz.
``index.json`` lists them with the lowering summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

KEEP_ROWS = 8       # full logits of the last positions kept as the reference (262144 x 4 B each)


def log(msg: str) -> None:
    print(msg, flush=True)


def save_sm90(mod, folder: Path, name: str, model: str) -> Path:
    """Save the CUDA module ``mod`` to folder/name (its library checked to hold sm_90 code);
    its params.bin is kept once per ``model`` as folder/params_<model>.bin (checked equal when
    several modules share it; the device check links it back). Returns the module folder."""
    from lowbit.backends.tvm.pipelines.cuda import fatbin_arches

    d = mod.save(folder / name)
    assert fatbin_arches(d / "model.so") == ["sm_90"], fatbin_arches(d / "model.so")
    pfile = folder / f"params_{model}.bin"
    if pfile.exists():
        assert pfile.read_bytes() == (d / "params.bin").read_bytes(), f"{name}: other weights"
        (d / "params.bin").unlink()
    else:
        shutil.move(d / "params.bin", pfile)
    return d


def _save(mod, folder: Path, name: str, model: str, io: dict, index: list, **extra) -> None:
    """Save ``mod`` to folder/name with io.npz; params once per ``model`` (checked equal)."""
    from lowbit.backends.tvm.api import lowering_summary

    d = save_sm90(mod, folder, name, model)
    pfile = folder / f"params_{model}.bin"
    np.savez(d / "io.npz", **io)
    index.append({"name": name, "model": model, "inputs": [k for k in io if k.startswith("in_")],
                  "lowering": lowering_summary(mod.meta["lowering"], None),
                  "params_mb": round(pfile.stat().st_size / 1e6, 1), **extra})
    log(f"{name}: saved ({index[-1]['lowering']}); params_{model}.bin "
        f"{index[-1]['params_mb']} MB")


def _both_routes(q, example, folder: Path, model: str, tag: str, io: dict, index: list,
                 **extra) -> None:
    """Compile the quantized graph ``q`` for sm_90 from FX and from its ONNX export (traced with
    ``example``), save both (``<model>_<tag>`` and ``<model>_onnx_<tag>``; the routes' params
    are saved separately)."""
    import lowbit
    from lowbit.export.onnx import export_onnx

    t = time.perf_counter()
    mod = lowbit.compile(q, target="cuda", progress=False)
    log(f"{model} {tag}: compiled from FX for sm_90 in {time.perf_counter() - t:.0f} s")
    _save(mod, folder, f"{model}_{tag}", model, io, index, **extra)
    del mod
    tmp = folder / f"_onnx_{model}_{tag}"
    tmp.mkdir(exist_ok=True)
    t = time.perf_counter()
    path = export_onnx(q, tmp / f"{model}.onnx")
    mod = lowbit.compile(str(path), example_inputs=example, target="cuda", progress=False)
    log(f"{model} {tag}: exported to ONNX and compiled for sm_90 in "
        f"{time.perf_counter() - t:.0f} s")
    # the ONNX import bakes shape-dependent constants (rotary tables, masks) into the params:
    # one params file per input shape
    _save(mod, folder, f"{model}_onnx_{tag}", f"{model}_onnx_{tag}", io, index, **extra)
    shutil.rmtree(tmp)


def minilm(folder: Path, index: list) -> None:
    import torch
    from gpu_prepare import _minilm_cut

    import lowbit

    model, batches, _ = _minilm_cut(1)
    x = batches[1]
    gm = lowbit.capture(model, x)
    q = lowbit.quantize(gm, lowbit.recipes.W3_BCQ, progress=False)
    with torch.no_grad():
        fx = q(**x).last_hidden_state.numpy()
    io = {"in_input_ids": x["input_ids"].numpy(), "in_attention_mask": x["attention_mask"].numpy(),
          "fx": fx}
    _both_routes(q, x, folder, "minilm_w3", "b1", io, index,
                 torch_config=json.loads(model.config.to_json_string()))


def gemma(folder: Path, index: list, plan_path: Path, ctx: int, iters: int) -> None:
    import torch

    import lowbit
    from lowbit.data import shared_data_dir
    from lowbit.models import load_gemma
    from lowbit.passes.fx.word_bits import QuantizeWordBits
    from lowbit.quant.word_bits import WordBitsPlan, quantize_embedding

    if not plan_path.is_file():
        raise SystemExit(f"{plan_path}: no word plan; benchmarks/gemma_word_bits.py saves its "
                         f"plans (JSON) in its --work folder")
    plan = WordBitsPlan.load(plan_path)
    lm, tok = load_gemma(quiet=True)
    text = (shared_data_dir() / "wikitext2_test_raw.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    bos = lm.config.bos_token_id
    xs = {f"ctx{ctx}": torch.cat([torch.tensor([bos]), ids[:ctx - 1]])[None],
          "m1": torch.tensor([[bos]])}
    t = time.perf_counter()
    table = quantize_embedding(lm.model.embed_tokens.weight.detach(), plan, iters=iters,
                               progress=False)
    log(f"gemma: plan {plan_path.name}: tiers {plan.bits}, rows {plan.tier_sizes}, "
        f"{plan.average_bits:.4f} bits; fitted in {time.perf_counter() - t:.0f} s")
    for tag, x in xs.items():
        gm = lowbit.capture(lm, (x,))
        with torch.no_grad():
            fp = gm(x)[0].numpy()
        QuantizeWordBits(table, progress=False)(gm)
        t = time.perf_counter()
        q = lowbit.quantize(gm, lowbit.recipes.W3_BCQ, progress=False)
        with torch.no_grad():
            fx = q(x)[0].numpy()
        log(f"gemma {tag}: quantized in {time.perf_counter() - t:.0f} s")
        io = {"in_input_ids": x.numpy(), "fx_tail": fx[0, -KEEP_ROWS:],
              "fx_argmax": fx[0].argmax(-1), "fp_argmax": fp[0].argmax(-1)}
        _both_routes(q, (x,), folder, "gemma", tag, io, index,
                     torch_config=json.loads(lm.config.to_json_string()))  # timing baseline
        del q, gm


def tiny_gemma(folder: Path, index: list) -> None:
    """A 2-layer Gemma-3 (random weights, vocabulary 4096) with a per-word table on Zipf counts
    (tiers 4/3/2 bits, the tied head reads them) and W3_BCQ: the same kernels as the real one
    (every tier of the head at N >= 256) in a few MB."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    import lowbit
    from lowbit.quant.word_bits import plan_for_budget

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=4096, hidden_size=640, intermediate_size=1024,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=256, sliding_window=512, use_cache=False)
    lm = Gemma3ForCausalLM(cfg).eval()
    counts = (10**6 / torch.arange(1, 4097)).long() + 1
    plan = plan_for_budget(counts, 2.5, (4, 3, 2))
    g = torch.Generator().manual_seed(1)
    for tag, x in {"ctx16": torch.randint(0, 4096, (1, 16), generator=g),
                   "m1": torch.tensor([[2]])}.items():
        gm = lowbit.capture(lm, (x,))
        with torch.no_grad():
            fp = gm(x)[0].numpy()
        q = lowbit.quantize(lowbit.quantize_words(gm, plan, progress=False),
                            lowbit.recipes.W3_BCQ, progress=False)
        with torch.no_grad():
            fx = q(x)[0].numpy()
        io = {"in_input_ids": x.numpy(), "fx_tail": fx[0, -KEEP_ROWS:],
              "fx_argmax": fx[0].argmax(-1), "fp_argmax": fp[0].argmax(-1)}
        _both_routes(q, (x,), folder, "tiny_gemma", tag, io, index,
                     torch_config=json.loads(cfg.to_json_string()))


def _family(model: str) -> str:
    """``minilm_w3_onnx_b1`` -> ``minilm``, ``gemma_onnx_m1`` -> ``gemma``: ``--models``'s names."""
    return model.split("_onnx")[0].rsplit("_w3", 1)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / ".gpu_bundle" / "bcq_models"))
    p.add_argument("--models", default="minilm,gemma")
    p.add_argument("--word-plan", type=Path,
                   default=Path("/tmp/lb/word_bits/plan_word-bcq_at_2.1254.json"))
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--iters", type=int, default=15, help="BCQ refinement rounds (word table)")
    args = p.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    index_file = folder / "index.json"
    which = args.models.split(",")
    index = [e for e in json.loads(index_file.read_text()) if _family(e["model"]) not in which
             ] if index_file.exists() else []
    if "minilm" in which:
        minilm(folder, index)
    if "gemma" in which:
        gemma(folder, index, args.word_plan, args.ctx, args.iters)
    if "tiny_gemma" in which:
        tiny_gemma(folder, index)
    index_file.write_text(json.dumps(index, indent=1))
    log(f"{len(index)} modules in {folder}")


if __name__ == "__main__":
    main()
