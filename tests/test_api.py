"""One entry point: ``lowbit.quantize`` on an nn.Module, a GraphModule, an ONNX path, an
onnx_ir Model and an onnx ModelProto; its pipeline report; the deprecated names; and
``python -m lowbit``."""

import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from torch import fx

import lowbit
from lowbit.backends.onnxruntime import OrtRunner
from lowbit.errors import CalibrationError, ConfigError
from lowbit.recipes import W8A8, W8A8_DYNAMIC

FX_STAGES = ["InsertFakeQuant", "Calibrate", "Freeze", "ConvertToQDQ"]
ONNX_STAGES = ["UpgradeOpset", "Calibrate", "InsertQDQ"]


@pytest.fixture(scope="module")
def gm(tiny_bert_batch):
    model, batch = tiny_bert_batch
    return lowbit.capture(model, batch)


@pytest.fixture(scope="module")
def onnx_path(gm, tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "tiny.f32.onnx"
    lowbit.export_onnx(gm, path)
    return path


def _feeds(batch, n=2):
    return [{k: v.numpy() for k, v in batch.items()}] * n


def _hidden(q, batch):
    return q(**batch).last_hidden_state


# ---- FX: nn.Module and GraphModule ------------------------------------------------------------
def test_graph_module_in_graph_module_out(tiny_bert_batch, gm):
    _, batch = tiny_bert_batch
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    q = lowbit.quantize(gm, W8A8, calibration=[batch] * 2, progress=False)
    assert isinstance(q, fx.GraphModule) and q is not gm
    assert all(torch.equal(v, gm.state_dict()[k]) for k, v in before.items())  # gm untouched
    ops = lowbit.testing.op_counts(q)
    assert ops["quantized_decomposed.dequantize_per_channel.default"] >= 6   # q k v o in out
    assert lowbit.testing.sqnr(_hidden(gm, batch), _hidden(q, batch)) > 20.0


def test_nn_module_is_captured_first(tiny_bert_batch, gm):
    """A module with example_inputs gives what capture + quantize gives, to the bit; the
    result is a GraphModule (an nn.Module, called like the model)."""
    model, batch = tiny_bert_batch
    q = lowbit.quantize(model, W8A8, calibration=[batch] * 2, example_inputs=batch,
                        progress=False)
    ref = lowbit.quantize(gm, W8A8, calibration=[batch] * 2, progress=False)
    assert isinstance(q, fx.GraphModule) and isinstance(q, torch.nn.Module)
    assert torch.equal(_hidden(q, batch), _hidden(ref, batch))
    with pytest.raises(ConfigError, match="example_inputs"):
        lowbit.quantize(model, W8A8, calibration=[batch])


def test_recipe_by_name_and_errors_keep_their_type(tiny_bert_batch, gm):
    _, batch = tiny_bert_batch
    a = lowbit.quantize(gm, "w8a8_dynamic")
    b = lowbit.quantize(gm, W8A8_DYNAMIC)
    assert torch.equal(_hidden(a, batch), _hidden(b, batch))
    # raised inside the pipeline's passes, still the user-facing types (not PassFailure)
    with pytest.raises(CalibrationError, match="pass calibration="):
        lowbit.quantize(gm, W8A8, progress=False)
    with pytest.raises(CalibrationError, match="calibration data is empty"):
        lowbit.quantize(gm, W8A8, calibration=[], progress=False)


@pytest.mark.parametrize("thing, name", [(42, "builtins.int"), ([1, 2], "builtins.list"),
                                         (np.zeros(3), "numpy.ndarray")])
def test_other_types_refused_by_name(thing, name):
    with pytest.raises(ConfigError, match=rf"quantize\(\) takes .*got {name}"):
        lowbit.quantize(thing, W8A8)


def test_fx_pipeline_report(tiny_bert_batch, gm):
    _, batch = tiny_bert_batch
    q = lowbit.quantize(gm, W8A8, calibration=[batch], progress=False)
    report = q.meta["lowbit_pipeline"]
    assert isinstance(report, lowbit.PipelineReport)
    assert [n for n, _, _ in report.steps] == FX_STAGES
    assert all(m for _, m, _ in report.steps) and report.iterations == 1
    text = str(report)
    assert "quantize (FX, W8A8)" in text and all(s in text for s in FX_STAGES)
    dyn = lowbit.quantize(gm, W8A8_DYNAMIC).meta["lowbit_pipeline"]
    assert [(n, m) for n, m, _ in dyn.steps][1] == ("Calibrate", False)   # nothing to observe


# ---- ONNX: a path, an onnx_ir Model, an onnx ModelProto ---------------------------------------
def test_onnx_path_in_onnx_model_out(tiny_bert_batch, gm, onnx_path, tmp_path):
    _, batch = tiny_bert_batch
    out = tmp_path / "q.onnx"
    qm = lowbit.quantize(onnx_path, W8A8, calibration=_feeds(batch), out=out, progress=False)
    assert isinstance(qm, ir.Model) and out.is_file()
    assert qm.metadata_props["lowbit.recipe"] == "W8A8"
    assert lowbit.testing.op_counts(qm)["DequantizeLinear"] > 6
    report = qm.meta["lowbit_pipeline"]
    assert [n for n, _, _ in report.steps] == ONNX_STAGES
    assert {n: m for n, m, _ in report.steps} == {
        "UpgradeOpset": False, "Calibrate": False, "InsertQDQ": True}  # no PEG: nothing folded
    got = OrtRunner(out, optimization="disable").run(batch)[0]
    assert lowbit.testing.sqnr(_hidden(gm, batch).detach().numpy(), got) > 20.0
    with pytest.raises(ConfigError, match="example_inputs"):
        lowbit.quantize(onnx_path, W8A8, calibration=_feeds(batch), example_inputs=batch)


def test_onnx_ir_model_copied_and_same_as_path(tiny_bert_batch, onnx_path):
    _, batch = tiny_bert_batch
    model = lowbit.load_onnx(onnx_path)
    before = ir.to_proto(model).SerializeToString()
    qm = lowbit.quantize(model, W8A8, calibration=_feeds(batch), progress=False)
    assert isinstance(qm, ir.Model) and qm is not model
    assert ir.to_proto(model).SerializeToString() == before
    from_path = lowbit.quantize(onnx_path, W8A8, calibration=_feeds(batch), progress=False)
    run = [OrtRunner(ir.to_proto(m), optimization="disable").run(batch)[0]
           for m in (qm, from_path)]
    assert np.array_equal(*run)


def test_onnx_model_proto_in_proto_out(tiny_bert_batch, onnx_path):
    _, batch = tiny_bert_batch
    proto = onnx.load(onnx_path)
    before = proto.SerializeToString()
    q = lowbit.quantize(proto, W8A8_DYNAMIC)
    assert isinstance(q, onnx.ModelProto)
    assert proto.SerializeToString() == before
    ref = lowbit.quantize(onnx_path, W8A8_DYNAMIC)
    assert np.array_equal(OrtRunner(q, optimization="disable").run(batch)[0],
                          OrtRunner(ir.to_proto(ref), optimization="disable").run(batch)[0])


def test_onnx_calibration_error_keeps_its_type(onnx_path):
    with pytest.raises(CalibrationError, match="pass calibration="):
        lowbit.quantize(onnx_path, W8A8)


# ---- deprecated names ------------------------------------------------------------------------
def test_quantize_onnx_deprecated_but_same(tiny_bert_batch, onnx_path):
    new = lowbit.quantize(onnx_path, W8A8_DYNAMIC)
    with pytest.warns(DeprecationWarning, match="use lowbit.quantize"):
        old = lowbit.quantize_onnx(onnx_path, W8A8_DYNAMIC)
    assert ir.to_proto(old).SerializeToString() == ir.to_proto(new).SerializeToString()


@pytest.mark.parametrize("module", ["lowbit.passes.onnx", "lowbit.passes.onnx.api"])
@pytest.mark.parametrize("name", ["quantize_onnx", "quantize_onnx_file"])
def test_old_import_paths_warn(module, name):
    import importlib

    from lowbit import onnx_quantize

    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} is deprecated.*lowbit.quantize"):
        fn = getattr(mod, name)
    assert fn is getattr(onnx_quantize, name)


def test_new_paths_do_not_warn(onnx_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from lowbit.onnx_quantize import quantize_onnx  # noqa: F401
        from lowbit.passes.onnx import InsertQDQ, find_transformer  # noqa: F401
        lowbit.quantize(onnx_path, W8A8_DYNAMIC)


# ---- command line ----------------------------------------------------------------------------
def test_python_m_lowbit_help():
    run = subprocess.run([sys.executable, "-m", "lowbit", "--help"], capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    from lowbit.cli import build_parser

    assert run.stdout == build_parser().format_help()
    assert "quantize" in run.stdout and "--verbose" in run.stdout


def test_cli_verbose_shows_the_pipeline_report(onnx_path, tmp_path, caplog):
    from lowbit.cli import main

    caplog.set_level("DEBUG", logger="lowbit")
    argv = ["quantize", str(onnx_path), "-o", str(tmp_path / "q.onnx"), "--recipe",
            "W8A8_DYNAMIC"]
    assert main(argv) == 0
    assert "pipeline quantize" not in caplog.text       # INFO by default: no report
    caplog.clear()
    assert main(["-v", *argv]) == 0
    assert "pipeline quantize (ONNX, W8A8_DYNAMIC)" in caplog.text
    assert all(s in caplog.text for s in ONNX_STAGES)
    caplog.clear()
    assert main([*argv[:2], "-v", *argv[2:]]) == 0       # -v after the subcommand too
    assert "pipeline quantize (ONNX, W8A8_DYNAMIC)" in caplog.text
