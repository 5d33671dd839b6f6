"""Frame transport contract and registry.

Every transport is a small ``FrameSource`` and/or ``FrameSink`` class. The registry maps a
kind name (``"shm"``, ``"ndi"``, ``"spout"``…) to the module that implements it, imported only
when asked for, so a missing vendor package never breaks ``import bridge``. Each transport
module exposes ``availability() -> Availability`` that says *why* it cannot run here.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable

from bridge.errors import ConfigError, Problem, TransportUnavailableError
from bridge.frame import Frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> "Availability":
        return cls(True, "")


class _Managed:
    """Shared open/close context-manager behaviour for sources and sinks."""

    def open(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Acquire the underlying resource. Idempotent."""

    def close(self) -> None:  # noqa: B027
        """Release the resource. Idempotent; never raises for an already closed transport."""

    def __enter__(self) -> "_Managed":
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FrameSource(_Managed, ABC):
    """Produces frames. ``receive`` blocks up to ``timeout`` seconds, then raises FrameTimeout."""

    kind: str = ""

    @abstractmethod
    def receive(self, timeout: float) -> Frame: ...

    def __enter__(self) -> "FrameSource":
        self.open()
        return self


class FrameSink(_Managed, ABC):
    """Consumes frames. ``send`` must not block for long: real time means drop, not lag."""

    kind: str = ""

    @abstractmethod
    def send(self, frame: Frame) -> None: ...

    def __enter__(self) -> "FrameSink":
        self.open()
        return self


@dataclass(frozen=True)
class TransportEntry:
    kind: str
    module: str
    source_class: str | None
    sink_class: str | None
    description: str
    availability: str = "availability"  # module function that says whether and why not


_REGISTRY: dict[str, TransportEntry] = {}


def register_transport(
    kind: str,
    module: str,
    *,
    source_class: str | None = None,
    sink_class: str | None = None,
    description: str = "",
    availability: str = "availability",
) -> None:
    _REGISTRY[kind] = TransportEntry(kind, module, source_class, sink_class, description,
                                     availability)


def transport_kinds() -> list[str]:
    return sorted(_REGISTRY)


def transport_entry(kind: str) -> TransportEntry:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ConfigError(
            Problem("kind", kind, "unknown transport", f"use one of: {', '.join(transport_kinds())}")
        ) from None


def is_available(kind: str) -> Availability:
    """Ask the transport module itself; an import failure becomes the reason, not a crash."""
    entry = transport_entry(kind)
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        return Availability(False, f"cannot import {entry.module}: {exc}")
    check: Callable[[], Availability] | None = getattr(module, entry.availability, None)
    return check() if check else Availability.yes()


def _build(kind: str, attr: str, role: str, options: dict[str, Any]) -> Any:
    entry = transport_entry(kind)
    class_name = getattr(entry, attr)
    if class_name is None:
        raise ConfigError(Problem(f"{role}.kind", kind, f"transport has no {role}", "pick another kind"))
    status = is_available(kind)
    if not status.available:
        raise TransportUnavailableError(f"transport {kind!r} is not available: {status.reason}")
    cls = getattr(importlib.import_module(entry.module), class_name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(
            Problem(f"{role}.options", options, f"bad options for {kind} {role}: {exc}",
                    f"see docs/transports.md for the options of {kind}")
        ) from exc


def create_source(kind: str, **options: Any) -> FrameSource:
    return _build(kind, "source_class", "source", options)


def create_sink(kind: str, **options: Any) -> FrameSink:
    return _build(kind, "sink_class", "sink", options)
