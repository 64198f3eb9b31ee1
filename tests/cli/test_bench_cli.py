"""lowbit bench: a compiled module against the models it came from, and a Hugging Face
decoder as it comes (GPT-2, use_cache on) built and timed in one go; JSON out."""

import json


def _report(path):
    report = json.loads(path.read_text())
    assert all(e["median_ms"] > 0 and e["min_ms"] <= e["median_ms"] for e in report["engines"])
    return report, [e["engine"] for e in report["engines"]]


def test_module_against_its_sources(lowbit, work, compiled):
    done = lowbit("bench", "lowbit-out/bert-W8A8/tvm-cpu", "--iters", 3, "--warmup", 1,
                  "--threads", 1, cwd=work)
    assert done.returncode == 0, done.stderr
    assert "wrote lowbit-out/bert-W8A8/bench.json" in done.stdout
    report, engines = _report(work / "lowbit-out" / "bert-W8A8" / "bench.json")
    assert engines == ["torch (eager)", "onnxruntime", "lowbit TVM"]
    assert (report["batch"], report["seq"], report["threads"], report["iters"]) == (1, 16, 1, 3)
    tvm = report["engines"][2]
    # batch * seq tokens per median latency (median_ms is rounded to 0.1 us in the report)
    assert abs(tvm["tokens_per_s"] * tvm["median_ms"] / 16e3 - 1) < 1e-3
    assert abs(tvm["sequences_per_s"] - tvm["tokens_per_s"] / 16) < 0.02
    assert "speedup_vs_torch" in tvm and report["statistic"] == "median"
    assert "seq/s" in done.stdout and "tokens/s" in done.stdout


def test_hf_decoder_built_and_timed(lowbit, models, tmp_path):
    done = lowbit("bench", models / "gpt2", "--batch", 2, "--seq", 8, "--num-calibration", 8,
                  "--iters", 3, "--warmup", 1, "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for line in ("wrote out/tvm-cpu/ (", "wrote out/model.qdq.onnx", "wrote out/bench.json"):
        assert line in done.stdout
    report, engines = _report(tmp_path / "out" / "bench.json")
    assert engines == ["torch (eager)", "onnxruntime", "lowbit TVM"]
    assert report["inputs"] == {"input_ids": [2, 8], "attention_mask": [2, 8]}
