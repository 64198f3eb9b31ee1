"""Index inputs are checked at the module boundary (input_bounds.py, CompiledModule).

- structure, on hand-built Relax: which gathers bound which input and to what range (take on
  any axis, index_tensor, intersection of two tables, ONNX's negative wrapping), what is not
  bounded (clip-mode takes, indices derived only from shapes) and what is warned about
  (indices computed from an input by arithmetic);
- the tiny BERT compiled W8A8 for the CPU, with token_type_ids as an input: ids 10**8, -1,
  vocab_size and 2**32 + 5 (which the graph's int32 cast would wrap into range: garbage, not a
  crash) raise ``RuntimeInputError`` naming the input, the value, its first position and the
  range; vocab_size - 1 runs and agrees with the FX graph within one output step (and row 99
  is really read: the output differs from id 98); token type 2 raises;
- a QDQ ONNX file of the same model: ONNX Gather wraps negatives, so [-vocab, vocab - 1]
  is allowed and -1 equals vocab - 1 exactly;
- save/load keeps the check, an old meta.json without bounds still loads, the check runs
  before any device work (also for a module cross-compiled for sm_90, which cannot run here);
- float inputs have no bounds: NaN runs through.
"""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from tvm import relax

import lowbit
from lowbit import recipes
from lowbit.backends.tvm.input_bounds import UnsafeIndexWarning, input_bounds
from lowbit.backends.tvm.runtime import RuntimeInputError, check_bounds, load
from lowbit.testing import quantize_outputs

VOCAB, TYPES = 100, 2
OUT_SCALE, OUT_ZP = 0.03, 128
MAX_OFF_BY_ONE = 0.01   # as in test_compile.py: only fp32 rounding ties move an element a step
WORD, TYPE = "p_embeddings_word_embeddings_weight", "p_embeddings_token_type_embeddings_weight"

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")


# ---- structure: hand-built Relax ---------------------------------------------------------------
def _tensor(name, shape, dtype="float32"):
    return relax.Var(name, relax.TensorType(shape, dtype))


def _build(params, body):
    """``main(*params)`` whose dataflow block is emitted by ``body(bb, *params)``."""
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def _bounds(mod, n):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsafeIndexWarning)
        return input_bounds(mod, n)


def test_take_through_index_preserving_ops():
    ids, w = _tensor("ids", (2, 3), "int64"), _tensor("w", (10, 4))

    def body(bb, ids, w):
        flat = bb.emit(relax.op.reshape(bb.emit(relax.op.astype(ids, "int32")), (6,)))
        return relax.op.take(w, flat, axis=0)

    assert _bounds(_build([ids, w], body), 1) == {"ids": {"min": 0, "max": 9, "table": "w"}}
    # w is a parameter, not an input: with num_inputs=0 nothing is bounded
    assert _bounds(_build([ids, w], body), 0) == {}

    big = _tensor("big", (200, 4))     # a cast to int8 on the way would wrap 128..199 negative

    def narrow(bb, ids, big):
        return relax.op.take(big, bb.emit(relax.op.astype(ids, "int8")), axis=0)

    assert _bounds(_build([ids, big], narrow), 1) == {"ids": {"min": 0, "max": 127,
                                                              "table": "big"}}


def test_other_axis_intersection_and_index_tensor():
    ids, w, v = _tensor("ids", (2, 3), "int64"), _tensor("w", (10, 4)), _tensor("v", (3, 7))
    j = _tensor("j", (2,), "int64")

    def body(bb, ids, j, w, v):
        a = bb.emit(relax.op.take(w, ids, axis=1))                      # extent 4
        b = bb.emit(relax.op.take(w, bb.emit(relax.op.permute_dims(ids)), axis=0))   # 10
        c = bb.emit(relax.op.index_tensor(v, [j]))                      # axis 0 of v: 3
        return relax.Tuple([a, b, c])

    got = _bounds(_build([ids, j, w, v], body), 2)
    assert got == {"ids": {"min": 0, "max": 3, "table": "w"},
                   "j": {"min": 0, "max": 2, "table": "v"}}


def test_kernel_declared_index_operands():
    """A ``call_tir`` of a kernel with ``KERNEL_INDEX_ATTR`` (the per-word gather, kernels/
    word_bits.py): its declared index argument is bounded by the table argument's axis."""
    from lowbit.backends.tvm.kernels.word_bits import tiered_embedding

    ids, pos = _tensor("ids", (2, 3), "int64"), _tensor("pos", (30,), "int32")
    tier = [_tensor("p0", (2, 30, 1), "uint8"), _tensor("a0", (30, 1, 2))]

    def body(bb, ids, pos, p0, a0):
        gv = bb.add_func(tiered_embedding(6, 8, [(2, 30, False)]), "gather")
        flat = bb.emit(relax.op.reshape(ids, (6,)))
        return relax.call_tir(gv, [flat, pos, p0, a0], relax.TensorType((6, 8), "float32"))

    assert _bounds(_build([ids, pos, *tier], body), 1) == {
        "ids": {"min": 0, "max": 29, "table": "pos"}}


def test_onnx_negative_wrapping():
    """``where(idx < 0, idx + n, idx)`` (TVM's ONNX Gather) allows [-n, n - 1]."""
    ids, w = _tensor("ids", (2, 3), "int64"), _tensor("w", (10, 4))

    def body(bb, ids, w):
        n = bb.emit(relax.op.take(bb.emit(relax.op.shape_to_tensor(bb.emit(
            relax.op.shape_of(w)))), relax.const(0, "int64"), axis=0, mode="wrap"))
        neg = bb.emit(relax.op.less(ids, relax.const(0, "int64")))
        idx = bb.emit(relax.op.where(neg, bb.emit(relax.op.add(ids, n)), ids))
        return relax.op.take(w, idx, axis=0)

    assert _bounds(_build([ids, w], body), 1) == {"ids": {"min": -10, "max": 9, "table": "w"}}


def test_not_bounded_and_warned():
    ids, w = _tensor("ids", (2, 3), "int64"), _tensor("w", (10, 4))

    def safe(bb, ids, w):
        clipped = bb.emit(relax.op.take(w, ids, axis=0, mode="clip"))   # cannot leave w
        rows = bb.emit(relax.op.shape_to_tensor(bb.emit(relax.op.shape_of(ids))))
        return relax.Tuple([clipped, relax.op.take(w, rows, axis=0)])    # depends on shape only

    assert _bounds(_build([ids, w], safe), 1) == {}

    def computed(bb, ids, w):
        return relax.op.take(w, bb.emit(relax.op.add(ids, relax.const(1, "int64"))), axis=0)

    with pytest.warns(UnsafeIndexWarning, match=r"relax.take of w: indices computed from "
                                                 r"input\(s\) \['ids'\]"):
        assert input_bounds(_build([ids, w], computed), 1) == {}


def test_check_bounds_messages():
    b = {"min": 0, "max": 9, "table": "w"}
    check_bounds(np.array([[0, 9]]), "ids", b)
    check_bounds(np.zeros((0,), np.int64), "ids", b)
    with pytest.raises(RuntimeInputError, match=r"input 'ids': value 10 at position \[1, 0\] is "
                                                r"outside the valid range \[0, 9\] \(2 of 4 "
                                                r"values are\); it indexes 'w'"):
        check_bounds(np.array([[0, 9], [10, 11]]), "ids", b)
    with pytest.raises(RuntimeInputError, match="value nan at position"):   # float ids, NaN
        check_bounds(np.array([1.0, np.nan]), "ids", b)
    with pytest.raises(RuntimeInputError, match=r"value 18446744073709551615 at position \[0\]"):
        check_bounds(np.array([2**64 - 1], np.uint64), "ids", b)


# ---- the tiny BERT, W8A8, CPU ------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert(tiny_bert):
    """Captured with token_type_ids as an input (the shared fixture leaves it to the buffer)."""
    model, inputs, calib = tiny_bert
    tt = {"token_type_ids": torch.zeros_like(inputs["input_ids"])}
    inputs = dict(inputs, **tt)
    calib = [dict(c, **tt) for c in calib]
    gm = lowbit.capture(model, inputs)
    q = quantize_outputs(lowbit.quantize(gm, recipes.W8A8, calibration=calib, progress=False),
                         OUT_SCALE, OUT_ZP)
    return q, inputs


@pytest.fixture(scope="module")
def w8a8(bert):
    return lowbit.compile(bert[0], progress=False)


def _with(inputs, name, value, at=(1, 5)):
    x = inputs[name].clone()
    x[at] = value
    return dict(inputs, **{name: x})


def test_bounds_recorded(w8a8):
    assert w8a8.meta["input_bounds"] == {
        "input_ids": {"min": 0, "max": VOCAB - 1, "table": WORD},
        "token_type_ids": {"min": 0, "max": TYPES - 1, "table": TYPE}}   # not attention_mask


@pytest.mark.parametrize("bad", [10**8, -1, VOCAB, 2**32 + 5])
def test_bad_ids_raise(bert, w8a8, bad):
    with pytest.raises(RuntimeInputError, match=rf"input 'input_ids': value {bad} at position "
                                                rf"\[1, 5\] is outside the valid range "
                                                rf"\[0, {VOCAB - 1}\].*{WORD}"):
        w8a8(**_with(bert[1], "input_ids", bad))


def test_bad_token_type_raises(bert, w8a8):
    with pytest.raises(RuntimeInputError, match=r"input 'token_type_ids': value 2 at position "
                                                r"\[0, 3\] is outside the valid range \[0, 1\]"):
        w8a8(**_with(bert[1], "token_type_ids", TYPES, at=(0, 3)))


def test_last_row_runs_and_agrees(bert, w8a8):
    q, inputs = bert
    edge = _with(_with(inputs, "input_ids", VOCAB - 1), "token_type_ids", TYPES - 1, at=(0, 2))
    got, want = w8a8(**edge), q(**edge)
    total = off = 0
    for w, g in zip(want.values(), got):
        steps = np.round(np.abs(g.numpy() - w.numpy()) / OUT_SCALE)
        assert steps.max() <= 1, f"{int(steps.max())} output steps apart"
        total, off = total + steps.size, off + int((steps == 1).sum())
    assert off / total <= MAX_OFF_BY_ONE
    other = w8a8(**_with(inputs, "input_ids", VOCAB - 2))   # row 99 is really read
    assert not torch.equal(other[0][1, 5], got[0][1, 5])


def test_input_errors_name_the_input(bert, w8a8):
    inputs = bert[1]
    with pytest.raises(RuntimeInputError, match=r"input 'input_ids': dtype float32, expected int64"):
        w8a8(**dict(inputs, input_ids=inputs["input_ids"].float()))
    with pytest.raises(RuntimeInputError, match=r"input 'token_type_ids': shape \[2, 8\]"):
        w8a8(**dict(inputs, token_type_ids=inputs["token_type_ids"][:, :8]))


def test_save_load_keeps_bounds(bert, w8a8, tmp_path):
    inputs = bert[1]
    folder = w8a8.save(tmp_path / "m")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["input_bounds"] == w8a8.meta["input_bounds"]
    loaded = load(folder)
    with pytest.raises(RuntimeInputError, match="input 'input_ids': value 100000000"):
        loaded(**_with(inputs, "input_ids", 10**8))
    assert loaded._vm is None                      # refused before the VM or device is touched
    np.testing.assert_array_equal(loaded(**inputs)[0].numpy(), w8a8(**inputs)[0].numpy())
    # a module saved before bounds existed still loads and runs (unchecked)
    del meta["input_bounds"]
    (folder / "meta.json").write_text(json.dumps(meta))
    old = load(folder)
    assert "input_bounds" not in old.meta
    np.testing.assert_array_equal(old(**inputs)[0].numpy(), w8a8(**inputs)[0].numpy())


# ---- QDQ ONNX ----------------------------------------------------------------------------------
def test_onnx_file(bert, tmp_path):
    q, inputs = bert
    path = lowbit.export_onnx(q, tmp_path / "w8a8.onnx")
    mod = lowbit.compile(path, progress=False)
    word = "embeddings.word_embeddings.weight"
    assert mod.meta["input_bounds"] == {
        "input_ids": {"min": -VOCAB, "max": VOCAB - 1, "table": word},
        "token_type_ids": {"min": -TYPES, "max": TYPES - 1,
                           "table": "embeddings.token_type_embeddings.weight"}}
    feed = {k: v.numpy() for k, v in inputs.items()}
    for bad in (VOCAB, -VOCAB - 1, 10**8):
        with pytest.raises(RuntimeInputError, match=rf"input 'input_ids': value {bad} .*{word}"):
            mod(**dict(feed, input_ids=_with(inputs, "input_ids", bad)["input_ids"].numpy()))
    wrapped = mod(**dict(feed, input_ids=_with(inputs, "input_ids", -1)["input_ids"].numpy()))
    last = mod(**dict(feed, input_ids=_with(inputs, "input_ids", VOCAB - 1)["input_ids"].numpy()))
    for a, b in zip(wrapped, last):
        np.testing.assert_array_equal(a, b)       # ONNX Gather: -1 is the last row


# ---- float inputs, CUDA ------------------------------------------------------------------------
class _Lookup(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)

    def forward(self, x, ids):
        return x + self.emb(ids)


def test_float_input_has_no_bounds_nan_runs():
    torch.manual_seed(0)
    x, ids = torch.randn(2, 3, 4), torch.tensor([[0, 9, 3], [1, 2, 8]])
    model = _Lookup().eval()
    mod = lowbit.compile(model, example_inputs=(x, ids), progress=False)
    assert mod.meta["input_bounds"] == {"ids": {"min": 0, "max": 9, "table": "p_emb_weight"}}
    x[0, 1, 2] = float("nan")
    got = mod(x, ids)
    assert torch.isnan(got[0, 1, 2]) and int(torch.isnan(got).sum()) == 1
    torch.testing.assert_close(got, model(x, ids), rtol=0, atol=1e-6, equal_nan=True)
    with pytest.raises(RuntimeInputError, match=r"input 'ids': value 10 at position \[1, 1\]"):
        mod(x, torch.tensor([[0, 9, 3], [1, 10, 8]]))


@needs_nvcc
def test_cuda_module_checks_before_device_work(bert):
    q, inputs = bert
    mod = lowbit.compile(q, target={"kind": "cuda", "arch": "sm_90"}, progress=False)
    assert mod.target_kind == "cuda"
    assert mod.meta["input_bounds"]["input_ids"] == {"min": 0, "max": VOCAB - 1, "table": WORD}
    with pytest.raises(RuntimeInputError, match="input 'input_ids': value 100000000"):
        mod(**_with(inputs, "input_ids", 10**8))     # no GPU here: reaching the device would fail
    assert mod._vm is None and mod.device is None
