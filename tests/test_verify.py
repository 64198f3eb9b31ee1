"""lowbit verify: HF directory vs ONNX / .pt2, a perturbed copy, and bad input (exit 0 / 1 / 2)."""

import argparse

import pytest
import torch
from transformers import BertConfig, BertModel

from lowbit.verify import add_arguments, main, run

# Two runtimes: onnxruntime and torch sum in different orders (see lowbit.verify.DEFAULT_RTOL).
TOLS = ["--rtol", "1e-4", "--atol", "1e-5"]


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, vocab_size=100)
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The same tiny BERT as a HF directory, ONNX (dynamic batch/seq), .pt2, and a perturbed
    HF directory."""
    root = tmp_path_factory.mktemp("verify")
    model = tiny_bert()
    model.save_pretrained(root / "hf")
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    torch.onnx.export(model, (ids, mask), root / "model.onnx", dynamo=True,
                      dynamic_shapes=(dims, dims), verbose=False)
    torch.export.save(torch.export.export(model, (ids, mask)), root / "model.pt2")
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight[0, 0] += 1e-3
    model.save_pretrained(root / "hf_perturbed")
    return root


def test_hf_dir_vs_onnx(saved, capsys):
    assert main([str(saved / "hf"), str(saved / "model.onnx"), *TOLS, "--batch", "2",
                 "--seq", "5"]) == 0
    out = capsys.readouterr().out
    assert "matched by position" in out  # the ONNX exporter renamed the outputs
    # models named by their paths, outputs by the model's own names (the ONNX name beside)
    assert f"reference: {saved / 'hf'} (" in out and f"checked:   {saved / 'model.onnx'} (" in out
    assert f"  last_hidden_state ({saved / 'model.onnx'}: " in out
    assert "pooler_output (" in out and "A." not in out and "before" not in out
    assert "input_ids int64 [2, 5]" in out and out.rstrip().splitlines()[-1].startswith("PASS")


def test_hf_dir_vs_pt2(saved, capsys):
    assert main([str(saved / "hf"), str(saved / "model.pt2"), *TOLS]) == 0
    out = capsys.readouterr().out
    assert "  last_hidden_state: shape [2, 8, 32]  cosine 1.000000  SQNR " in out
    assert "matched by name" in out
    assert "tolerance: |checked - reference| <= atol + rtol * |reference|  (rtol=0.0001, " \
           "atol=1e-05)" in out
    assert "input_ids int64 [2, 8]" in out  # the .pt2 was exported with fixed shapes


def test_perturbed_weights_fail(saved, capsys):
    assert main([str(saved / "model.onnx"), str(saved / "hf_perturbed"), *TOLS]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "worst elements" in out and "outside tolerance" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("  last_hidden_state"))
    assert row.startswith(f"  last_hidden_state ({saved / 'model.onnx'}: ")  # the HF name
    assert "cosine " in row and " dB  max |diff| " in row
    worst = out.split("worst elements:")[1].splitlines()[1]   # named by the models' paths
    assert f" in {saved / 'model.onnx'}, " in worst and f" in {saved / 'hf_perturbed'}  (" in worst


def test_two_directories_get_default_inputs(saved, capsys):
    assert main([str(saved / "hf"), str(saved / "hf_perturbed"), *TOLS]) == 1
    out = capsys.readouterr().out
    assert "inputs: input_ids int64 [1, 8], attention_mask int64 [1, 8]" in out


@pytest.mark.parametrize("name, content, problem", [
    ("absent.onnx", None, "no such file or directory"),
    ("junk.onnx", b"junk", "not a readable ONNX model"),
    ("notes.txt", b"hi", "unknown model format"),
    (".", None, "without config.json"),  # tmp_path itself: a directory, but no config.json
])
def test_bad_input_exits_2(saved, tmp_path, capsys, name, content, problem):
    bad = tmp_path / name
    if content is not None:
        bad.write_bytes(content)
    assert main([str(saved / "hf"), str(bad), *TOLS]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: " in err and problem in err


def test_negative_tolerance_exits_2(saved, capsys):
    assert main([str(saved / "hf"), str(saved / "model.pt2"), "--atol", "-1"]) == 2
    assert "--atol" in capsys.readouterr().err


def test_registers_as_subcommand(saved, capsys):
    parser = argparse.ArgumentParser(prog="lowbit")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify")
    add_arguments(verify)
    verify.set_defaults(func=run)
    args = parser.parse_args(["verify", str(saved / "model.pt2"), str(saved / "model.onnx"), *TOLS])
    assert args.func(args) == 0
    assert "PASS" in capsys.readouterr().out
