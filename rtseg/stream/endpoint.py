"""ZeroMQ endpoints checked before use: libzmq accepts some bad ones silently (a TCP port above
65535 wraps around modulo 65536 and binds elsewhere) and reports others as a bare EINVAL."""

from __future__ import annotations

from ..errors import ConfigError

TRANSPORTS = ("tcp", "ipc", "inproc")


def check_endpoint(endpoint: str, *, bind: bool) -> str:
    """``endpoint`` unchanged when it is TRANSPORT://ADDRESS with a usable address, else ConfigError.

    TCP needs HOST:PORT with a port in 1..65535; ``*`` as the port (any free one) only when binding.
    """
    transport, sep, address = endpoint.partition("://")
    if not sep or transport not in TRANSPORTS:
        raise ConfigError(
            f"ZeroMQ endpoint {endpoint!r}: expected TRANSPORT://ADDRESS with transport "
            f"{', '.join(TRANSPORTS)}, such as tcp://127.0.0.1:5555"
        )
    if not address:
        raise ConfigError(f"ZeroMQ endpoint {endpoint!r}: the address after {transport}:// is empty")
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
