"""Errors lowbit raises. Each says what was wrong and, where it can, what to try."""

from __future__ import annotations


class LowbitError(Exception):
    """Base of every error lowbit raises on purpose."""


class ConfigError(LowbitError, ValueError):
    """A config value is invalid; the message names the field and the value."""


class CaptureError(LowbitError):
    """A model could not be captured into a graph."""


class PatternError(LowbitError):
    """Transformer structure could not be read from a graph."""


class PassFailure(LowbitError):
    """A pass raised; the message names the pass and the passes that ran before it."""


class PreconditionError(LowbitError):
    """A pass's `requires` check refused its input graph."""


class PostconditionError(LowbitError):
    """A pass's `ensures` check refused its output graph."""


class CalibrationError(LowbitError):
    """Calibration data is missing, empty or carries NaN/inf."""


class WeightError(LowbitError, ValueError):
    """A weight of the model holds NaN or inf; the message names the weight (not the data)."""


class DownloadError(LowbitError):
    """A model package could not be fetched or failed its checksum."""


class VerifyError(LowbitError):
    """A model given to an equivalence check (``lowbit verify``, ``lowbit.testing``) cannot be
    loaded, fed or run, or its outputs cannot be matched; the message names the model and why."""


class OnnxModelError(LowbitError, ValueError):
    """An ONNX file cannot be used: unreadable, too old, or missing its external data."""


class OnnxExportError(LowbitError):
    """torch.onnx.export or the QDQ clean-up could not produce a valid ONNX model."""


class HFLoadError(LowbitError):
    """A Hugging Face model directory cannot be loaded."""


class CompileError(LowbitError):
    """A graph cannot be lowered to TVM; the message says which part and why."""


class RuntimeInputError(LowbitError, ValueError):
    """Inputs given to a CompiledModule do not match what it was compiled for."""
