"""The BCQ bit-plane kernel (``bcq_linear``, kernels/bcq.py) and its lowering.

- the kernel on operands packed by ``pack_bcq`` (lowering/bcq.py) against the op's eager torch
  implementation (``lowbit::bcq_linear``, the reference), q = 1..4 planes, groups of 32, 128
  and one per row, M = 1, 3 (GEMV) and 17 (GEMM), with and without offset and bias; both GEMV
  forms (table lookup where the host has AVX-512, bit-plane adds everywhere), the numpy
  reference of the kernel layout, an N that needs padding;
- builds for other x86 CPUs: AVX2 (``x86-64-v3``) takes the bit-plane form, an AVX-512 CPU
  the table lookup (``vpermps``/``vpermd`` in its machine code); run where the host can;
- the Relax repacking the FX frontend emits equals ``pack_bcq``;
- end to end: a tiny BERT converted by QuantizeBCQ, compiled for the CPU, agrees with its FX
  graph in eager torch (decode-shaped and prefill-shaped inputs); the same model exported to
  ONNX and converted by the ONNX QuantizeBCQ (``lowbit.BCQLinear`` nodes) agrees with
  onnxruntime running the nodes' decomposition.
"""

import numpy as np
import pytest
import torch
import tvm

from lowbit.backends.tvm import kernels
from lowbit.backends.tvm.kernels import bcq
from lowbit.backends.tvm.kernels.isa import host_runs
from lowbit.backends.tvm.lowering.bcq import emit_pack_bcq, pack_bcq
from lowbit.backends.tvm.target import host_target
from lowbit.quant.bcq import pack_planes
from lowbit.quant.bcq_linear import bcq_linear

RTOL = 1e-5   # of the largest output: fp32 sums in another order (measured ~5e-7)
HOST = host_target(2)
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})


def _operands(m, n, k, q, group, offset, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (q, n, k), generator=g).to(torch.int8) * 2 - 1
    groups = k // group
    return (torch.randn(m, k, generator=g), pack_planes(signs),
            torch.rand(n, groups, q, generator=g) + 0.1,
            torch.randn(n, groups, generator=g) if offset else None,
            torch.randn(n, generator=g) if bias else None)


def _run(func, target, arrays) -> np.ndarray:
    lib = tvm.compile(func.with_attr("global_symbol", "main"), target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


def _check(got: np.ndarray, want: torch.Tensor) -> None:
    want = want.numpy()
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * scale)


def _kernel_case(m, n, k, q, group, offset, bias, target, form=None):
    x, planes, alpha, off, b = _operands(m, n, k, q, group, offset, bias)
    want = bcq_linear(x, planes, alpha, off, b)
    packed = [t.numpy() for t in pack_bcq(planes, alpha, off, b)]
    func = bcq.bcq_linear(m, n, k, q, group, offset)
    if form is None:
        sched = kernels.default_schedule(func, target).mod["main"]
    else:
        sched = bcq.bcq_gemv(m, n, k, q, group, offset, bcq.block_width(n), form)
    arrays = [x.numpy(), *packed, np.zeros((m, n), np.float32)]
    _check(_run(sched, target, arrays), want)
    return arrays, want


CASES = [  # m, n, k, q, group, offset, bias
    (1, 64, 256, 1, 32, False, False),
    (1, 300, 512, 3, 128, False, True),     # N padded to a block of 64
    (1, 64, 256, 2, 256, True, True),       # one group per row
    (3, 64, 256, 4, 32, True, False),
    (3, 256, 384, 3, 128, True, True),
    (3, 100, 128, 2, 128, False, True),     # N padded to a block of 16
    (17, 64, 256, 3, 32, True, True),
    (17, 96, 256, 1, 128, False, False),
    (17, 64, 256, 4, 256, False, True),
]


@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: "m{}_n{}_k{}_q{}_g{}_off{:d}_b{:d}".format(*c))
def test_kernel_matches_op(case):
    arrays, want = _kernel_case(*case, HOST)
    # the numpy reference of the kernel layout (check.py, tuning) agrees with the op too
    _check(kernels.REFERENCES["bcq_linear"](*arrays[:-1]), want)


@pytest.mark.parametrize("form", bcq.GEMV_FORMS)
@pytest.mark.parametrize("m,q,offset", [(1, 3, False), (2, 4, True), (4, 1, True)])
def test_gemv_forms(form, m, q, offset):
    if form == "lut" and not bcq.has_avx512(HOST):
        pytest.skip("the table-lookup GEMV needs AVX-512 (host has none)")
    _kernel_case(m, 320, 256, q, 64, offset, True, HOST, form=form)


def test_default_schedule_by_rows():
    """The target's GEMV form up to its GEMV_MAX_M rows, the strip-decoding GEMM above."""
    for target in (HOST, AVX2):
        form = bcq.gemv_form(target)
        for m, want in ((1, form), (bcq.GEMV_MAX_M[form], form),
                        (bcq.GEMV_MAX_M[form] + 1, None)):
            sched = kernels.default_schedule(bcq.bcq_linear(m, 64, 128, 2, 32, False), target)
            attrs = sched.mod["main"].attrs
            assert (str(attrs["lowbit.form"]) if "lowbit.form" in attrs else None) == want


def test_gemv_group_not_whole_bytes_takes_gemm():
    """A group of 4 inputs splits plane bytes: the GEMM schedule takes even M = 1."""
    func = bcq.bcq_linear(1, 32, 64, 2, 4, False)
    with pytest.raises(ValueError, match="multiple of 8"):
        bcq.bcq_gemv(1, 32, 64, 2, 4, False, 16)
    _kernel_case(1, 32, 64, 2, 4, False, True, HOST)
    assert kernels.default_schedule(func, HOST) is not None


def _asm(lib) -> str:
    for mod in [lib.mod, *getattr(lib.mod, "imports", [])]:
        try:
            return mod.inspect_source("asm")
        except Exception:  # noqa: BLE001, S112
            continue
    raise AssertionError("no assembly in the built module")


@pytest.mark.parametrize("target,form,mnemonic", [(AVX2, "bits", None),
                                                  (AVX512, "lut", "vperm")],
                         ids=["x86-64-v3", "skylake-avx512"])
def test_cross_build(target, form, mnemonic):
    assert bcq.gemv_form(target) == form
    func = bcq.bcq_linear(1, 64, 256, 3, 128, False)
    sched = kernels.default_schedule(func, target).mod["main"]
    assert str(sched.attrs["lowbit.form"]) == form
    asm = _asm(tvm.compile(sched.with_attr("global_symbol", "main"), target))
    if mnemonic:
        assert mnemonic in asm
    assert "zmm" not in asm or target is AVX512
    if host_runs(target):
        _kernel_case(1, 64, 256, 3, 128, False, True, target)


def test_relax_repack_equals_torch():
    from tvm import relax

    q, n, k, groups = 3, 100, 64, 2          # N=100: padded to a block of 16
    _, planes, alpha, off, _ = _operands(1, n, k, q, k // groups, True, False)
    bb = relax.BlockBuilder()
    ps = [relax.Var("planes", relax.TensorType(planes.shape, "uint8")),
          relax.Var("alpha", relax.TensorType(alpha.shape, "float32")),
          relax.Var("offset", relax.TensorType(off.shape, "float32"))]
    with bb.function("main", ps):
        with bb.dataflow():
            outs = emit_pack_bcq(bb, *ps, None, (q, n, k, groups))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), "llvm"), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(t.numpy()) for t in (planes, alpha, off)])
    want = pack_bcq(planes, alpha, off, None)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())


def test_checked_by_check_schedule():
    from lowbit.backends.tvm.check import check_schedule

    for m in (1, 5):
        func = bcq.bcq_linear(m, 48, 128, 2, 32, True)
        sched = kernels.default_schedule(func, HOST).mod["main"]
        assert check_schedule(func, sched, HOST).ok


def test_bad_shapes():
    with pytest.raises(ValueError, match="group dividing K"):
        bcq.bcq_linear(1, 16, 64, 2, 48, False)
    with pytest.raises(ValueError, match="1..8 bit planes"):
        bcq.bcq_linear(1, 16, 64, 0, 32, False)
    with pytest.raises(ValueError, match="form"):
        bcq.bcq_gemv(1, 16, 64, 2, 32, False, 16, "tables")


# ---- end to end ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=128, vocab_size=100)).eval()


@pytest.fixture(scope="module")
def bcq_bert(tiny_bert):
    import lowbit
    from lowbit.config import BCQ
    from lowbit.passes.fx.bcq import QuantizeBCQ, bcq_nodes

    model, graphs = tiny_bert, {}
    for name, shape, spec in (("decode", (1, 4), BCQ(bits=3, group=32, iters=2, offset=True)),
                              ("prefill", (2, 16), BCQ(bits=2, group=None, iters=2))):
        ids = torch.randint(0, 100, shape)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        recipe = lowbit.recipes.W3_BCQ.replace(weight=spec)
        gm = QuantizeBCQ(recipe, progress=False)(lowbit.capture(model, batch)).graph
        assert len(bcq_nodes(gm)) == 6
        graphs[name] = (gm, batch)
    return graphs


@pytest.mark.parametrize("name", ["decode", "prefill"])
def test_bert_matches_fx(bcq_bert, name):
    import lowbit

    gm, batch = bcq_bert[name]
    want = gm(**batch)
    mod = lowbit.compile(gm, target="cpu", progress=False)
    got = mod(**batch)
    for w, g in zip(want.values(), got):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4)


@pytest.mark.parametrize("offset", [False, True])
def test_onnx_bcqlinear_matches_onnxruntime(tiny_bert, tmp_path, offset):
    """The ONNX pass writes an Offset input always (zeros without one): the import drops an
    all-zero Offset (kernel name ends in _0), keeps a fitted one (_1)."""
    import onnx_ir as ir

    import lowbit
    from lowbit.backends.onnxruntime import OrtRunner
    from lowbit.backends.tvm.frontends.onnx import import_onnx
    from lowbit.config import BCQ
    from lowbit.onnx_quantize import quantize_onnx

    ids = torch.randint(0, 100, (1, 4), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    path = lowbit.export_onnx(lowbit.capture(tiny_bert, batch), tmp_path / "tiny.onnx")
    model = quantize_onnx(str(path), lowbit.recipes.W3_BCQ.replace(
        weight=BCQ(bits=3, group=32, iters=2, offset=offset)))
    assert sum(n.op_type == "BCQLinear" for n in model.graph) == 6
    ir.save(model, tmp_path / "tiny_bcq.onnx")
    imported, log = import_onnx(model)
    assert [k for _, k in log].count("bcq_linear") == 6, log     # named in the lowering log
    names = [gv.name_hint for gv in imported.mod.get_global_vars()]
    bcq_kernels = [n for n in names if n.startswith("lowbit_bcq_linear_")]
    assert bcq_kernels and all(n.endswith(f"_{int(offset)}") for n in bcq_kernels)
    feed = {k: v.numpy() for k, v in batch.items()}
    want = OrtRunner(str(tmp_path / "tiny_bcq.onnx"))(**feed)
    got = lowbit.compile(model, target="cpu", progress=False)(**feed)
    for w, g in zip(want, got):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-4)
