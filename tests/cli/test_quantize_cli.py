"""lowbit quantize: a Hugging Face folder into the default visible folder, and a fixed-shape
float ONNX file whose batch and sequence length come from the file."""

import json

import onnx

from lowbit.backends.onnxruntime import OrtRunner


def test_hf_folder_to_default_folder(quantized, models, work):
    path = work / "lowbit-out" / "bert-W8A8" / "model.qdq.onnx"
    assert "wrote lowbit-out/bert-W8A8/model.qdq.onnx (" in quantized.stdout
    proto = onnx.load(path)
    assert [o.name for o in proto.graph.output] == ["last_hidden_state", "pooler_output"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["lowbit.recipe"] == "W8A8" and meta["lowbit.source"] == str(models / "bert")
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) > 0
    ids = [[5, 6, 7, 8]]
    hidden, pooled = OrtRunner(path).run({"input_ids": ids, "attention_mask": [[1] * 4]})
    assert hidden.shape == (1, 4, 32) and pooled.shape == (1, 32)


def test_fixed_shape_onnx_takes_its_shapes(lowbit, models, work):
    """fixed.onnx takes [2, 16] only: the default batch (8) and sequence (128) would not
    fit; they are read from the file, and 5 calibration texts make 2 whole batches."""
    done = lowbit("quantize", models / "fixed.onnx", "--tokenizer", models / "bert",
                  "--num-calibration", 5, "-o", "fixed_q", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "wrote fixed_q/model.qdq.onnx" in done.stdout
    assert "calibrated on 2 batch(es)" in done.stderr
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in onnx.load(work / "fixed_q" / "model.qdq.onnx").graph.input]
    assert dims == [[2, 16], [2, 16]]
    assert json.dumps("W8A8") in json.dumps({p.key: p.value for p in onnx.load(
        work / "fixed_q" / "model.qdq.onnx").metadata_props})


def test_verbose_shows_the_pipeline_report_and_nothing_else(lowbit, models, work, quantized):
    """-v logs lowbit's own DEBUG records (each pass pipeline's report); every other library
    stays at WARNING, and the exporter's torchvision lines are filtered at export, so stderr
    holds lowbit's lines only, with or without -v; without -v there is no report."""
    done = lowbit("-v", "quantize", models / "bert", "--num-calibration", 8, "--seq", 16,
                  "-o", "verbose_q", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "pipeline quantize (FX, W8A8)" in done.stderr and "InsertFakeQuant" in done.stderr
    for run in (done, quantized):
        others = [line for line in run.stderr.splitlines()
                  if line and not line.startswith(("[lowbit", "  "))]
        assert others == [], run.stderr
    assert "pipeline quantize" not in quantized.stderr
