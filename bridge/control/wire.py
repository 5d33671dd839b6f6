"""JSON wire format: bytes in, typed command, reply bytes out. Never raises on garbage.

Request ``{"id": <string|number|null>, "cmd": "<name>", "args": {...}}`` (``args`` optional; ``token`` when
the server requires one). Reply ``{"id": <same>, "ok": true, "result": {...}}`` or
``{"id": <same or null>, "ok": false, "error": {"code": "<stable code>", "message": "..."}}``.
Error codes are stable: clients may branch on them (see :data:`ERROR_CODES`).
"""

from __future__ import annotations

import hmac
import json
import math
import logging
from dataclasses import dataclass
from typing import Any

from bridge.control.commands import COMMANDS, Command
from bridge.control.target import ControlTarget
from bridge.errors import BadRequest, ControlError, SdbridgeError

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 65536

# code -> when it is sent. Codes of bridge.errors (invalid_config, pipeline_error…) pass through.
ERROR_CODES: dict[str, str] = {
    "invalid_json": "the message is not UTF-8 encoded JSON",
    "bad_request": "JSON, but not a request object of the documented shape (or wrong args)",
    "unknown_command": "`cmd` is not one of the commands",
    "too_large": "the message exceeds the server's size limit",
    "unauthorized": "the server requires a token and the request's `token` is missing or wrong",
    "invalid_config": "a parameter value is invalid; nothing was applied (all-or-nothing)",
    "rebuild_required": "a change cannot be applied live (rebuild policy `reject`)",
    "control_error": "other control-plane failure",
    "internal_error": "unexpected server-side failure (logged by the daemon); retry",
}


class WireError(ControlError):
    """A request that fails before reaching the target; ``code`` is set per instance."""

    def __init__(self, code: str, message: str, *, fix: str = "", request_id: Any = None) -> None:
        super().__init__(message, fix=fix)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: Any
    command: Command


def decode_request(raw: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                   token: str | None = None) -> Request:
    """Parse and check one request; raises WireError (with the request id when known)."""
    if len(raw) > max_bytes:
        raise WireError("too_large", f"message is {len(raw)} bytes, limit is {max_bytes}",
                        fix="send smaller messages (long prompts: split or shorten)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WireError("invalid_json", f"message is not UTF-8: {exc.reason} at byte {exc.start}",
                        fix="encode requests as UTF-8 JSON") from exc
    except (ValueError, RecursionError) as exc:
        raise WireError("invalid_json", f"message is not JSON: {str(exc)[:200]}",
                        fix='send {"id": 1, "cmd": "ping"}') from exc
    if not isinstance(data, dict):
        raise WireError("bad_request", f"request must be a JSON object, got {type(data).__name__}",
                        fix='send {"id": 1, "cmd": "ping", "args": {}}')
    request_id = data.get("id")
    if not _valid_id(request_id):
        raise WireError("bad_request", f"id={_short(request_id)}: must be a string (<= 256 chars), "
                        "a finite number or null", fix='use e.g. "id": 1')
    _check_token(data, token, request_id)
    cmd = data.get("cmd")
    if not isinstance(cmd, str):
        raise WireError("bad_request", f"cmd={_short(cmd)}: must be a command name string",
                        fix=f"use one of: {', '.join(COMMANDS)}", request_id=request_id)
    spec = COMMANDS.get(cmd)
    if spec is None:
        raise WireError("unknown_command", f"cmd={_short(cmd)}: unknown command",
                        fix=f"use one of: {', '.join(COMMANDS)}", request_id=request_id)
    args = data.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise WireError("bad_request", f"args={_short(args)}: must be a JSON object",
                        fix='send "args": {...} or omit it', request_id=request_id)
    unknown = sorted(k for k in data if k not in ("id", "cmd", "args", "token"))
    if unknown:
        raise WireError("bad_request", f"unexpected top-level keys {_short(unknown)}",
                        fix="only id, cmd, args and token are allowed", request_id=request_id)
    try:
        return Request(request_id, spec.parse(args))
    except BadRequest as exc:
        raise WireError("bad_request", exc.message, fix=exc.fix, request_id=request_id) from exc


def _valid_id(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= 256


def _check_token(data: dict[str, Any], token: str | None, request_id: Any) -> None:
    if token is None:
        return
    given = data.get("token")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
        raise WireError("unauthorized", "missing or wrong token",
                        fix='add "token": "<shared token>" to every request', request_id=request_id)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def ok_reply(request_id: Any, result: Any) -> bytes:
    return _dump({"id": request_id, "ok": True, "result": result})


def error_reply(request_id: Any, code: str, message: str) -> bytes:
    return _dump({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


def _dump(reply: dict[str, Any]) -> bytes:
    try:
        return json.dumps(reply, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        # The id is echoed verbatim and may hold NaN; the result may hold non-JSON values.
        log.error("reply not serialisable: %s", exc)
        safe_id = reply["id"] if isinstance(reply["id"], (str, int, type(None))) else None
        return json.dumps({"id": safe_id, "ok": False, "error": {
            "code": "internal_error", "message": f"reply could not be encoded: {exc}"}}).encode()


def handle_message(raw: bytes, target: ControlTarget, *,
                   max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, token: str | None = None) -> bytes:
    """One request in, one reply out, whatever the input."""
    return dispatch(raw, target, max_bytes=max_bytes, token=token)[1]


def dispatch(raw: bytes, target: ControlTarget, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
             token: str | None = None) -> tuple[bool, bytes]:
    """Like handle_message, also saying whether the reply is a success (for counters)."""
    request_id: Any = None
    try:
        request = decode_request(raw, max_bytes=max_bytes, token=token)
        request_id = request.id
        return True, ok_reply(request_id, request.command.execute(target))
    except WireError as exc:
        return False, error_reply(exc.request_id, exc.code, str(exc))
    except SdbridgeError as exc:
        return False, error_reply(request_id, exc.code, str(exc))
    except Exception as exc:  # the control socket must answer even when the target breaks
        log.exception("control command failed unexpectedly")
        return False, error_reply(request_id, "internal_error", f"{type(exc).__name__}: {exc}")
