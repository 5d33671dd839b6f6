"""HTTP preview sink: the latest output frame as MJPEG, a single JPEG and a page for OBS.

Routes:
  ``/``             black page whose image fills the window (OBS Browser Source, any browser)
  ``/stream.mjpg``  ``multipart/x-mixed-replace`` MJPEG stream
  ``/frame.jpg``    the newest frame as one JPEG (503 until the first frame)
  ``/control``      (``controls=True``) a form generated from the parameter schema
  ``/control/set``  POST ``{"changes": {...}}`` → validated, then forwarded as ``set``
  ``/control/state``GET the daemon's ``get_state`` result (to prefill the form)

Why this shape: ``send`` only stores a reference to the newest frame (no work on the sink
thread); the first client that needs frame *n* encodes it and every other client reuses
those bytes, so JPEG work is once per frame, not per client, and zero with no viewer.
Clients wait for "a frame newer than the one I sent", so a slow client simply skips to the
newest frame — nothing queues. Loopback only unless ``allow_remote`` is set explicitly.
"""

from __future__ import annotations

import html
import importlib.util
import io
import ipaddress
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable

from bridge.errors import ConfigError, Problem, SdbridgeError, TransportError
from bridge.frame import Frame, PixelFormat
from bridge.frame_convert import convert
from bridge.io.base import Availability, FrameSink
from bridge.params import PARAMS, ParamSpec, validate_changes

if TYPE_CHECKING:  # the daemon's control target (bridge.control.target); only set/get_state used
    from bridge.control.target import ControlTarget

log = logging.getLogger(__name__)

BOUNDARY = "sdbridgeframe"
MAX_BODY_BYTES = 64 * 1024
CLIENT_WAIT_S = 0.5  # how often a waiting stream re-checks for shutdown
SOCKET_TIMEOUT_S = 10.0  # a client that cannot take a frame for this long is dropped

# Pillow raw modes decode each packed layout straight into RGB (alpha/pad byte dropped).
_PIL_RAW: dict[PixelFormat, str] = {
    PixelFormat.RGB: "RGB", PixelFormat.BGR: "BGR", PixelFormat.RGBA: "RGBX",
    PixelFormat.RGBX: "RGBX", PixelFormat.BGRA: "BGRX", PixelFormat.BGRX: "BGRX",
}


def availability() -> Availability:
    if importlib.util.find_spec("PIL") is None:
        return Availability(False, "Pillow is not installed (fix: pip install pillow)")
    return Availability.yes()


def encode_jpeg(frame: Frame, quality: int) -> bytes:
    """One JPEG for one frame (RGB, alpha dropped: JPEG has none)."""
    from PIL import Image

    fmt = frame.pixel_format
    if fmt is PixelFormat.UYVY:  # BT.709 limited range (NDI's convention), see frame_convert
        image = Image.fromarray(convert(frame.pixels, fmt, PixelFormat.RGB), "RGB")
    else:
        image = Image.frombuffer("RGB", (frame.width, frame.height), frame.pixels, "raw",
                                 _PIL_RAW[fmt], 0, 1)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_NO_TARGET = "no control target is attached to the http sink"
_NO_TARGET_FIX = ("the program that runs the sink must call attach_control(target); `sdbridge "
                  "serve` does it for http sinks with controls: true. Meanwhile: `sdbridge ctl set`")


class _LatestFrame:
    """The newest frame plus its lazily encoded JPEG; one lock, one condition."""

    def __init__(self, quality: int) -> None:
        self._quality = quality
        self._cond = threading.Condition()
        self._encode_lock = threading.Lock()
        self._frame: Frame | None = None
        self._seq = 0  # our own counter: frame.seq may repeat or restart
        self._jpeg: tuple[int, bytes] | None = None
        self.frames_encoded = 0
        self.closed = False

    def put(self, frame: Frame) -> None:
        with self._cond:
            self._frame = frame
            self._seq += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self.closed = False

    def wait_newer(self, seen: int, timeout: float) -> int:
        """Sequence of the newest frame once it is > ``seen`` (or ``seen`` on timeout/close)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seen or self.closed, timeout)
            return self._seq

    def jpeg(self) -> tuple[int, bytes] | None:
        """(seq, JPEG) of the newest frame, encoding it only if nobody has yet."""
        with self._encode_lock:
            with self._cond:
                seq, frame = self._seq, self._frame
            if frame is None:
                return None
            if self._jpeg is None or self._jpeg[0] != seq:
                self._jpeg = (seq, encode_jpeg(frame, self._quality))
                self.frames_encoded += 1
            return self._jpeg


class HttpPreviewSink(FrameSink):
    """Serve the newest output frame over HTTP (MJPEG, JPEG, OBS page, optional control form)."""

    kind = "http"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8090,
        allow_remote: bool = False,
        quality: int = 80,
        controls: bool = False,
        control: "ControlTarget | None" = None,
        max_clients: int = 16,
        title: str = "sdbridge",
    ) -> None:
        problems = []
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            problems.append(Problem("sink.port", port, "must be an integer 0..65535",
                                    "pick a free port, e.g. 8090 (0 = any free port)"))
        if not isinstance(quality, int) or not 1 <= quality <= 95:
            problems.append(Problem("sink.quality", quality, "must be an integer 1..95",
                                    "use 70-90 for a preview"))
        if not isinstance(max_clients, int) or max_clients < 1:
            problems.append(Problem("sink.max_clients", max_clients, "must be an integer >= 1",
                                    "use e.g. 16"))
        if not _is_loopback(host) and allow_remote is not True:
            problems.append(Problem("sink.host", host, "is not a loopback address",
                                    "use 127.0.0.1, or set sink.allow_remote: true to expose the "
                                    "preview (and control form) to your network"))
        if problems:
            raise ConfigError(problems, context="http sink")
        self.host, self.port, self.allow_remote = host, port, allow_remote
        self.controls, self.title, self.max_clients = controls, title, max_clients
        self._control = control
        self._latest = _LatestFrame(quality)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients = 0
        self._clients_lock = threading.Lock()

    # -- FrameSink ---------------------------------------------------------------------------

    def open(self) -> None:
        if self._server is not None:
            return
        handler = type("Handler", (_Handler,), {"sink": self})
        try:
            server = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as exc:
            raise TransportError(
                f"http sink cannot listen on {self.host}:{self.port}: {exc}",
                fix="pick another sink.port or stop the program using it") from exc
        server.daemon_threads = True
        self._latest.reopen()  # the daemon reopens a sink after a failure
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http-preview", daemon=True)
        self._thread.start()
        log.info("preview at %s", self.url)

    def send(self, frame: Frame) -> None:
        self._latest.put(frame)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._latest.close()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- public helpers ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def frames_encoded(self) -> int:
        return self._latest.frames_encoded

    @property
    def clients(self) -> int:
        return self._clients

    def attach_control(self, control: "ControlTarget") -> None:
        """Let the daemon inject its control target after building the sink from a preset."""
        self._control = control

    # -- used by the handler -----------------------------------------------------------------

    def _enter_stream(self) -> bool:
        with self._clients_lock:
            if self._clients >= self.max_clients:
                return False
            self._clients += 1
            return True

    def _leave_stream(self) -> None:
        with self._clients_lock:
            self._clients -= 1

    def _forward_set(self, changes: Any) -> dict[str, Any]:
        clean = validate_changes(changes)  # same all-or-nothing validation as the daemon
        if self._control is None:
            raise TransportError(_NO_TARGET, fix=_NO_TARGET_FIX)
        return self._control.set(clean)

    def _get_state(self) -> dict[str, Any]:
        if self._control is None:
            raise TransportError(_NO_TARGET, fix=_NO_TARGET_FIX)
        return self._control.get_state()


class _Handler(BaseHTTPRequestHandler):
    sink: HttpPreviewSink  # set on the per-sink subclass
    timeout = SOCKET_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    server_version = "sdbridge-preview"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page_html(self.sink.title).encode())
        elif path == "/frame.jpg":
            self._single_jpeg()
        elif path == "/stream.mjpg":
            self._stream()
        elif path == "/control" and self.sink.controls:
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", control_html(self.sink.title).encode())
        elif path == "/control/state" and self.sink.controls:
            self._json_call(self.sink._get_state)
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found: try / or /stream.mjpg\n")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/control/set" or not self.sink.controls:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
            return
        # JSON only: a cross-site form cannot send application/json without a CORS preflight,
        # which we never grant; the Host check stops DNS-rebinding pages on loopback.
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self._json_error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "bad_request",
                             "Content-Type must be application/json")
            return
        if not self.sink.allow_remote and not _is_loopback_host_header(self.headers.get("Host", "")):
            self._json_error(HTTPStatus.FORBIDDEN, "bad_request",
                             "Host header is not loopback (fix: open the page via 127.0.0.1)")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._json_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "bad_request",
                             f"Content-Length must be 0..{MAX_BODY_BYTES} bytes")
            return
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            self._json_error(HTTPStatus.BAD_REQUEST, "bad_request", f"body is not JSON: {exc}")
            return
        changes = body.get("changes") if isinstance(body, dict) else None
        self._json_call(lambda: self.sink._forward_set(changes))

    # -- responses ---------------------------------------------------------------------------

    def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json_call(self, call: Callable[[], dict[str, Any]]) -> None:
        try:
            result = call()
        except SdbridgeError as exc:
            status = HTTPStatus.BAD_REQUEST if isinstance(exc, ConfigError) else HTTPStatus.BAD_GATEWAY
            self._json_error(status, exc.code, str(exc))
            return
        self._send(HTTPStatus.OK, "application/json", json.dumps({"ok": True, "result": result}).encode())

    def _json_error(self, status: HTTPStatus, code: str, message: str) -> None:
        body = json.dumps({"ok": False, "error": {"code": code, "message": message}}).encode()
        self._send(status, "application/json", body)

    def _single_jpeg(self) -> None:
        latest = self.sink._latest.jpeg()
        if latest is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
            return
        self._send(HTTPStatus.OK, "image/jpeg", latest[1])

    def _stream(self) -> None:
        if not self.sink._enter_stream():
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain",
                       f"too many viewers (max_clients={self.sink.max_clients})\n".encode())
            return
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self._stream_parts()
        except (ConnectionError, TimeoutError) as exc:
            log.debug("preview client %s left: %s", self.address_string(), exc)
        finally:
            self.sink._leave_stream()

    def _stream_parts(self) -> None:
        latest, sent = self.sink._latest, 0
        while not latest.closed:
            if latest.wait_newer(sent, CLIENT_WAIT_S) <= sent:
                continue
            seq_jpeg = latest.jpeg()
            if seq_jpeg is None:
                continue
            sent, jpeg = seq_jpeg
            head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n").encode()
            self.wfile.write(head + jpeg + b"\r\n")
            self.wfile.flush()


def _is_loopback_host_header(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return _is_loopback(name.strip("[]"))


# -- pages ---------------------------------------------------------------------------------------

def page_html(title: str) -> str:
    """Black page, image scaled to fit, no scrollbars; reconnects if the daemon restarts."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>html,body{{margin:0;padding:0;width:100%;height:100%;background:#000;overflow:hidden}}
img{{display:block;width:100vw;height:100vh;object-fit:contain}}</style></head>
<body><img id="out" alt="" src="/stream.mjpg">
<script>
const img = document.getElementById("out");
img.onerror = () => setTimeout(() => {{ img.src = "/stream.mjpg?t=" + Date.now(); }}, 1000);
</script></body></html>
"""


def form_fields(params: tuple[ParamSpec, ...] = PARAMS) -> list[dict[str, Any]]:
    """Describe one form input per live parameter (the schema is the only source)."""
    fields = []
    for spec in params:
        if not spec.live:
            continue
        field: dict[str, Any] = {"name": spec.name, "type": spec.type, "label": spec.name,
                                 "help": spec.description}
        if spec.type in ("float", "int"):
            field["min"], field["max"] = spec.minimum, spec.maximum
            field["step"] = 1 if spec.type == "int" else _float_step(spec)
        fields.append(field)
    return fields


def _float_step(spec: ParamSpec) -> float:
    span = (spec.maximum or 1.0) - (spec.minimum or 0.0)
    return 0.0001 if span < 1.0 else 0.01


def _field_html(field: dict[str, Any]) -> str:
    name = html.escape(field["name"])
    kind = field["type"]
    if kind == "prompt":
        control = f'<textarea name="{name}" rows="2"></textarea>'
    elif kind == "bool":
        control = f'<input type="checkbox" name="{name}">'
    elif kind in ("float", "int"):
        bounds = "".join(f' {k}="{field[k]}"' for k in ("min", "max", "step") if field[k] is not None)
        control = f'<input type="number" name="{name}"{bounds}>'
    elif kind == "seed":
        control = f'<input type="text" name="{name}" inputmode="numeric">'
    else:  # str, int_list
        control = f'<input type="text" name="{name}">'
    return (f'<label title="{html.escape(field["help"])}"><span>{name}</span>{control}</label>')


def control_html(title: str) -> str:
    fields = form_fields()
    rows = "\n".join(_field_html(f) for f in fields)
    types = json.dumps({f["name"]: f["type"] for f in fields})
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)} control</title>
<style>body{{font:14px sans-serif;background:#111;color:#ddd;max-width:40em;margin:1em auto}}
label{{display:grid;grid-template-columns:12em 1fr;margin:.3em 0}} textarea,input{{width:100%}}
input[type=checkbox]{{width:auto}} #status{{white-space:pre-wrap;margin-top:1em}}
.err{{color:#f66}} .ok{{color:#6f6}}</style></head>
<body><h3>{html.escape(title)}</h3><form id="f">{rows}
<button type="submit">Apply</button></form><div id="status"></div>
<script>
const TYPES = {types};
const form = document.getElementById("f"), status = document.getElementById("status");
let initial = {{}};
function show(text, ok) {{ status.textContent = text; status.className = ok ? "ok" : "err"; }}
function read(el, type) {{
  if (type === "bool") return el.checked;
  if (type === "float") return parseFloat(el.value);
  if (type === "int") return parseInt(el.value, 10);
  if (type === "int_list") return el.value.split(",").map(s => parseInt(s.trim(), 10));
  if (el.value.trim().startsWith("[")) {{ try {{ return JSON.parse(el.value); }} catch (e) {{}} }}
  if (type === "seed") return parseInt(el.value, 10);
  return el.value;
}}
function fill(params) {{
  for (const [name, type] of Object.entries(TYPES)) {{
    const el = form.elements[name], v = params[name];
    if (!el || v === undefined) continue;
    if (type === "bool") el.checked = !!v;
    else if (Array.isArray(v)) el.value = type === "int_list" ? v.join(",") : JSON.stringify(v);
    else el.value = v;
    initial[name] = JSON.stringify(read(el, type));
  }}
}}
fetch("/control/state").then(r => r.json()).then(r => {{
  if (r.ok) fill(r.result.params || r.result); else show(r.error.message, false);
}});
form.addEventListener("submit", async (ev) => {{
  ev.preventDefault();
  const changes = {{}};
  for (const [name, type] of Object.entries(TYPES)) {{
    const el = form.elements[name], v = read(el, type);
    if (JSON.stringify(v) !== initial[name]) changes[name] = v;
  }}
  const r = await (await fetch("/control/set", {{method: "POST",
    headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{changes}})}})).json();
  if (r.ok) {{ for (const n in changes) initial[n] = JSON.stringify(changes[n]);
               show("applied: " + Object.keys(changes).join(", "), true); }}
  else show(r.error.code + ": " + r.error.message, false);
}});
</script></body></html>
"""
