"""ZeroMQ endpoints checked before use, and the one way the streaming classes open their sockets.

libzmq accepts some bad endpoints silently (a TCP port above 65535 wraps around modulo 65536 and
binds elsewhere) and reports others as a bare EINVAL. ``Publisher``, ``Subscriber``, ``Server`` and
``Client`` all take an endpoint as ``endpoint_of`` reads it (``zmq://`` in front or not) and open
their socket with ``open_socket``, so that a bad or busy endpoint fails the same way in each.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Sequence

import zmq

from ..errors import ConfigError, InputTypeError
from .curve import CurveServer, apply_client_keys
from .protocol import use_ipv6

TRANSPORTS = ("tcp", "ipc", "inproc")
# The defaults of each pair agree: Publisher() and Subscriber() find each other, as do
# Server(engine) and Client().
DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_SERVER_ENDPOINT = "tcp://127.0.0.1:5560"
URI_PREFIX = "zmq://"


def endpoint_of(
    endpoint: object,
    *,
    bind: bool,
    who: str,
    name: str = "endpoint",
    options_hint: str = "",
    example: str = DEFAULT_PUB_ENDPOINT,
) -> str:
    """The ZeroMQ endpoint ``endpoint`` names, checked (``check_endpoint``): TRANSPORT://ADDRESS,
    or the same with ``zmq://`` in front, as rtseg's sink URIs and ``rtseg view`` write it.

    ``who`` names the taker in errors ("a subscriber"), ``name`` its parameter, ``example`` its
    default endpoint. A query (``?parts=labels``) is refused: only the ``zmq://`` sink URI takes
    options there (``options_hint`` says where they go instead).
    """
    if not isinstance(endpoint, str):
        raise InputTypeError(
            f"{name} must be a string such as {example} (or zmq://{example}), "
            f"got {endpoint!r} ({type(endpoint).__name__})"
        )
    text = endpoint[len(URI_PREFIX) :] if endpoint.startswith(URI_PREFIX) else endpoint
    if "?" in text:
        raise ConfigError(
            f"{name} {endpoint!r} has options ({text[text.index('?') :]}); {who} takes none"
            + (f": {options_hint}" if options_hint else "")
        )
    if text.startswith("inproc://"):
        raise ConfigError(
            f"{name} {endpoint!r}: inproc:// connects only the sockets of one ZeroMQ context, and each "
            "rtseg Publisher, Subscriber, Client and Server has its own, so nothing would ever arrive; "
            "use ipc:///PATH (or tcp://127.0.0.1:PORT) within one machine"
        )
    return check_endpoint(text, bind=bind)


def open_socket(
    context: zmq.Context,
    kind: int,
    endpoint: str,
    *,
    bind: bool,
    doing: str,
    linger_ms: int = 0,
    options: Sequence[tuple[int, int | bytes]] = (),
    curve_keys: str | os.PathLike[str] | None = None,
    term_on_failure: bool = False,
) -> tuple[zmq.Socket, CurveServer | None]:
    """A ``kind`` socket of ``context`` bound to (``bind``) or connected to ``endpoint`` (checked by
    ``endpoint_of``), with ZMQ_IPV6 as the endpoint needs, ZMQ_LINGER ``linger_ms``, the socket
    ``options`` in order, and CurveZMQ from ``curve_keys``: as the server side when binding
    (a ``CurveServer``, returned: close it with the socket), as a client when connecting.

    On failure nothing is left open: the socket and the CurveServer are closed, and the context
    terminated too with ``term_on_failure`` (one made for this socket alone). libzmq's refusal to
    bind or connect (a port in use, an address no interface has) is a ConfigError naming the
    endpoint: "cannot {doing} {endpoint}: ..."."""
    sock = context.socket(kind)
    curve: CurveServer | None = None
    try:
        if curve_keys is not None and not isinstance(curve_keys, (str, os.PathLike)):
            raise ConfigError(f"curve_keys must be None or a key folder path, got {curve_keys!r}")
        use_ipv6(sock, endpoint)
        sock.setsockopt(zmq.LINGER, linger_ms)
        for option, value in options:
            sock.setsockopt(option, value)
        if curve_keys is not None and bind:
            curve = CurveServer(curve_keys, context)
            curve.apply(sock)
        elif curve_keys is not None:
            apply_client_keys(sock, curve_keys)
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except BaseException as exc:
        sock.close(linger=0)
        if curve is not None:
            curve.close()
        if term_on_failure:
            context.term()
        if isinstance(exc, zmq.ZMQError):
            raise ConfigError(f"cannot {doing} {endpoint}: {exc}") from None
        raise
    return sock, curve


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
