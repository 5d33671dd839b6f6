"""One exception tree for sdbridge.

Every error names what was wrong (field, value) and what to do about it (fix), and
carries a stable ``code`` that the control protocol sends to clients.

::

    SdbridgeError                       code
    ├── ConfigError                     invalid_config      bad preset / parameter values
    │   └── RebuildRequired             rebuild_required    live change that needs a rebuild
    ├── ModelError                      model_error         loading / building model components
    │   └── WeightsNotFoundError        weights_not_found   weights not on disk or in HF cache
    ├── RuntimeMissingError             runtime_missing     optional runtime absent (TensorRT, CUDA, NDI…)
    ├── PipelineError                   pipeline_error      failure inside the diffusion pipeline
    ├── TransportError                  transport_error     frame transport failures
    │   ├── TransportUnavailableError   transport_unavailable
    │   ├── SourceNotFoundError         source_not_found
    │   ├── FrameTimeout                frame_timeout       no frame within the timeout
    │   ├── ProtocolError               protocol_error      foreign / corrupt shared memory etc.
    │   └── FrameFormatError            frame_format        wrong size / pixel format
    └── ControlError                    control_error       control-protocol failures
        └── BadRequest                  bad_request         malformed control message
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: which field, which value, and how to fix it."""

    field: str
    value: Any
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.field}={self.value!r}: {self.message}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class SdbridgeError(Exception):
    """Base of every error sdbridge raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, fix: str = "") -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} (fix: {fix})" if fix else message)


class ConfigError(SdbridgeError):
    """Invalid configuration or parameter values; lists every problem at once."""

    code = "invalid_config"

    def __init__(self, problems: list[Problem] | Problem, *, context: str = "") -> None:
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        head = f"{context}: " if context else ""
        if len(self.problems) == 1:
            text = head + str(self.problems[0])
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            text = f"{head}{len(self.problems)} problems:\n{lines}"
        super().__init__(text)

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.problems]


class RebuildRequired(ConfigError):
    """A change that cannot be applied live (steps count, batch, size, model)."""

    code = "rebuild_required"


class ModelError(SdbridgeError):
    code = "model_error"


class WeightsNotFoundError(ModelError):
    code = "weights_not_found"


class RuntimeMissingError(SdbridgeError):
    """An optional runtime (TensorRT, CUDA, NDI, SpoutGL…) is not installed or usable."""

    code = "runtime_missing"


class PipelineError(SdbridgeError):
    code = "pipeline_error"


class TransportError(SdbridgeError):
    code = "transport_error"


class TransportUnavailableError(TransportError):
    code = "transport_unavailable"


class SourceNotFoundError(TransportError):
    code = "source_not_found"


class FrameTimeout(TransportError):
    code = "frame_timeout"


class ProtocolError(TransportError):
    code = "protocol_error"


class FrameFormatError(TransportError):
    code = "frame_format"


class ControlError(SdbridgeError):
    code = "control_error"


class BadRequest(ControlError):
    code = "bad_request"
