"""ZeroMQ endpoints checked before use: libzmq accepts some bad ones silently (a TCP port above
65535 wraps around modulo 65536 and binds elsewhere) and reports others as a bare EINVAL."""

from __future__ import annotations

import os
import stat

from ..errors import ConfigError

TRANSPORTS = ("tcp", "ipc", "inproc")


def check_endpoint(endpoint: str, *, bind: bool) -> str:
    """``endpoint`` unchanged when it is TRANSPORT://ADDRESS with a usable address, else ConfigError.

    TCP needs HOST:PORT with a port in 1..65535; ``*`` as the port (any free one) only when binding.
    Binding IPC needs a path that is free or an old socket: libzmq deletes whatever is there first.
    """
    transport, sep, address = endpoint.partition("://")
    if not sep or transport not in TRANSPORTS:
        raise ConfigError(
            f"ZeroMQ endpoint {endpoint!r}: expected TRANSPORT://ADDRESS with transport "
            f"{', '.join(TRANSPORTS)}, such as tcp://127.0.0.1:5555"
        )
    if not address:
        raise ConfigError(f"ZeroMQ endpoint {endpoint!r}: the address after {transport}:// is empty")
    if transport == "ipc" and bind:
        _check_ipc_path(endpoint, address)
    if transport != "tcp":
        return endpoint
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        raise ConfigError(
            f"ZeroMQ endpoint {endpoint!r}: a tcp address needs HOST:PORT, such as tcp://127.0.0.1:5555"
        )
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(f"ZeroMQ endpoint {endpoint!r}: write an IPv6 host in brackets, tcp://[::1]:5555")
    if port == "*":
        if not bind:
            raise ConfigError(f"ZeroMQ endpoint {endpoint!r}: connecting needs a port number, not '*'")
        return endpoint
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"ZeroMQ endpoint {endpoint!r}: the port must be in 1..65535, got {port!r}")
    return endpoint


def _check_ipc_path(endpoint: str, path: str) -> None:
    """Refuse to bind over a file that is not a socket (a video, the source being read): libzmq
    unlinks the path before binding, silently. An abstract socket (@name) and ``*`` (a fresh
    temporary name) have no file to lose."""
    if path.startswith("@") or path == "*":
        return
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(
            f"ZeroMQ endpoint {endpoint!r}: cannot check {path}: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISSOCK(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a link" if stat.S_ISLNK(mode) else "a file"
        raise ConfigError(
            f"ZeroMQ endpoint {endpoint!r}: {path} is {kind}, not a socket, and binding would delete "
            "it (libzmq removes the path first); name a new path"
        )
