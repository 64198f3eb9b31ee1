"""lowbit eval: a float model and its quantized twin scored side by side, as a person runs it
(subprocesses, tiny models): the probe path on a user TSV, a classification head on SST-2,
perplexity of a causal LM, a QDQ file in onnxruntime and a compiled module in TVM; the table
printed, the JSON written; user errors as one line and exit 2 (in this process: they are
refused before any model is loaded)."""

import json
import math

import pytest

QDQ = "lowbit-out/bert-W8A8/model.qdq.onnx"
MODULE = "lowbit-out/bert-W8A8/tvm-cpu"
# the words of the tiny models' vocabulary (tests/cli/conftest.py) are Python-docs words
TRAIN = ["the value of the object", "return a new list", "this is not a function",
         "an error is raised", "the class and its method", "if the string is empty"] * 4
TEST = ["the object is a list", "an empty string", "a new class", "the method is raised",
        "return the value"]


def _tsv(path, texts, header="text\tlabel"):
    path.write_text(header + "\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    """A user's train and test TSVs, a broken one, and a classifier saved from the tiny BERT
    (its head initialised from the seed)."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    cls = transformers.BertForSequenceClassification.from_pretrained(models / "bert").eval()
    cls.save_pretrained(root / "bertcls")
    transformers.AutoTokenizer.from_pretrained(models / "bert").save_pretrained(root / "bertcls")
    (root / "bad.tsv").write_text("text\tlabel\na fine line\t1\na line without a label\n")
    return {"root": root, "train": _tsv(root / "train.tsv", TRAIN),
            "test": _tsv(root / "test.tsv", TEST), "cls": root / "bertcls"}


def _report(path):
    report = json.loads(path.read_text())
    row = report["metrics"][0]
    assert row["diff"] == pytest.approx(row["quantized"] - row["fp"])
    return report


def _table_row(stdout, metric):
    """The numbers of a row of the printed table."""
    line = next(ln for ln in stdout.splitlines() if ln.strip().startswith(metric))
    return [float(v) for v in line[len(metric) + 2:].split()]


def test_probe_on_a_user_tsv(lowbit, models, files, tmp_path):
    done = lowbit("eval", models / "bert", "--tsv", files["test"], "--train-tsv", files["train"],
                  "--seq", 16, "--num-calibration", 8, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test.tsv: bert FP32 (torch eager) vs W8A8 (lowbit FX, quantized here" in done.stdout
    assert ("BertModel has no classification head: a logistic-regression probe was fitted on "
            "its FP32 sentence embeddings of 24 labelled sentences (train.tsv") in done.stdout
    assert "applied unchanged to both sides" in done.stdout
    assert "wrote lowbit-out/bert-W8A8/eval.json" in done.stdout
    report = _report(tmp_path / "lowbit-out" / "bert-W8A8" / "eval.json")
    assert report["task"] == "tsv" and report["quantized"]["recipe"] == "W8A8"
    assert report["result"]["method"]["train_sentences"] == 24
    row = report["metrics"][0]
    assert (row["metric"], row["n"]) == ("accuracy %", 5)
    assert _table_row(done.stdout, "accuracy %") == pytest.approx(
        [row["fp"], row["quantized"], row["diff"], 5], abs=0.006)
    assert "McNemar p" in done.stdout and "embedding cosine FP32 vs W8A8" in done.stdout


def test_head_on_sst2(lowbit, files, tmp_path):
    """SST-2 dev through a classification head; the FP32 accuracy is recomputed here."""
    import torch
    import transformers

    done = lowbit("eval", files["cls"], "--n", 24, "--seq", 16, "--num-calibration", 8,
                  "--batch-size", 5, "-o", "out.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "predictions: argmax of the BertForSequenceClassification head's 2 logits" \
        in done.stdout
    report = _report(tmp_path / "out.json")
    assert report["task"] == "sst2" and report["metrics"][0]["n"] == 24
    from lowbit.data import read_sst2

    texts, labels = (v[:24] for v in read_sst2("dev"))     # LOWBIT_DATA: conftest data_dir
    model = transformers.BertForSequenceClassification.from_pretrained(files["cls"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(files["cls"])
    with torch.no_grad():
        enc = tok(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
        pred = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]) \
            .logits.argmax(-1)
    acc = 100 * float((pred == torch.tensor(labels)).double().mean())
    assert report["metrics"][0]["fp"] == pytest.approx(acc)


def test_perplexity_of_a_causal_lm(lowbit, models, tmp_path):
    done = lowbit("eval", models / "gpt2", "--n", 5, "--seq", 16, "--num-calibration", 8,
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "WikiText-2 test: gpt2 FP32 (torch eager) vs W8A8" in done.stdout
    assert "5 window(s) of 16 tokens every 8, 47 tokens scored once each" in done.stdout
    report = _report(tmp_path / "lowbit-out" / "gpt2-W8A8" / "eval.json")
    ppl, nll = report["metrics"]
    assert (ppl["metric"], ppl["n"]) == ("perplexity", 15 + 4 * 8)
    for side in ("fp", "quantized"):
        assert ppl[side] == pytest.approx(math.exp(nll[side]), rel=1e-9)
    assert _table_row(done.stdout, "perplexity")[:2] == pytest.approx(
        [ppl["fp"], ppl["quantized"]], abs=0.006)


def test_quantized_files(lowbit, models, files, work, compiled):
    """The QDQ file in onnxruntime and the compiled module (batch 1, seq 16) in TVM; the
    reports land beside them."""
    args = ("--tsv", files["test"], "--train-tsv", files["train"])
    onnx = lowbit("eval", models / "bert", "--quantized", QDQ, "--seq", 16, *args, cwd=work)
    assert onnx.returncode == 0, onnx.stderr
    assert f"vs W8A8 (onnxruntime, from {QDQ})" in onnx.stdout
    first = _report(work / "lowbit-out" / "bert-W8A8" / "eval.json")
    tvm = lowbit("eval", models / "bert", "--quantized", MODULE, *args, cwd=work)
    assert tvm.returncode == 0, tvm.stderr
    assert f"vs W8A8 (lowbit TVM, from {MODULE})" in tvm.stdout
    assert "wrote lowbit-out/bert-W8A8/eval.json" in tvm.stdout
    second = _report(work / "lowbit-out" / "bert-W8A8" / "eval.json")
    assert second["quantized"]["fixed_shape"] == [1, 16] and second["seq"] == 16
    # the same float side and probe data: the same FP32 accuracy
    assert first["metrics"][0]["fp"] == second["metrics"][0]["fp"]


# case -> (argv, what the one error line says); {m}: the models folder, {f}: the eval files.
# These fail before any model is loaded, so they run in this process (lowbit.cli.main).
ERRORS = {
    "missing tsv": (["{m}/bert", "--tsv", "{f}/absent.tsv"], "--tsv {f}/absent.tsv: no such file"),
    "malformed tsv": (["{m}/bert", "--tsv", "{f}/bad.tsv"],
                      "--tsv {f}/bad.tsv line 3: 1 tab-separated field(s), the header has 2"),
    "n 0": (["{m}/bert", "--n", "0"], "--n must be >= 1, got 0"),
    "missing model": (["{m}/absent"], "MODEL {m}/absent: no such file or folder"),
    "not a folder": (["{m}/fixed.onnx"], "lowbit eval takes the float model as a Hugging Face"),
    "perplexity of an encoder": (["{m}/bert", "--task", "wikitext2"],
                                 "--task wikitext2: MODEL {m}/bert is a BertModel, not a causal"),
    "accuracy of a causal LM": (["{m}/gpt2", "--task", "sst2"],
                                "is a GPT2LMHeadModel, a causal LM: score it with --task"),
    "recipe and a file": (["{m}/bert", "--quantized", "{m}/fixed.onnx", "--recipe", "W8A8"],
                          "--recipe W8A8 quantizes MODEL here; --quantized"),
    "calibration for a file": (["{m}/bert", "--quantized", "{m}/fixed.onnx",
                                "--num-calibration", "8"],
                               "--num-calibration 8 calibrates MODEL quantized here; --quantized"),
    "a .pt2 as the quantized side": (["{m}/bert", "--quantized", "{m}/bert.pt2"],
                                     "--quantized {m}/bert.pt2: give a QDQ .onnx file or a"),
    "stride of a sentence task": (["{m}/bert", "--stride", "4"],
                                  "--stride applies to --task wikitext2, not to sst2"),
    "missing train tsv": (["{m}/bert", "--train-tsv", "{f}/absent.tsv"],
                          "--train-tsv {f}/absent.tsv: no such file"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_user_errors(case, models, files, capsys, monkeypatch, tmp_path):
    from lowbit.cli import main

    monkeypatch.chdir(tmp_path)
    argv, want = ([a.replace("{m}", str(models)).replace("{f}", str(files["root"])) for a in x]
                  for x in (ERRORS[case][0], [ERRORS[case][1]]))
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lowbit eval: error: "), err
    assert want[0] in err
    assert not (tmp_path / "lowbit-out").exists()


def test_help_has_examples(capsys):
    from lowbit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    assert "examples:\n  lowbit eval ./minilm" in capsys.readouterr().out
