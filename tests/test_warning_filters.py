"""lowbit.warning_filters: each named filter silences its own warning inside ``quiet(name)``
and nothing else (an unrelated warning of the same kind, from the same source where there is
one, still shows); outside ``quiet`` the warning shows as before; nothing is left installed.
The LeafSpec, torchvision and TVM ``take`` warnings are raised for real; the others are
written exactly as their library writes them (TVM's scope line needs a VM executable with
memory scopes; onnxscript's needs a graph its folding cannot evaluate)."""

import copy
import logging
import os
import warnings

import pytest
import torch

from lowbit.warning_filters import FILTERS, KINDS, NamedFilter, copy_graph, quiet


def _leafspec_deepcopy():
    copy.deepcopy(torch.utils._pytree.treespec_leaf())   # torch's own leaf singleton


def _shown(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in seen]


def test_every_filter_is_named_and_says_why():
    assert set(FILTERS) == {f.name for f in FILTERS.values()}
    for f in FILTERS.values():
        assert f.kind in KINDS and f.reason and f.source and f.message
    with pytest.raises(ValueError, match="kind"):
        NamedFilter("x", "everything", ".*", "torch", "why")
    with pytest.raises(ValueError, match="reason"):
        NamedFilter("x", "log", ".*", "torch", "")
    with pytest.raises(KeyError), quiet("no-such-filter"):
        pass


def test_leafspec_deepcopy_warning():
    assert any("LeafSpec" in m for m in _shown(_leafspec_deepcopy))   # torch still warns

    def inside():
        with quiet("torch-leafspec-deepcopy"):
            _leafspec_deepcopy()
            warnings.warn("an unrelated FutureWarning", FutureWarning, stacklevel=1)

    assert _shown(inside) == ["an unrelated FutureWarning"]
    assert not any("LeafSpec" in m for m in _shown(lambda: copy_graph(
        torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)).module())))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def records():
    """A handler collecting what ``logger`` emits, at WARNING whatever its parents' levels
    (other test modules quiet "torch.onnx" and "onnxscript" to ERROR)."""
    attached = []

    def attach(logger):
        seen = _Records()
        attached.append((logger, seen, logger.level))
        logger.setLevel(logging.WARNING)
        logger.addHandler(seen)
        return seen

    yield attach
    for logger, seen, level in attached:
        logger.removeHandler(seen)
        logger.setLevel(level)


@pytest.mark.parametrize("name,message", [
    ("torch-onnx-torchvision-ops", "torchvision is not installed. Skipping torchvision::nms"),
    ("onnxscript-fold-evaluation-failed",
     "Evaluation failed: [ShapeInferenceError] Cannot infer the shape of Reshape"),
])
def test_log_filters(name, message, records):
    logger = logging.getLogger(FILTERS[name].source)
    seen = records(logger)
    logger.warning(message)
    with quiet(name):
        logger.warning(message)
        logger.warning("an unrelated warning of the same logger")
    logger.warning(message)
    assert seen.messages == [message, "an unrelated warning of the same logger", message]
    assert not logger.filters


def test_torchvision_lines_of_a_real_export(records):
    """The ONNX exporter's registry logs its torchvision lines each time it is built."""
    from torch.onnx._internal.exporter import _registration

    seen = records(logging.getLogger(FILTERS["torch-onnx-torchvision-ops"].source))
    with quiet("torch-onnx-torchvision-ops"):
        _registration.ONNXRegistry.from_torchlib()
    _registration.ONNXRegistry.from_torchlib()
    torchvision = [m for m in seen.messages if "torchvision" in m]
    if not torchvision:
        pytest.skip("torchvision is installed here: the exporter has nothing to say")
    assert len(torchvision) == len(seen.messages) == 4          # the second build only


SCOPE = "[17:21:41] /project/src/runtime/vm/executable.cc:276: Warning: Scope Saving:global\n"


def test_stderr_filter_drops_its_line_and_keeps_the_others(capfd):
    with quiet("tvm-vm-scope-saving"):
        os.write(2, SCOPE.encode())
        os.write(2, b"[17:21:41] /project/src/x.cc:1: Warning: something else\n")
    os.write(2, SCOPE.encode())
    err = capfd.readouterr().err
    assert err.count("Scope Saving") == 1 and "something else" in err


def test_tvm_take_fast_mode_of_a_real_legalization(capfd):
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.script import relax as R

    @tvm.script.ir_module
    class Lookup:
        @R.function
        def main(table: R.Tensor((10, 4), "float32"), ids: R.Tensor((3,), "int64")):
            return R.take(table, ids, axis=0)

    with quiet("tvm-take-fast-mode"):
        relax.transform.LegalizeOps()(Lookup)
    assert "Fast mode" not in capfd.readouterr().err
    relax.transform.LegalizeOps()(Lookup)
    assert "Fast mode segfaults" in capfd.readouterr().err


def test_quiet_leaves_nothing_behind():
    before = list(warnings.filters)
    with quiet(*FILTERS):
        pass
    assert warnings.filters == before
    assert all(not logging.getLogger(f.source).filters
               for f in FILTERS.values() if f.kind == "log")


def test_pytest_does_not_capture_torch_trace_records():
    """tests/conftest.py: pytest's capture handlers are kept off torch's always-DEBUG trace
    logger, so a failing test's captured log is not flooded with its empty records."""
    trace = logging.getLogger("torch.__trace")
    assert not [h for h in trace.handlers if type(h).__module__.startswith("_pytest")]
    assert any(type(h).__module__.startswith("_pytest") for h in logging.getLogger().handlers)
