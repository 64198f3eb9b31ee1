"""The command line on the real MiniLM: quantize (Hugging Face folder and ONNX file in), demo,
bad input. (tests/cli/ runs every verb in subprocesses on tiny models.)"""

import pytest
import torch

from lowbit.backends.onnxruntime import OrtRunner
from lowbit.cli import main

pytestmark = pytest.mark.weights("minilm")


@pytest.fixture(scope="module")
def minilm_dir():
    from lowbit.models import minilm_dir

    return minilm_dir(quiet=True)


FAST = ["--num-calibration", "8", "--seq", "32", "--batch-size", "4"]


def test_quantize_hf_folder(minilm_dir, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["quantize", str(minilm_dir), "--recipe", "w8a8", "-o", str(out), *FAST]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ids = torch.randint(1000, 2000, (2, 16))
    (hidden, *_) = OrtRunner(out).run({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert hidden.shape == (2, 16, 384)


def test_quantize_onnx_file(minilm_dir, tmp_path, capsys):
    from lowbit.models import load_minilm

    model, tok = load_minilm(quiet=True)
    enc = tok(["a short sentence"], return_tensors="pt")
    fp = tmp_path / "fp.onnx"
    dims = {0: "batch", 1: "seq"}
    torch.onnx.export(model, (), fp, kwargs={k: enc[k] for k in ("input_ids", "attention_mask")},
                      dynamo=True, dynamic_shapes={"input_ids": dims, "attention_mask": dims})
    out = tmp_path / "q.onnx"
    args = ["quantize", str(fp), "-o", str(out), "--recipe", "W8A8", *FAST]
    assert main(args) == 2  # no tokenizer next to the file: calibration text cannot be fed
    assert "pass --tokenizer" in capsys.readouterr().err
    assert main([*args, "--tokenizer", str(minilm_dir)]) == 0
    ids = torch.randint(1000, 2000, (1, 12))
    (hidden, *_) = OrtRunner(out).run({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert hidden.shape == (1, 12, 384)


@pytest.mark.parametrize("argv, message", [
    (["quantize", "{dir}", "-o", "{tmp}/x.onnx", "--recipe", "w9a9"], "unknown recipe 'w9a9'"),
    (["quantize", "/nonexistent/model", "-o", "{tmp}/x.onnx"], "no such file or folder"),
    (["quantize", "{dir}", "-o", "{tmp}/x.txt"], "give an .onnx file or a folder"),
    (["quantize", "{dir}", "-o", "{tmp}/x.onnx", "--num-calibration", "0"],
     "--num-calibration must be >= 1"),
    (["demo", "--tune-trials", "-1"], "--tune-trials must be >= 0"),
    (["demo", "--threads", "0"], "--threads must be >= 1"),
])
def test_bad_input_exit_2(minilm_dir, tmp_path, capsys, argv, message):
    argv = [a.format(dir=minilm_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_demo_runs(capsys, tmp_path):
    """The whole demo at a small shape; TVM with default schedules only (tuning is covered by
    tests/backends/tvm/test_tune.py), a few timed runs."""
    assert main(["demo", "--seq", "32", "--batch", "2", "--num-calibration", "8",
                 "--tune-trials", "0", "--tuning-db", str(tmp_path / "db"), "--iters", "3",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'out' / 'model.qdq.onnx'} (" in out       # the files stay
    assert f"wrote {tmp_path / 'out' / 'tvm-cpu'}/: " in out
    assert (tmp_path / "out" / "tvm-cpu" / "meta.json").is_file()
    assert "block 5 (post-ln" in out and "captured graph vs eager" in out
    assert "per-site FX vs onnxruntime" in out
    assert "36 int8 GEMM kernels (6 with a requantizing epilogue)" in out
    from lowbit.backends.tvm.kernels.isa import isa_of
    from lowbit.backends.tvm.target import host_target

    family = isa_of(host_target()).family        # every host of this suite has AVX2 at least
    assert f"int8 kernel family: {family}" in out
    assert "cosine vs FX graph" in out and f"lowbit TVM W8A8 (integer kernels, {family})" in out
