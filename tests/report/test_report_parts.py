"""lowbit.report's parts on data made by hand: outlier channels are the ones beyond
OUTLIER_FACTOR x the median channel (largest first), ranges widen by batch, and the report
folder is written atomically (replaced whole, never a folder that is not a report)."""

import json

import numpy as np
import pytest

from lowbit.errors import ConfigError
from lowbit.report.data import OUTLIER_FACTOR, Linear, Report, Site, SizeRow, block_of
from lowbit.report.ranges import merge_range
from lowbit.report_cli import write


def _site(absmax: np.ndarray, key: str = "x") -> Site:
    return Site(key, [f"encoder.layer.0.{key}"], "encoder.layer.0", "u8 per tensor",
                lo=-absmax, hi=absmax.copy(), grid=(-1.0, 1.0))


def test_outliers_beyond_factor_times_median_largest_first():
    a = np.ones(64)
    a[3], a[11], a[15] = 10.0, OUTLIER_FACTOR + 0.5, OUTLIER_FACTOR   # 15 is on the line
    s = _site(a)
    assert s.median == 1.0 and s.outliers == [3, 11] and s.ratio == 10.0
    assert _site(np.ones(8)).outliers == []


def test_ranges_widen_per_channel_over_batches():
    s = Site("x", ["l"], "other", "fp32")
    merge_range(s, np.array([[[1.0, -2.0, 0.5]], [[0.0, 3.0, 0.5]]]))   # [batch, seq, C]
    merge_range(s, np.array([[-4.0, 0.0, 0.5]]))
    np.testing.assert_array_equal(s.lo, [-4.0, -2.0, 0.5])
    np.testing.assert_array_equal(s.hi, [1.0, 3.0, 0.5])


def test_block_of_names():
    assert block_of("encoder.layer.10.attention.self.query") == "encoder.layer.10"
    assert block_of("transformer.h.0.mlp.c_fc") == "transformer.h.0"
    assert block_of("pooler.dense") == "other"


@pytest.fixture
def report():
    pytest.importorskip("matplotlib")
    lin = [Linear("encoder.layer.0.q", "linear", 8, 8, "int8 per channel", 8, "u8 per tensor", 8,
                  site="x", kernel="linear_u8s8"),
           Linear("pooler.dense", "linear_1", 8, 8, "fp32", 32, "fp32", 32, site="y",
                  kernel="fp32", why="weight not quantized")]
    a = np.ones(8)
    a[2] = 20.0
    sites = [_site(a, "x"), Site("y", ["pooler.dense"], "other", "fp32", note="never ran")]
    sizes = [SizeRow("linears int8 per channel (1)", 288, 104), SizeRow("other", 10, 10)]
    return Report("models/tiny", "Hugging Face folder", "W8A8", "2 text(s)", lin, sites, sizes,
                  lowering_note="not compiled (--no-compile)", notes=["a <note> & more"])


def test_write_replaces_a_report_atomically(report, tmp_path):
    folder = tmp_path / "report"
    files = write(report, folder)
    assert files[-1] == folder / "index.html" and all(f.is_file() for f in files)
    assert {f.name for f in folder.glob("*.png")} == {"outliers.png", "bits.png", "sizes.png",
                                                      "ranges_encoder_layer_0.png"}
    page = (folder / "index.html").read_text()
    assert "a &lt;note&gt; &amp; more" in page and "never ran" in page      # escaped
    assert "2 (20.0x)" in page and "not compiled (--no-compile)" in page
    assert json.loads((folder / "report.json").read_text())["sites"][0]["outliers"] == [2]
    (folder / "stale.png").write_bytes(b"")
    write(report, folder)                                  # replaced whole
    assert not (folder / "stale.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]   # no temporary left


def test_write_refuses_a_folder_that_is_not_a_report(report, tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match="is not a lowbit report folder"):
        write(report, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
