"""lowbit.progress: a tqdm bar only on a terminal (or LOWBIT_PROGRESS=1), one summary line per
step whatever the terminal, and no hand-drawn progress left anywhere in lowbit/."""

import logging
import pathlib
import re
import sys

import pytest

from lowbit import progress
from lowbit.capture import capture
from lowbit.quantize import calibrate, prepare
from lowbit.recipes import W8A8


class _Tty:
    """A stderr that says it is a terminal and keeps what is written."""

    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return True


@pytest.fixture
def tty(monkeypatch):
    """Call it in the test body (pytest puts its own stderr back when the call starts)."""
    def install():
        out = _Tty()
        monkeypatch.delenv("LOWBIT_PROGRESS", raising=False)
        monkeypatch.setattr(sys, "stderr", out)
        return out
    return install


def test_drawing_follows_the_terminal_and_the_environment(monkeypatch, capsys):
    monkeypatch.delenv("LOWBIT_PROGRESS", raising=False)
    assert not progress.drawing()                      # pytest's stderr is not a terminal
    monkeypatch.setenv("LOWBIT_PROGRESS", "1")
    assert progress.drawing() and not progress.drawing(enabled=False)
    monkeypatch.setenv("LOWBIT_PROGRESS", "0")
    assert not progress.drawing()


def test_no_bar_off_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("LOWBIT_PROGRESS", raising=False)
    assert list(progress.bar(range(5), desc="working")) == list(range(5))
    progress.say("worked on 5 item(s)")
    assert capsys.readouterr().err == "[lowbit] worked on 5 item(s)\n"


def test_bar_on_a_terminal_and_the_summary_line_stays(tty):
    tty = tty()
    for _ in progress.bar(range(3), desc="working", unit="item"):
        progress.say("a line above the bar")
    progress.say("worked on 3 item(s)")
    assert "[lowbit] working" in tty.text and "/3 [" in tty.text and "\r" in tty.text
    assert tty.text.count("a line above the bar\n") == 3
    assert tty.text.rstrip("\n").endswith("[lowbit] worked on 3 item(s)")


def test_stages_name_the_stage_running(tty):
    tty = tty()
    with progress.stages(("import", "build"), desc="compiling") as stage:
        stage("import")
        stage("build")
    assert "[lowbit] compiling" in tty.text and "import" in tty.text and "build" in tty.text


def test_log_handler_writes_above_the_bar(tty):
    tty = tty()
    log = logging.getLogger("lowbit.test_progress")
    handler = progress.LogHandler()
    log.addHandler(handler)
    try:
        with progress.bar(total=2, desc="working") as b:
            log.warning("logged while the bar runs")
            b.update(2)
    finally:
        log.removeHandler(handler)
    assert "logged while the bar runs\n" in tty.text


@pytest.fixture(scope="module")
def bert(tiny_bert_batch):
    """The captured tiny BERT (tests/conftest.py) and its batch."""
    model, batch = tiny_bert_batch
    return capture(model, batch), batch


@pytest.fixture
def prepared(bert):
    return prepare(bert[0], W8A8)


def test_calibration_off_a_terminal_prints_one_line(bert, prepared, monkeypatch, capsys):
    monkeypatch.delenv("LOWBIT_PROGRESS", raising=False)
    calibrate(prepared, (bert[1] for _ in range(60)))
    err = capsys.readouterr().err
    assert re.fullmatch(r"\[lowbit\] calibrated on 60 batch\(es\) in [\d.]+ s "
                        r"\(\d+ activation observers\)\n", err), err


def test_calibration_on_a_terminal_draws_a_bar_then_the_line(bert, prepared, tty):
    tty = tty()
    calibrate(prepared, [bert[1]] * 3)
    assert "[lowbit] calibrating" in tty.text and "/3 [" in tty.text
    assert "[lowbit] calibrated on 3 batch(es)" in tty.text


def test_progress_false_prints_nothing(bert, prepared, tty):
    tty = tty()
    calibrate(prepared, [bert[1]], progress=False)
    assert tty.text == ""


def test_no_hand_drawn_progress_left_in_lowbit():
    """Progress is drawn by lowbit.progress only: no carriage-return status lines and no
    terminal checks of their own anywhere else in the package."""
    root = pathlib.Path(__file__).resolve().parents[1] / "lowbit"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "progress.py":
            continue
        text = path.read_text()
        if re.search(r"\\r\[lowbit\]|chr\(13\)|\.isatty\(\)", text):
            offenders.append(str(path.relative_to(root.parent)))
    assert offenders == []
