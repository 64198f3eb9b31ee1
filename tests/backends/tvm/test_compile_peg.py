"""PEG W8A8 through lowbit.compile (issue 7, item 5): the linears whose input is a PEG
quantizer (the FFN input) lower to the group-wise int8 GEMM, and the integer module agrees
with the FX fake-quant graph within one output step (the fraction off bounded as for W8A8)."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from lowbit import recipes
from lowbit.backends.tvm.kernels.isa import isa_of
from lowbit.backends.tvm.target import host_target
from lowbit.capture import capture
from lowbit.compiler import compile
from lowbit.quantize import quantize

pytestmark = pytest.mark.skipif(
    isa_of(host_target()) is None, reason="host without AVX2: no int8 kernels")
OUT_SCALE, OUT_ZP = 0.03, 128
MAX_OFF_BY_ONE = 0.01   # as tests/backends/tvm/test_compile.py


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, vocab_size=100)
    model = BertModel(cfg).eval()   # two outputs: mod(...) returns a tuple

    def batch():
        ids = torch.randint(0, 100, (2, 16))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    inputs = batch()
    return capture(model, inputs), inputs, [batch() for _ in range(3)]


@pytest.mark.parametrize("permute", [False, True], ids=["plain", "permuted"])
def test_peg_lowers_to_group_gemm_and_agrees(bert, permute):
    gm, inputs, calib = bert
    q = quantize(gm, recipes.peg_recipe(groups=4, permute=permute), calibration=calib,
                 progress=False)
    mod = compile(q, progress=False)
    kinds = [k for _, k in mod.meta["lowering"]]
    assert kinds.count("linear_u8s8_peg") == 2, kinds        # FFN in of each block
    assert sum(k.startswith("linear_u8s8") for k in kinds) == 12   # + the fp32 pooler
    off, total = 0, 0
    for b in [inputs, *calib]:
        want = q(**b).last_hidden_state.detach().numpy()
        got = np.asarray(mod(**b)[0])
        # both on one output grid: steps apart
        sw = np.round(want / OUT_SCALE) + OUT_ZP
        sg = np.round(got / OUT_SCALE) + OUT_ZP
        d = np.abs(sw - sg)
        assert d.max() <= 1 + 1e-6 or (d > 1).mean() < 1e-3, d.max()
        off += int((d >= 1).sum())
        total += d.size
    assert off / total <= MAX_OFF_BY_ONE, off / total


def test_peg_linear_with_n_not_a_multiple_of_16_stays_fp32():
    """The group GEMM's schedule tiles N by 16: an FFN of width 72 keeps its PEG input
    linear in fp32, with the reason in the lowering log (no schedule error at build)."""
    import copy

    from lowbit.backends.tvm.lowering.legalize import LOWERING_META, LegalizeQuantLinear

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=72, vocab_size=100)
    ids = torch.randint(0, 100, (2, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    q = quantize(capture(BertModel(cfg).eval(), batch), recipes.peg_recipe(groups=4),
                 calibration=[batch], progress=False)
    gm = LegalizeQuantLinear()(copy.deepcopy(q)).graph
    kinds = [k for _, k in gm.meta[LOWERING_META]]
    assert "fp32: N=72 not a multiple of 16 (PEG kernel)" in kinds, kinds
    assert "linear_u8s8_peg" not in kinds
