"""Suite-wide: tests that need a real model download say so with ``@pytest.mark.weights(name)``
(``minilm``, ``gemma``; lowbit.models.DOWNLOADS). They find the weights through the same cache
as ``lowbit demo`` (``$LOWBIT_CACHE`` or ~/.cache/lowbit), download them on first use
(announced), and skip with the reason when ``LOWBIT_SKIP_DOWNLOADS=1`` and the model is not
cached yet. The header of every run says which models are cached and what would be fetched."""

from __future__ import annotations

import pytest


def pytest_report_header(config):
    from lowbit.models.downloads import DOWNLOADS

    lines = []
    for d in DOWNLOADS.values():
        state = "cached" if d.cached() else f"not cached: {d.download_mb:.1f} MB on first use"
        lines.append(f"lowbit real weights: {d.title} in {d.where()} ({state})")
    return lines


def pytest_runtest_setup(item):
    from lowbit.models.downloads import skip_reason

    for mark in item.iter_markers("weights"):
        reason = skip_reason(mark.args[0])
        if reason:
            pytest.skip(reason)


class _NoTorchTraceCapture:
    """pytest (>= 9) attaches its log-capture handlers to every logger that does not propagate,
    torch's ``torch.__trace`` included. That logger is always at DEBUG and torch emits its
    structured-trace records (empty messages, payloads computed for them) as soon as it has a
    handler: a failing test's "Captured log" then held about 195 empty ``DEBUG torch.__trace``
    lines. Inside pytest's capture (``trylast``: the innermost wrapper), its handlers are taken
    off that logger again; torch's own handler stays."""

    @staticmethod
    def _detach() -> None:
        import logging

        trace = logging.getLogger("torch.__trace")
        for handler in list(trace.handlers):
            if type(handler).__module__.startswith("_pytest"):
                trace.removeHandler(handler)

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_setup(self, item):
        self._detach()
        return (yield)

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_call(self, item):
        self._detach()
        return (yield)

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_teardown(self, item):
        self._detach()
        return (yield)


def pytest_configure(config):
    config.pluginmanager.register(_NoTorchTraceCapture(), "lowbit-no-torch-trace-capture")


@pytest.fixture(scope="module")
def tiny_bert_batch():
    """A seeded one-layer BertModel (hidden 32, vocab 100; eval mode) and a batch for it:
    ``(model, {"input_ids": (2, 8), "attention_mask": ones})``. Built once per test module."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, vocab_size=100)).eval()
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return model, batch


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch at one thread for a test module (restored after it): TT-SVDs, BCQ fits and tiny
    GEMMs are many small ops, and on a loaded 2-core host two OpenMP threads spin (~10-50x
    slower). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
