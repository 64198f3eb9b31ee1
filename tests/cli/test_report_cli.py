"""lowbit report: the page of the tiny BERT (a Hugging Face folder, and its QDQ file), its
numbers checked against the model and the quantizer, its one-line user errors, and the page
in a real browser (Debian's headless chromium): every image loads, a screenshot is taken.

Run as a script, this file screenshots a report page for the docs:
``python tests/cli/test_report_cli.py PAGE.html OUT.png``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PAGE_WIDTH = 1200
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
REPORT = Path("lowbit-out/bert-W8A8/report")


@pytest.fixture(scope="module")
def hf_report(lowbit, models, tmp_path_factory):
    """``lowbit report bert`` with the defaults (W8A8, compiled for this CPU), short
    calibration; runs in a folder of its own so its default output folder is checked."""
    cwd = tmp_path_factory.mktemp("report")
    done = lowbit("report", models / "bert", "--num-calibration", "16", "--seq", "16", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done, cwd / REPORT


def test_hf_report_files_and_page(hf_report):
    done, folder = hf_report
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert {"outliers.png", "bits.png", "lowering.png", "sizes.png",
            "ranges_encoder_layer_0.png", "ranges_encoder_layer_1.png"} <= set(pngs)
    for name in (*pngs, "report.json", "index.html"):   # every path printed, the page last
        assert f"wrote {REPORT / name}\n" in done.stdout
    assert done.stdout.splitlines()[-2] == f"wrote {REPORT / 'index.html'}"
    assert "report of " in done.stdout and "13 linear(s)" in done.stdout
    page = (folder / "index.html").read_text()
    for section in ("summary", "ranges", "bits", "lowering", "sizes", "notes"):
        assert f'<section id="{section}">' in page
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == pngs
    assert "encoder.layer.1.output.dense" in page and "<code>linear_11</code>" in page
    assert "weight not quantized" in page and "6x</b> the median" in page
    assert not list(folder.parent.glob(".report.*"))          # no temporary folder left


def test_hf_report_numbers_come_from_the_run(hf_report, models):
    transformers = pytest.importorskip("transformers")
    data = json.loads((hf_report[1] / "report.json").read_text())
    model = transformers.BertModel.from_pretrained(models / "bert")
    lin = {x["name"]: x for x in data["linears"]}
    assert len(lin) == 13
    for name, x in lin.items():                  # shapes are the model's
        assert tuple(model.get_submodule(name).weight.shape) == (x["out_features"],
                                                                 x["in_features"])
    pooler = lin.pop("pooler.dense")
    assert (pooler["weight"], pooler["kernel"], pooler["why"]) == ("fp32", "fp32",
                                                                   "weight not quantized")
    assert all(x["weight"] == "int8 per channel" and x["activation"] == "u8 per tensor"
               for x in lin.values())
    if data["lowering"]["kernel_family"]:         # a CPU with int8 kernels (AVX2 or later)
        assert all(x["kernel"] in ("linear_u8s8", "linear_u8s8_q") for x in lin.values())
    else:                                         # none: each says why it stayed float
        assert all(x["kernel"] == "fp32" and "int8 kernels" in x["why"] for x in lin.values())
    # q, k and v read one LayerNorm output: 4 inputs per block, plus the pooler's
    assert len(data["sites"]) == 9
    for s in data["sites"]:
        lo, hi = min(s["lo"]), max(s["hi"])
        if s["grid"] is None:
            continue
        # the quantizer calibrated min-max on the same batches: its u8 grid spans the
        # measured range, to within one step (the zero point is rounded to an integer)
        step = (s["grid"][1] - s["grid"][0]) / 255
        assert abs(s["grid"][0] - min(lo, 0)) <= 1.01 * step, s["key"]
        assert abs(s["grid"][1] - max(hi, 0)) <= 1.01 * step, s["key"]
    sizes = {r["component"]: r for r in data["sizes"]}
    float_bytes = sum(t.numel() * t.element_size() for t in
                      [*model.parameters(), *model.buffers()])
    assert sum(r["float_bytes"] for r in data["sizes"]) == float_bytes
    # int8 weight, fp32 scale and bias, one byte of zero point per output channel
    want = sum(x["in_features"] * x["out_features"] + 9 * x["out_features"]
               for x in lin.values())
    assert sizes["linears int8 per channel (12)"]["quant_bytes"] == want
    assert sizes["embeddings"]["quant_bytes"] == sizes["embeddings"]["float_bytes"]


def test_qdq_file_report_without_compile(lowbit, work, quantized, tmp_path):
    done = lowbit("report", work / "lowbit-out/bert-W8A8/model.qdq.onnx", "--no-compile",
                  "--num-calibration", "16", "--seq", "16", "-o", tmp_path / "qdq_report",
                  cwd=work)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "qdq_report" / "report.json").read_text())
    assert data["recipe"] == "W8A8" and data["lowering"] is None   # the file's own recipe
    assert "not compiled (--no-compile)" in (tmp_path / "qdq_report/index.html").read_text()
    names = [x["name"] for x in data["linears"]]
    assert len(names) == 13 and names[0] == "encoder.layer.0.attention.self.query"
    assert sum(x["weight"] == "int8 per channel" for x in data["linears"]) == 12
    assert all(len(s["lo"]) in (32, 64) for s in data["sites"])   # measured in onnxruntime
    assert not (tmp_path / "qdq_report" / "lowering.png").exists()


# case -> (argv, what the one error line says); {m}: the models folder
ERRORS = {
    "a .pt2 program": (["{m}/bert.pt2"], "{m}/bert.pt2 is a .pt2 program: lowbit report takes"),
    "unknown recipe": (["{m}/bert", "--recipe", "W9"], "unknown recipe 'W9'"),
    "recipe for a QDQ file": (["{q}", "--recipe", "W8A8"], "--recipe W8A8: {q} is reported as it is"),
    "float ONNX file": (["{m}/fixed.onnx"], "{m}/fixed.onnx is not quantized: quantize it first"),
    "sequence 0": (["{m}/bert", "--seq", "0"], "--seq must be >= 1, got 0"),
    "sequence the file cannot run": (["{q}", "--seq", "64", "--no-compile"],
                                     ("onnxruntime cannot run the model on the calibration "
                                      "text (input_ids [8, 64], attention_mask [8, 64])")),
    "not a report folder": (["{m}/bert", "-o", "{m}/gpt2"],
                            "{m}/gpt2 exists and is not a lowbit report folder (no index.html)"),
    "unknown target": (["{m}/bert", "--target", "tpu"], "--target tpu: unknown target 'tpu'"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_user_errors_are_one_line(case, models, work, quantized, capsys):
    from lowbit.cli import main

    argv, says = ERRORS[case]
    q = str(work / "lowbit-out/bert-W8A8/model.qdq.onnx")
    fill = lambda s: s.replace("{m}", str(models)).replace("{q}", q)
    assert main(["report", *map(fill, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lowbit report: error: "), err
    assert fill(says) in err


def test_help_has_examples(capsys):
    from lowbit.cli import main

    with pytest.raises(SystemExit) as done:
        main(["report", "--help"])
    assert done.value.code == 0
    assert "examples:\n  lowbit report ./bert " in capsys.readouterr().out


def test_missing_matplotlib_is_one_line(models, monkeypatch, capsys):
    from lowbit.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib fails
    assert main(["report", str(models / "bert")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'lowbit[report]'" in err


def open_page(page: Path, screenshot: Path, *, height: int | None = None) -> list[list]:
    """Open ``page`` in headless chromium (a fresh profile), screenshot it (the whole page, or
    its top ``height`` pixels) and return ``[src, naturalWidth, naturalHeight]`` of each
    image."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lowbit-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={PAGE_WIDTH},900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        driver.execute_script(
            "await Promise.all(Array.from(document.images).map(i => i.decode()))")
        images = driver.execute_script("return Array.from(document.images).map("
                                       "i => [i.getAttribute('src'), i.naturalWidth, "
                                       "i.naturalHeight])")
        full = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(PAGE_WIDTH, min(full, height or full))
        driver.save_screenshot(str(screenshot))
        return images
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_renders_in_chromium(hf_report, tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"needs Debian's chromium and chromedriver: {', '.join(missing)} missing "
                    f"(apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="needs selenium (pip install lowbit[dev])")
    folder = hf_report[1]
    shot = tmp_path / "report.png"
    images = open_page(folder / "index.html", shot, height=2000)
    assert len(images) == len(list(folder.glob("*.png")))
    assert all(w > 0 and h > 0 for _, w, h in images), images
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


if __name__ == "__main__":      # python tests/cli/test_report_cli.py PAGE.html OUT.png [HEIGHT]
    imgs = open_page(Path(sys.argv[1]), Path(sys.argv[2]),
                     height=int(sys.argv[3]) if len(sys.argv) > 3 else None)
    print(f"{len(imgs)} image(s), all loaded: {all(w > 0 for _, w, _ in imgs)}")
