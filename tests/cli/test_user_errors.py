"""Every user error a verb can meet ends with exit status 2 and one line naming the flag,
input or weight at fault and what to do, never a traceback; every verb's --help shows
examples. The commands run in subprocesses, four at a time (most of each is interpreter
start-up)."""

from concurrent.futures import ThreadPoolExecutor

import pytest

VERBS = ("demo", "quantize", "compile", "bench", "eval", "verify", "report")
QDQ = "lowbit-out/bert-W8A8/model.qdq.onnx"
MODULE = "lowbit-out/bert-W8A8/tvm-cpu"

# case -> (argv, what the error line says); {m} is the models folder
CASES = {
    "unknown verb": (["transmogrify", "x"], "invalid choice: 'transmogrify'"),
    "missing argument": (["compile"], "the following arguments are required: MODEL"),
    "not a model": (["compile", "{m}/notes.txt"], "{m}/notes.txt: unknown model format"),
    "missing model": (["bench", "{m}/absent"], "DIR|MODEL {m}/absent: no such file or folder"),
    "unknown target": (["compile", QDQ, "--target", "tpu"], "--target tpu: unknown target 'tpu'"),
    "target not JSON": (["compile", QDQ, "--target", "{kind: llvm}"], "not valid JSON"),
    "negative trials": (["compile", QDQ, "--tune-trials", "-1"], "--tune-trials must be >= 0"),
    "recipe for a QDQ file": (["compile", QDQ, "--recipe", "W8A8"],
                              ("--recipe W8A8: lowbit-out/bert-W8A8/model.qdq.onnx is compiled "
                              "as it is")),
    "shape of a compiled module": (["bench", MODULE, "--batch", "4"],
                                   ("--batch 4: the module in lowbit-out/bert-W8A8/tvm-cpu was "
                                   "compiled for inputs of shape [1, 16]")),
    "fixed batch of the file": (["quantize", "{m}/fixed.onnx", "--tokenizer", "{m}/bert",
                                 "--batch-size", "8"],
                                ("--batch-size 8: {m}/fixed.onnx has a fixed batch of 2 (input "
                                "input_ids [2, 16]); drop --batch-size or give --batch-size 2")),
    "sequence 0": (["quantize", "{m}/bert", "--seq", "0"], "--seq must be >= 1, got 0"),
    "batch size 0": (["quantize", "{m}/bert", "--batch-size", "0"],
                     "--batch-size must be >= 1, got 0"),
    "sequence beyond positions": (["compile", "{m}/gpt2", "--seq", "64"],
                                  "--seq 64: {m}/gpt2 takes at most 32 positions"),
    "already quantized": (["quantize", QDQ],
                          f"{QDQ} is already quantized ("),
    "NaN weight": (["quantize", "{m}/nan_bert", "--seq", "16", "--num-calibration", "8"],
                   ("weight encoder.layer.1.output.dense.weight holds 1 NaN/inf value(s) "
                   "(first nan at [3, 5])")),
    "bad output name": (["quantize", "{m}/bert", "-o", "x.txt"],
                        "--output x.txt: give an .onnx file or a folder"),
    "verify a missing file": (["verify", "{m}/bert", "{m}/absent.onnx"],
                              "{m}/absent.onnx: no such file"),
}


@pytest.fixture(scope="module")
def results(lowbit, models, work, compiled):
    (models / "notes.txt").write_text("not a model\n")
    runs = {case: [a.replace("{m}", str(models)) for a in argv]
            for case, (argv, _) in CASES.items()}
    runs.update({f"{verb} --help": [verb, "--help"] for verb in VERBS})
    with ThreadPoolExecutor(4) as pool:
        done = dict(zip(runs, pool.map(lambda argv: lowbit(*argv, cwd=work), runs.values())))
    return done


@pytest.mark.parametrize("case", CASES)
def test_user_error_is_one_line_and_exit_2(results, models, case):
    done = results[case]
    expected = CASES[case][1].replace("{m}", str(models))
    errors = [ln for ln in done.stderr.splitlines() if ": error: " in ln]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and expected in errors[0], done.stderr
    assert errors[0].startswith("lowbit")


@pytest.mark.parametrize("verb", VERBS)
def test_help_has_an_example(results, verb):
    done = results[f"{verb} --help"]
    assert done.returncode == 0, done.stderr
    assert "examples:" in done.stdout and f"  lowbit {verb} " in done.stdout
