"""ZeroMQ endpoints checked before use: libzmq accepts some bad ones silently (a TCP port above
65535 wraps around modulo 65536 and binds elsewhere) and reports others as a bare EINVAL."""

from __future__ import annotations

import errno
import os
import socket
import stat

from ..errors import ConfigError

TRANSPORTS = ("tcp", "ipc", "inproc")


def check_endpoint(endpoint: str, *, bind: bool) -> str:
    """``endpoint`` unchanged when it is TRANSPORT://ADDRESS with a usable address, else ConfigError.

    TCP needs HOST:PORT with a port in 1..65535; ``*`` as the port (any free one) only when binding.
    Binding IPC needs a path that is free or an old socket nothing listens on: libzmq deletes
    whatever is there first, a live server's or publisher's socket included.
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
    """Refuse to bind over a file that is not a socket (a video, the source being read) or over a
    socket a live process listens on: libzmq unlinks the path before binding, silently, and the
    live server or publisher there lost every new client to the newcomer. An abstract socket
    (@name) and ``*`` (a fresh temporary name) have no file to lose."""
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
    if _listening(endpoint, path):
        raise ConfigError(
            f"{endpoint} is in use by another process (a live server/publisher is bound there): "
            "binding would take it over, as libzmq removes the path first; stop that process or "
            "name another path"
        )


def _listening(endpoint: str, path: str) -> bool:
    """Whether something accepts connections on the socket file ``path``: a connect succeeds (or
    finds the backlog full) when a process listens there, and is refused when the file is left over
    from one that ended without unbinding."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)  # a full backlog makes a blocking connect wait
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # stale (or removed meanwhile): free to bind
    except (TimeoutError, BlockingIOError):
        return True  # a listener with a full backlog
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        raise ConfigError(
            f"ZeroMQ endpoint {endpoint!r}: cannot check whether {path} is in use: {exc.strerror or exc}"
        ) from None
    finally:
        probe.close()
    return True
