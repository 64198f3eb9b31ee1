"""Labelled TSV files: SST-2's form is read as is; every malformed file is refused with a
ConfigError naming the file and the line."""

import pytest

from lowbit.errors import ConfigError
from lowbit.eval.tsv import read_labelled


def _write(tmp_path, text, name="data.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_sst2_form(tmp_path):
    path = _write(tmp_path, 'text\tlabel\nit \'s a "charming" journey . \t1\nbleak \t0\n\n')
    assert read_labelled(path) == (['it \'s a "charming" journey .', "bleak"], [1, 0])
    assert read_labelled(path, limit=1) == (['it \'s a "charming" journey .'], [1])


def test_columns_by_name(tmp_path):
    path = _write(tmp_path, "label\tsentence\tid\n2\tgood\t7\r\n0\tbad\t8\r\n")
    assert read_labelled(path) == (["good", "bad"], [2, 0])


@pytest.mark.parametrize("text, message", [
    ("", "empty; expected a header line"),
    ("sentence\tscore\nok\t1\n", "line 1: the header 'sentence\\tscore' needs a 'text'"),
    ("text\tlabel\ngood\t1\nno label here\n", "line 3: 1 tab-separated field(s), the header has 2"),
    ("text\tlabel\ngood\tpositive\n", "line 2: label 'positive' is not an integer"),
    ("text\tlabel\n \t1\n", "line 2: empty text"),
    ("text\tlabel\n", "a header and no examples"),
])
def test_malformed_file_names_the_line(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        read_labelled(path)
    assert str(e.value).startswith(f"--tsv {path}")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_labelled(tmp_path / "absent.tsv")
    path = tmp_path / "bin.tsv"
    path.write_bytes(b"text\tlabel\n\xff\xfe\t1\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_labelled(path, what="--train-tsv")
