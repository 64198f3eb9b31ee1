"""lowbit.search.cost: the bytes of every candidate equal what lowbit's packers produce.

Each case quantizes a weight with the candidate's own numerics, packs it with the packer that
stores that format (pack_vnni, pack_int4, pack_planes, onnx_ir's UINT4 packing, the
per-word embedding tables' byte count) and compares the byte counts exactly.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from lowbit.backends.tvm.lowering.pack import pack_int4, pack_vnni
from lowbit.errors import ConfigError
from lowbit.quant import bcq, word_bits
from lowbit.quant.numerics import quantize_weight
from lowbit.search import Candidate, SearchSpace, candidate_bytes

N, K = 48, 256


@pytest.fixture(scope="module")
def w():
    return torch.randn(N, K, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("group", [None, 64])
def test_int8_symmetric_is_vnni_codes_plus_fp32_scales(w, group):
    space = SearchSpace(group=group)
    q, scale, _ = quantize_weight(w, space.uniform_spec(8, K))
    real = pack_vnni(q).numel() * q.element_size() + scale.nbytes   # N % 16 == 0: no padding
    got = candidate_bytes(N, K, Candidate("uniform", 8), space)
    assert got["total"] == real and got["zero_points"] == 0


def test_uint8_affine_adds_uint8_zero_points(w):
    space = SearchSpace(symmetric=False, group=64)
    q, scale, zp = quantize_weight(w, space.uniform_spec(8, K))
    real = q.nbytes + scale.nbytes + zp.to(torch.uint8).nbytes
    assert candidate_bytes(N, K, Candidate("uniform", 8), space)["total"] == real


@pytest.mark.parametrize("scale_bytes", [4, 2])
def test_int4_symmetric_is_pack_int4_plus_scales(w, scale_bytes):
    space = SearchSpace(group=128, scale_bytes=scale_bytes)
    q, scale, _ = quantize_weight(w, space.uniform_spec(4, K))
    stored_scale = scale.to(torch.float32 if scale_bytes == 4 else torch.float16)
    real = pack_int4(q).nbytes + stored_scale.nbytes
    assert candidate_bytes(N, K, Candidate("uniform", 4), space)["total"] == real


def test_uint4_affine_zero_points_pack_two_per_byte_as_onnx_stores_them(w):
    space = SearchSpace(symmetric=False, group=64)
    q, scale, zp = quantize_weight(w, space.uniform_spec(4, K))
    zp_u4 = ir.Tensor(zp.flatten().numpy().astype(np.uint8), dtype=ir.DataType.UINT4)
    q_u4 = ir.Tensor(q.numpy().astype(np.uint8), dtype=ir.DataType.UINT4)
    real = len(q_u4.tobytes()) + scale.nbytes + len(zp_u4.tobytes())
    got = candidate_bytes(N, K, Candidate("uniform", 4), space)
    assert got["total"] == real and got["codes"] == pack_int4((q.to(torch.int16) - 8).to(
        torch.int8)).nbytes


@pytest.mark.parametrize("bits", [2, 3])
def test_uniform_2_3_bit_affine_is_the_word_bits_table_bytes(w, bits):
    """Sub-4-bit uniform codes are bit planes + one scale and one offset per group
    (uniform_as_bcq), priced as the per-word embedding tables price them (fp16 scales)."""
    plan = word_bits.WordBitsPlan(bits=(bits,), tier=torch.zeros(N, dtype=torch.int64),
                                  method="uniform", group=64)
    table = word_bits.quantize_embedding(w, plan, progress=False)
    space = SearchSpace(symmetric=False, group=64, scale_bytes=2)
    got = candidate_bytes(N, K, Candidate("uniform", bits), space)
    nb = table.nbytes()
    assert (got["codes"], got["scales"], got["zero_points"]) == (nb["planes"], nb["alpha"],
                                                                 nb["offset"])
    planes = bcq.pack_planes(bcq.uniform_as_bcq(w, bits, 64).planes_i8)
    assert got["codes"] == planes.nbytes


@pytest.mark.parametrize("bits,group,offset", [(2, None, False), (3, 64, True), (4, 128, False)])
def test_bcq_is_packed_planes_plus_fp32_alphas_and_offsets(w, bits, group, offset):
    space = SearchSpace(group=group, bcq_offset=offset, bcq_iters=2)
    fit = bcq.fit(w, bits, space.bcq_group(K), 2, offset=offset)
    real = bcq.pack_planes(fit.planes_i8).nbytes + fit.alpha_f32.nbytes + (
        fit.offset_f32.nbytes if offset else 0)
    assert candidate_bytes(N, K, Candidate("bcq", bits), space)["total"] == real


def test_bcq_fp16_alphas_match_the_word_bits_tables(w):
    plan = word_bits.WordBitsPlan(bits=(3,), tier=torch.zeros(N, dtype=torch.int64),
                                  method="bcq", group=64)
    table = word_bits.quantize_embedding(w, plan, iters=0, progress=False)
    space = SearchSpace(group=64, scale_bytes=2)
    assert candidate_bytes(N, K, Candidate("bcq", 3), space)["total"] == table.nbytes()["total"]


def test_fp_and_pruned(w):
    assert candidate_bytes(N, K, Candidate("fp", 32), SearchSpace())["total"] == w.nbytes
    assert candidate_bytes(N, K, Candidate("fp", 16), SearchSpace(fp_bytes=2))["total"] == \
        w.half().nbytes
    assert candidate_bytes(N, K, Candidate("pruned", 0), SearchSpace())["total"] == 0


def test_row_blocks_add_up_to_the_whole_weight():
    space = SearchSpace(group=64)
    for cand in space.candidates():
        whole = candidate_bytes(N, K, cand, space)["total"]
        parts = sum(candidate_bytes(16, K, cand, space)["total"] for _ in range(N // 16))
        assert parts == whole, cand


def test_space_and_candidate_errors():
    with pytest.raises(ConfigError, match="SearchSpace.group"):
        SearchSpace(group=12)
    with pytest.raises(ConfigError, match="SearchSpace.bits"):
        SearchSpace(bits=(9,))
    with pytest.raises(ConfigError, match="Candidate.bits"):
        Candidate("bcq", 8)
    with pytest.raises(ConfigError, match="Candidate.code"):
        Candidate("int4", 4)
    with pytest.raises(ConfigError, match="does not divide"):
        SearchSpace(group=64).check_width(96, "layer.x")
    labels = [c.label() for c in SearchSpace().candidates()]
    assert labels == ["pruned", "int2", "bcq2", "int3", "bcq3", "int4", "bcq4", "int8", "fp32"]
