"""Every int8 kernel kind on every instruction set of the registry (isa/).

For each (ISA, kernel kind): the kernel is built for a CPU of that family (cross-built: any
host can build any of them) and its machine code must contain the family's instruction
(``vpdpbusd`` / ``vpmaddwd``). Where this host can execute that family (AVX2 kernels run on
every host of this suite, AVX-512 ones only on AVX-512 hosts), the kernel also runs and must
match the int64 numpy reference exactly, on worst-case values: u8 255 against s8 -128 and
127, where a 16-bit pair sum (``vpmaddubsw``) would saturate (255 * 127 * 2 > 32767). Families
this host cannot execute are built and checked for their instruction only: running them would
die with SIGILL; the lowered graph they come from is the same for every family (one weight
layout, pack.py), and its integers are checked against torch on every host (test_compile.py).

Kernels are built as the CPU pipeline gives them to each family (``for_target``): the pair
form (AVX2, AVX-512BW) reads its weights pre-widened to int16 (isa/madd.py), so its kernels
must hold no per-block widening (``vpmovsxbw``), and its worst case is checked both with
int16 weights and with s8 weights (the per-block widening a directly built kernel still
takes). ``widen_weights`` (pipelines/cpu.py) is checked on a Relax module: the cast of the s8
parameter is lifted into ``main_transform_params`` and the module is exact end to end.
"""

import numpy as np
import pytest
import torch
import tvm

from lowbit.backends.tvm import kernels, tile_search
from lowbit.backends.tvm.kernels.cpu import for_target
from lowbit.backends.tvm.kernels.isa import (
    ISAS,
    example_target,
    host_runs,
    isa_of,
    target_features,
)
from lowbit.backends.tvm.kernels.peg import linear_u8s8_peg
from lowbit.backends.tvm.lowering.pack import pack_vnni
from lowbit.backends.tvm.target import host_mattr, resolve_target

ISA_IDS = [i.name for i in ISAS]
M, N, K = 8, 48, 256          # K * 255 * 128 < 2^24: the fp32 epilogue holds the sums exactly


def _worst_case(m, n, k):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    x[:2] = 255                                   # rows of 255 ...
    w[0], w[1], w[2, ::2] = -128, 127, -128       # ... against -128 / 127 rows
    return x, w


def _kinds(target):
    """Every int8 kernel kind, with the weight dtype ``target``'s pipeline gives it."""
    return {
        "linear_u8s8": for_target(kernels.linear_u8s8(M, N, K), target),
        "linear_u8s8_q": for_target(kernels.linear_u8s8_q(M, N, K, "gelu"), target),
        "linear_u8s8_peg": for_target(linear_u8s8_peg(M, N, K, 4), target),
    }


def _build(func, target):
    sch = kernels.default_schedule(func, target)
    assert sch is not None, "no default schedule"
    return tvm.compile(sch.mod["main"].with_attr("global_symbol", "main"), target)


def _asm(lib) -> str:
    mods = [lib.mod, *getattr(lib.mod, "imports", [])]
    for mod in mods:
        try:
            return mod.inspect_source("asm")
        except Exception:  # noqa: BLE001, S112  (a module without asm: try the next)
            continue
    raise AssertionError("no assembly in the built module")


@pytest.mark.parametrize("kind", ["linear_u8s8", "linear_u8s8_q", "linear_u8s8_peg"])
@pytest.mark.parametrize("isa", ISAS, ids=ISA_IDS)
def test_kernel_builds_with_its_instruction(isa, kind):
    target = example_target(isa)
    assert isa_of(target) is isa
    func = _kinds(target)[kind]
    assert str(func.params[1].dtype) == isa.weight_dtype
    asm = _asm(_build(func, target))
    assert isa.mnemonic in asm, f"{kind} for {isa.name}: no {isa.mnemonic} in the machine code"
    if isa.pairs:                  # weights pre-widened: no sign extension left in the kernel
        assert isa.weight_dtype == "int16" and "vpmovsxbw" not in asm
    if isa.name == "avx_vnni":     # 256-bit only: VEX-encoded, no zmm anywhere
        assert "zmm" not in asm
    if isa.name == "avx2":
        assert "zmm" not in asm and "vpdpbusd" not in asm and "vpmaddubsw" not in asm


WEIGHTS = [(i, dt) for i in ISAS for dt in dict.fromkeys((i.weight_dtype, "int8"))]


@pytest.mark.parametrize("isa,w_dtype", WEIGHTS, ids=[f"{i.name}-{dt}" for i, dt in WEIGHTS])
def test_kernel_exact_on_worst_case_values(isa, w_dtype):
    """The packed weight as the family's pipeline gives it (int16 for the pair form), and as
    s8 bytes (what a directly built kernel may pass; the pair form widens it per block)."""
    target = example_target(isa)
    if not host_runs(target):
        pytest.skip(f"this host cannot execute {isa.title} code (built and checked in "
                    f"test_kernel_builds_with_its_instruction)")
    x, w = _worst_case(M, N, K)
    args = [x, pack_vnni(torch.from_numpy(w)).numpy().astype(w_dtype), np.zeros(N, np.int32),
            np.ones(N, np.float32), np.zeros(N, np.float32), np.zeros((M, N), np.float32)]
    lib = _build(kernels.linear_u8s8(M, N, K, w_dtype=w_dtype), target)
    dev = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*dev)
    want = x.astype(np.int64) @ w.astype(np.int64).T
    assert np.abs(want).max() > 2 ** 15 * 2          # far beyond a saturating int16 pair sum
    np.testing.assert_array_equal(dev[-1].numpy().astype(np.int64), want)


@pytest.mark.parametrize("kind", ["linear_u8s8", "linear_u8s8_q", "linear_u8s8_peg"])
@pytest.mark.parametrize("isa", ISAS, ids=ISA_IDS)
def test_kernel_matches_reference(isa, kind):
    from lowbit.backends.tvm.check import check_schedule

    target = example_target(isa)
    if not host_runs(target):
        pytest.skip(f"this host cannot execute {isa.title} code")
    func = _kinds(target)[kind]
    result = check_schedule(func, kernels.default_schedule(func, target).mod["main"], target)
    assert result.ok, result.detail


def _relax_module():
    """``main(x, w_i8, corr, scale, bias)`` calling ``linear_u8s8``; all but x parameters."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((M, K), "uint8"))
    params = [relax.Var("w", relax.TensorType((N // 16, K // 4, 16, 4), "int8")),
              relax.Var("corr", relax.TensorType((N,), "int32")),
              relax.Var("scale", relax.TensorType((N,), "float32")),
              relax.Var("bias", relax.TensorType((N,), "float32"))]
    with bb.function("main", [x, *params], attrs={"num_input": 1}):
        with bb.dataflow():
            gv = bb.add_func(kernels.linear_u8s8(M, N, K), "lowbit_linear_u8s8")
            y = bb.emit_output(bb.emit(relax.call_tir(gv, [x, *params],
                                                      relax.TensorType((M, N), "float32"))))
        bb.emit_func_output(y)
    return bb.get()


@pytest.mark.parametrize("isa", ISAS, ids=ISA_IDS)
def test_pipeline_widens_weights_once_at_load(isa):
    """The CPU pipeline retypes the kernel to the family's weight dtype; the int16 cast of the
    s8 parameter runs in ``main_transform_params`` (once, at load), never in ``main``; the
    module is exact on worst-case values where the host runs it."""
    from lowbit.backends.tvm.pipelines import cpu

    target = example_target(isa)
    mod = cpu.prepare(_relax_module(), target)
    kernel = next(f for gv, f in mod.functions_items() if gv.name_hint == "lowbit_linear_u8s8")
    assert str(kernel.params[1].dtype) == isa.weight_dtype
    main = mod["main"].script()
    assert "astype" not in main and "cast" not in main        # main calls the kernel only
    if isa.weight_dtype != "int8":                             # the cast runs at load
        assert "cast" in mod["main_transform_params"].script()
        assert tile_search.candidates(kernel, isa)            # the tile search takes it too
    if not host_runs(target):
        return
    ex = cpu.build(cpu.schedule(mod, target, progress=False)[0], target)
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    x, w = _worst_case(M, N, K)
    raw = [pack_vnni(torch.from_numpy(w)).numpy(), np.zeros(N, np.int32),
           np.ones(N, np.float32), np.zeros(N, np.float32)]
    params = vm["main_transform_params"]([tvm.runtime.tensor(a) for a in raw])
    assert isa.weight_dtype in {str(p.dtype) for p in params}
    got = vm["main"](tvm.runtime.tensor(x), *params).numpy()
    np.testing.assert_array_equal(got.astype(np.int64), x.astype(np.int64) @ w.astype(np.int64).T)


@pytest.mark.parametrize("name,family", [("x86-64-v3", "avx2"), ("znver3", "avx2"),
                                         ("skylake-avx512", "avx512bw"),
                                         ("alderlake", "avx_vnni"), ("cascadelake", "avx512_vnni"),
                                         ("znver4", "avx512_vnni"), ("x86-64", None)])
def test_named_targets_pick_their_family(name, family):
    isa = isa_of(resolve_target(name))
    assert (isa.name if isa else None) == family


def test_target_dict_mattr_removes_a_family():
    t = resolve_target({"kind": "llvm", "mcpu": "znver4", "mattr": ["-avx512f"]})
    assert isa_of(t).name == "avx2" and "avx512bw" not in target_features(t)


def test_host_flags_correct_the_cpu_name(monkeypatch):
    """A VM that hides AVX-512 from a Zen 4 guest: the flags, not the model name, decide."""
    import lowbit.hostcpu

    monkeypatch.setattr(lowbit.hostcpu, "host_x86_features",
                        lambda: frozenset({"avx2", "fma"}))
    mattr = host_mattr("znver4")
    assert "-avx512f" in mattr and "-avx512vnni" in mattr
    t = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "mattr": mattr})
    assert isa_of(t).name == "avx2"
    monkeypatch.setattr(lowbit.hostcpu, "host_x86_features",
                        lambda: frozenset({"avx2", "fma", "avx_vnni"}))
    assert "+avxvnni" in host_mattr("znver3")


def test_module_for_missing_instructions_is_refused_not_run(monkeypatch):
    """A CPU module needing instructions the host lacks raises a clear error before the VM
    starts (running it would kill the process with SIGILL)."""
    import lowbit.hostcpu
    from lowbit.backends.tvm.runtime import check_host_cpu
    from lowbit.backends.tvm.target import required_cpu_flags
    from lowbit.errors import LowbitError

    meta = {"target": str(example_target(ISAS[0])), "kernel_family": ISAS[0].family,
            "cpu_flags": required_cpu_flags(example_target(ISAS[0]))}
    assert {"avx2", "avx512bw", "avx512_vnni"} <= set(meta["cpu_flags"])
    monkeypatch.setattr(lowbit.hostcpu, "host_x86_features",
                        lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(LowbitError, match="avx512bw.*does not have"):
        check_host_cpu(meta)
    check_host_cpu(dict(meta, cpu_flags=required_cpu_flags(resolve_target("x86-64-v3"))))
