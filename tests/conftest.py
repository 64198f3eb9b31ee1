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
