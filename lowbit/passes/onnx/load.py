"""Load and save ONNX models for the ONNX passes: ``load_onnx(path) -> onnx_ir.Model``.

What is checked on load, each with an error that says what to do:

* the file exists and parses as an ONNX ModelProto;
* the default-domain opset is at least ``MIN_OPSET`` (13: DequantizeLinear's ``axis`` and the
  op forms spotting reads); older files must be re-exported or converted;
* every initializer stored as external data has its data file beside the model, long enough
  for the bytes it claims (the data stays on disk, read lazily; ``save_onnx`` writes it again).

Symbolic input dimensions (``batch``, ``seq``, ``unk__0``) are fine: nothing here needs a
concrete shape. ``upgrade_opset`` converts a model in place to a newer opset (the QDQ passes
emit opset-21 ops: INT4 and blocked DequantizeLinear, ReduceMax with axes as an input).
``save_onnx`` writes atomically (a temporary file beside the target, checked with
``onnx.checker``, then renamed), with external data when asked or when the weights are over
protobuf's 2 GiB message limit.
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile

import onnx
import onnx_ir as ir

from lowbit.errors import OnnxModelError  # re-exported: its old home

__all__ = ["EXTERNAL_DATA_BYTES", "MIN_OPSET", "OnnxModelError", "has_external_data",
           "initializer_bytes", "load_onnx", "save_onnx", "upgrade_opset"]

log = logging.getLogger("lowbit.passes.onnx")

MIN_OPSET = 13
# Above this many bytes of initializers a model must be saved with external data (protobuf's
# hard limit is 2 GiB per message; leave room for the graph itself).
EXTERNAL_DATA_BYTES = 1_800_000_000


def _opset(model: ir.Model) -> int | None:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))


def has_external_data(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor)
               for v in model.graph.initializers.values())


def _check_external_data(model: ir.Model, path: pathlib.Path) -> None:
    for value in model.graph.initializers.values():
        t = value.const_value
        if not isinstance(t, ir.ExternalTensor):
            continue
        data = pathlib.Path(t.base_dir or path.parent) / t.location
        if not data.is_file():
            raise OnnxModelError(
                f"{path}: initializer {value.name!r} keeps its data in external file "
                f"{t.location!r}, which is missing (looked in {data.parent}); copy the data "
                f"file(s) saved with the model next to {path.name}")
        need = (t.offset or 0) + (t.length if t.length is not None else t.nbytes)
        if data.stat().st_size < need:
            raise OnnxModelError(
                f"{path}: external data file {t.location!r} has {data.stat().st_size} bytes, "
                f"initializer {value.name!r} needs bytes up to {need}: the file is truncated "
                f"or belongs to another model")


def load_onnx(path: str | os.PathLike) -> ir.Model:
    """Read an ONNX file into an ``onnx_ir.Model`` for the ONNX passes.

    Raises:
        OnnxModelError: the file is missing or not ONNX, its opset is below ``MIN_OPSET``, or
            its external data is missing or truncated.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise OnnxModelError(f"{path}: no such ONNX file")
    try:
        model = ir.load(path)
    except Exception as e:  # protobuf DecodeError and friends: all mean "not readable"
        raise OnnxModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})"
                             ) from e
    opset = _opset(model)
    if opset is None:
        raise OnnxModelError(f"{path}: the model imports no default-domain (ai.onnx) opset")
    if opset < MIN_OPSET:
        raise OnnxModelError(
            f"{path}: opset {opset} is too old (lowbit needs >= {MIN_OPSET}, 21 recommended); "
            f"re-export it, e.g. torch.onnx.export(..., opset_version=21), or convert it with "
            f"onnx.version_converter.convert_version(model, 21)")
    _check_external_data(model, path)
    return model


def upgrade_opset(model: ir.Model, target: int) -> bool:
    """Convert ``model`` in place to default-domain opset ``target`` when it is older; returns
    whether it converted. Uses onnxscript's converter (onnx's C++ converter as fallback).

    Raises:
        OnnxModelError: the conversion failed (the model may be partly converted: reload it).
    """
    opset = _opset(model)
    if opset is None or opset >= target:
        return False
    from onnxscript import version_converter

    try:
        version_converter.convert_version(model, target, fallback=True)
    except Exception as e:
        raise OnnxModelError(f"could not convert the model from opset {opset} to {target} "
                             f"({type(e).__name__}: {e}); re-export it at opset {target}") from e
    log.info("converted the model from opset %d to %d", opset, target)
    return True


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None)


def save_onnx(model: ir.Model, path: str | os.PathLike, *,
              external_data: bool | None = None, full_check: bool = False) -> pathlib.Path:
    """Write ``model`` to ``path`` atomically, checked by ``onnx.checker`` (with shape
    inference too when ``full_check``).

    ``external_data``: True writes every initializer to ``<name>.data`` beside the model; None
    does so only when the weights exceed ~1.8 GB. On any error ``path`` is left as it was.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = initializer_bytes(model) > EXTERNAL_DATA_BYTES
    data_name = f"{path.name}.data"
    target_data = (path.parent / data_name).resolve()
    if external_data and any(
            (pathlib.Path(v.const_value.base_dir) / v.const_value.location).resolve() == target_data
            for v in model.graph.initializers.values()
            if isinstance(v.const_value, ir.ExternalTensor)):
        # Writing over the data file this model reads from: read it into memory first.
        ir.external_data.load_to_model(model)
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        ir.save(model, tmp, external_data=data_name if external_data else None)
        onnx.checker.check_model(str(tmp), full_check=full_check)
        if external_data:
            os.replace(tmpdir / data_name, path.parent / data_name)
        os.replace(tmp, path)
    finally:
        for f in tmpdir.iterdir():
            f.unlink()
        tmpdir.rmdir()
    return path
