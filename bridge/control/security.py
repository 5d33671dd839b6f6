"""Who may talk to the control sockets: loopback by default, else CURVE keys or a token.

Rules (enforced before anything binds):

* ``tcp://127.x.x.x``, ``tcp://localhost``, ``tcp://[::1]``, ``ipc://`` and ``inproc://`` are
  local: allowed without authentication.
* Any other endpoint (``tcp://*:5555``, ``tcp://0.0.0.0:…``, a LAN address, an interface name)
  requires ``allow_remote: true`` **and** authentication: CURVE (server secret key file +
  a directory of allowed client public keys, checked by ``zmq.auth``) and/or a shared token
  that every request carries. CURVE also encrypts and protects the event socket; a token
  protects commands only (events stay readable by anyone who can reach the port).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from bridge.errors import ConfigError, Problem, RuntimeMissingError

_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\*|\d+)$")
MIN_TOKEN_LENGTH = 16


def endpoint_is_local(endpoint: str) -> bool:
    """True when only processes on this machine can reach ``endpoint``."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    match = _TCP.match(endpoint)
    if not match:
        return False
    host = match.group("host").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a DNS name: not provably local
        return False


def endpoint_problem(field: str, endpoint: object) -> Problem | None:
    if isinstance(endpoint, str) and (_TCP.match(endpoint)
                                      or endpoint.startswith(("ipc://", "inproc://"))):
        return None
    return Problem(field, endpoint, "not a ZeroMQ endpoint",
                   "use tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555) or ipc://PATH")


@dataclass(frozen=True)
class CurveServerKeys:
    public: bytes
    secret: bytes
    authorized_dir: Path


@dataclass(frozen=True)
class Security:
    """Validated security settings for one ControlServer."""

    allow_remote: bool = False
    curve: CurveServerKeys | None = None
    token: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.curve is not None or self.token is not None


def build_security(endpoints: dict[str, str], *, allow_remote: bool = False,
                   curve_secret_key_file: str | Path | None = None,
                   curve_authorized_keys_dir: str | Path | None = None,
                   token: str | None = None) -> Security:
    """Check the whole security configuration at once; raise ConfigError listing problems."""
    problems = [p for f, e in endpoints.items() if (p := endpoint_problem(f, e)) is not None]
    if token is not None and (not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH):
        problems.append(Problem("token", "<hidden>", f"must be a string of at least "
                                f"{MIN_TOKEN_LENGTH} characters",
                                "generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))'"))
    curve = None
    if (curve_secret_key_file is None) != (curve_authorized_keys_dir is None):
        problems.append(Problem("curve_secret_key_file / curve_authorized_keys_dir",
                                (curve_secret_key_file, curve_authorized_keys_dir),
                                "CURVE needs both the server secret key and the client keys dir",
                                "set both (create keys with: sdbridge ctl keygen NAME --dir DIR)"))
    elif curve_secret_key_file is not None and curve_authorized_keys_dir is not None:
        curve = _load_curve(Path(curve_secret_key_file), Path(curve_authorized_keys_dir), problems)
    remote = [f for f, e in endpoints.items()
              if endpoint_problem(f, e) is None and not endpoint_is_local(e)]
    for field in remote:
        if not allow_remote:
            problems.append(Problem(field, endpoints[field], "not a loopback address",
                                    "bind tcp://127.0.0.1:PORT, or set allow_remote: true with "
                                    "CURVE keys or a token (see docs/control-protocol.md)"))
        elif curve is None and token is None:
            problems.append(Problem(field, endpoints[field],
                                    "remote access without authentication is refused",
                                    "configure CURVE keys (curve_secret_key_file + "
                                    "curve_authorized_keys_dir) or a token"))
    if problems:
        raise ConfigError(problems, context="control security")
    return Security(allow_remote=allow_remote, curve=curve, token=token)


def _load_curve(secret_file: Path, keys_dir: Path, problems: list[Problem]) -> CurveServerKeys | None:
    if not zmq.has("curve"):
        raise RuntimeMissingError("this libzmq was built without CURVE support",
                                  fix="pip install --force-reinstall pyzmq (wheels include CURVE)")
    if not keys_dir.is_dir() or not any(keys_dir.glob("*.key")):
        problems.append(Problem("curve_authorized_keys_dir", str(keys_dir),
                                "not a directory with client public keys (*.key)",
                                "copy each client's NAME.key (public) file into this directory"))
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        problems.append(Problem("curve_secret_key_file", str(secret_file), str(exc),
                                "point to the server's NAME.key_secret file"))
        return None
    if secret is None:
        problems.append(Problem("curve_secret_key_file", str(secret_file),
                                "file has no secret key (that is the public .key file)",
                                "use the NAME.key_secret file"))
        return None
    return CurveServerKeys(public=public, secret=secret, authorized_dir=keys_dir)


def apply_server_curve(socket: zmq.Socket, keys: CurveServerKeys) -> None:
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def apply_client_curve(socket: zmq.Socket, server_public_key_file: str | Path,
                       client_secret_key_file: str | Path) -> None:
    """Configure a client socket for a CURVE server (keys in zmq.auth certificate files)."""
    try:
        server_public, _ = zmq.auth.load_certificate(server_public_key_file)
        client_public, client_secret = zmq.auth.load_certificate(client_secret_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(Problem("curve keys", f"{server_public_key_file}, {client_secret_key_file}",
                                  str(exc), "pass the server's .key and this client's .key_secret")) from exc
    if client_secret is None:
        raise ConfigError(Problem("client_secret_key_file", str(client_secret_key_file),
                                  "file has no secret key", "use this client's NAME.key_secret"))
    socket.curve_serverkey = server_public
    socket.curve_publickey = client_public
    socket.curve_secretkey = client_secret
