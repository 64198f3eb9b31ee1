"""lowbit compile: a QDQ ONNX file into the folder it lies in, a .pt2 program to a chosen
folder; the module loads with lowbit.load and computes what onnxruntime computes."""

import json

import numpy as np

import lowbit
from lowbit.backends.onnxruntime import OrtRunner

# the TVM integer kernels and onnxruntime's round the same QDQ model's activations
# independently; a few output steps apart at most (tests/backends/tvm: one step per site)
QDQ_ATOL = 0.05


def test_qdq_file_compiles_beside_it(compiled, models, work):
    folder = work / "lowbit-out" / "bert-W8A8" / "tvm-cpu"
    assert "wrote lowbit-out/bert-W8A8/tvm-cpu/ (model.so, params.bin, meta.json;" in \
        compiled.stdout
    assert "input_ids int64[1, 16], attention_mask int64[1, 16] -> last_hidden_state, " \
           "pooler_output" in compiled.stdout
    source = json.loads((folder / "meta.json").read_text())["source"]
    assert source["kind"] == "onnx" and source["torch"] == str(models / "bert")
    mod = lowbit.load(folder)
    ids = np.arange(3, 19, dtype=np.int64)[None]
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    want = OrtRunner(folder.parent / "model.qdq.onnx").run(feed)[0]
    np.testing.assert_allclose(mod(**feed).last_hidden_state, want, atol=QDQ_ATOL)


def test_pt2_compiles_to_given_folder(lowbit, models, tmp_path):
    done = lowbit("compile", models / "bert.pt2", "-o", "bert_tvm",
                  "--target", '{"kind": "llvm", "mcpu": "x86-64-v3"}', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "bert.pt2 is not quantized: compiling fp32 kernels" in done.stderr
    assert "wrote bert_tvm/ (" in done.stdout and "int64[2, 16]" in done.stdout  # its shapes
    meta = json.loads((tmp_path / "bert_tvm" / "meta.json").read_text())
    assert '"mcpu":"x86-64-v3"' in meta["target"] and meta["source"]["recipe"] == "fp32"
