"""Why a network source did not open: the HTTP answer, a refused connection, a host name with no
address. FFmpeg says only that it could not open a URL; these ask the network themselves, within
what is left of the caller's timeout, so the error names the cause.
"""

from __future__ import annotations

import base64
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from .base import MIN_TIMEOUT_S, timeout_ms

# Content types a stream FFmpeg can read is served with never start with these.
_NOT_VIDEO = ("text/", "application/json", "application/xml", "application/xhtml")


def http_problem(url: str, timeout: float) -> str | None:
    """Why an HTTP(S) URL FFmpeg could not open is not a stream, from its status and content type,
    or that the connection was refused.

    None when the answer looks like a stream or the URL cannot be asked (then the caller's generic
    hint stands). Only the response head is read; the body, perhaps an endless stream, is not.
    ``timeout`` is what the caller has left of its own (see ``time_left``): a full one more on a
    silent server doubled the wait the user asked for."""
    timeout_ms(timeout)  # the range FFmpeg takes; urllib raises OverflowError for inf, not an answer
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed host or port: nothing to ask (open_source refuses these first)
        return None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)))
    if parts.username is not None:
        token = f"{parts.username}:{parts.password or ''}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode("ascii"))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            kind = response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"the server answered HTTP {exc.code} {exc.reason}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if isinstance(getattr(exc, "reason", exc), socket.gaierror):
            return unresolved(host, getattr(exc, "reason", exc))
        if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
            default = 443 if parts.scheme.lower() == "https" else 80
            where = netloc if port is not None else f"{netloc}:{default}"
            return f"the connection to {where} was refused: is the server running, on that port?"
        return None
    if kind.startswith(_NOT_VIDEO):
        return f"the server answered with {kind} (a web page or document?), not a video stream"
    return None


def unresolved(host: str, error: socket.gaierror) -> str:
    """The diagnosis of a host name that has no address: a typo in a camera's name is common, and
    "nothing answered ... within 10 s" sent users looking for a server that is down."""
    return (
        f"the host name {host} does not resolve ({error.strerror}): check its spelling, or the "
        "network's name service (DNS)"
    )


def host_problem(url: str, timeout: float) -> str | None:
    """``unresolved`` when the URL's host name has no address, found within ``timeout`` seconds
    (the lookup runs on a worker: getaddrinfo takes no timeout); None otherwise."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return None
    if not host:
        return None
    found: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            found.append(None)
        except OSError as exc:
            found.append(exc)

    worker = threading.Thread(target=lookup, name="rtseg-resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    error = found[0] if found else None
    return unresolved(host, error) if isinstance(error, socket.gaierror) else None


def time_left(timeout: float, started: float) -> float | None:
    """What is left of ``timeout`` seconds counted from ``started`` (a perf_counter time) for a
    diagnosis such as ``http_problem``; None when less than the 1 ms FFmpeg's timeouts take."""
    left = timeout - (time.perf_counter() - started)
    return left if left >= MIN_TIMEOUT_S else None
