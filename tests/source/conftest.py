"""Videos made on the fly for source tests: written from the synthetic scene, so no data is needed."""

from __future__ import annotations

import contextlib
import http.server
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.source.synthetic import DriveParams, DriveScene

FRAMES = 24
SIZE = (160, 96)


@contextlib.contextmanager
def _serve_http(handler: type[http.server.BaseHTTPRequestHandler] | object) -> Iterator[str]:
    """A local web server with ``handler`` on a free port, on its own thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def serve_http():  # type: ignore[no-untyped-def]
    """``with serve_http(handler) as base_url:`` a local web server for the tests that need one."""
    return _serve_http


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The base URL of a server that accepts connections and never answers (a hung server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:  # closed: the test is over
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        with contextlib.suppress(OSError):  # wakes the accept(), which a close() does not
            socket.create_connection(listener.getsockname(), timeout=1).close()
        listener.close()
        for conn in held:
            conn.close()
        thread.join(5)


def write_video(path: Path, frames: int = FRAMES, size: tuple[int, int] = SIZE, fourcc: str = "mp4v") -> list:
    scene = DriveScene(DriveParams(size=size, fps=25.0, seed=3))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, size)
    assert writer.isOpened()
    images = [scene.render(t) for t in range(frames)]
    for image in images:
        writer.write(image)
    writer.release()
    return images


def _boxes(buf: bytes | bytearray, start: int, end: int):
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[off : off + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", buf[off + 8 : off + 16])[0], 16
        elif size == 0:
            size = end - off
        yield kind, off, size, header
        off += size


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def _shift_chunk_offsets(buf: bytearray, start: int, end: int, delta: int) -> None:
    for kind, off, size, header in _boxes(buf, start, end):
        if kind in _CONTAINERS:
            _shift_chunk_offsets(buf, off + header, off + size, delta)
        elif kind in (b"stco", b"co64"):
            width, fmt = (4, ">I") if kind == b"stco" else (8, ">Q")
            count = struct.unpack(">I", buf[off + 12 : off + 16])[0]
            for i in range(count):
                p = off + 16 + width * i
                buf[p : p + width] = struct.pack(fmt, struct.unpack(fmt, buf[p : p + width])[0] + delta)


def faststart(data: bytes) -> bytes:
    """The same mp4 with its index (moov) moved before the media data, as streaming encoders write it."""
    boxes = list(_boxes(data, 0, len(data)))
    kinds = [b[0] for b in boxes]
    assert kinds.index(b"moov") > kinds.index(b"mdat"), kinds
    _, off, size, _ = boxes[kinds.index(b"moov")]
    moov = bytearray(data[off : off + size])
    _shift_chunk_offsets(moov, 0, len(moov), len(moov))
    parts = [data[o : o + s] for k, o, s, _ in boxes if k not in (b"moov", b"ftyp")]
    ftyp = next(data[o : o + s] for k, o, s, _ in boxes if k == b"ftyp")
    return ftyp + bytes(moov) + b"".join(parts)


def variable_frame_rate(data: bytes, slow_from: int) -> bytes:
    """The same mp4 (one track, moov after mdat, as OpenCV writes it) with the frames from
    ``slow_from`` on lasting three times as long: its time-to-sample table (stts) rewritten."""
    buf = bytearray(data)
    chain: list[tuple[int, int, int]] = []  # (offset, size, header) of the boxes down to stts

    def find(start: int, end: int) -> bool:
        for kind, off, size, header in _boxes(buf, start, end):
            if kind == b"stts" or (kind in _CONTAINERS and find(off + header, off + size)):
                chain.insert(0, (off, size, header))
                return True
        return False

    assert find(0, len(buf))
    off, size, _ = chain[-1]
    (count,) = struct.unpack(">I", buf[off + 12 : off + 16])
    assert count == 1, "a constant frame rate: one stts entry"
    frames, delta = struct.unpack(">II", buf[off + 16 : off + 24])
    entries = [(slow_from, delta), (frames - slow_from, 3 * delta)]
    body = struct.pack(">I", 0) + struct.pack(">I", 2) + b"".join(struct.pack(">II", *e) for e in entries)
    grow = 8 + len(body) - size
    buf[off : off + size] = struct.pack(">I4s", 8 + len(body), b"stts") + body
    for parent, parent_size, _ in chain[:-1]:  # every box around it grows by as much
        buf[parent : parent + 4] = struct.pack(">I", parent_size + grow)
    # The durations (movie, track, media, edit list) grow as the frames do: FFmpeg ends the
    # track at its edit list's end.
    longer = (slow_from + 3 * (frames - slow_from), frames)
    where = {b"mvhd": 24, b"mdhd": 24, b"tkhd": 28, b"elst": 16}  # version 0 boxes

    def stretch(start: int, end: int) -> None:
        for kind, off, size, header in _boxes(buf, start, end):
            if kind in _CONTAINERS:
                stretch(off + header, off + size)
            elif kind in where:
                assert buf[off + 8] == 0, f"a version 0 {kind!r}"
                p = off + where[kind]
                (old,) = struct.unpack(">I", buf[p : p + 4])
                buf[p : p + 4] = struct.pack(">I", old * longer[0] // longer[1])

    stretch(0, len(buf))
    return bytes(buf)


@pytest.fixture(scope="session")
def vfr_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    """A 12-frame mp4, frames 0-5 40 ms apart and the rest 120 ms apart (its container says
    12.5 fps, the average), and each frame's time in seconds."""
    folder = tmp_path_factory.mktemp("vfr")
    write_video(folder / "cfr.mp4", frames=12)
    path = folder / "vfr.mp4"
    path.write_bytes(variable_frame_rate((folder / "cfr.mp4").read_bytes(), slow_from=6))
    return path, [0.04 * i for i in range(7)] + [0.24 + 0.12 * i for i in range(1, 6)]


@pytest.fixture(scope="session")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A 24-frame 160x96 mp4 at 25 fps and the images written into it."""
    path = tmp_path_factory.mktemp("video") / "drive.mp4"
    return path, write_video(path)


@pytest.fixture(scope="session")
def make_faststart():
    return faststart


@pytest.fixture(scope="session")
def one_frame_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-frame 160x96 mp4 at 25 fps (a still clip, as a loop source)."""
    path = tmp_path_factory.mktemp("video") / "one.mp4"
    write_video(path, frames=1)
    return path


class Interrupted(BaseException):
    """What a signal handler raises (KeyboardInterrupt for Ctrl-C, Terminated for rtseg's SIGTERM)."""


@pytest.fixture
def interrupt_in() -> Iterator[Callable[[float], None]]:
    """``interrupt_in(seconds)``: a SIGALRM handler raises ``interrupt_in.error`` (Interrupted)
    that many seconds later, on the main thread, as Ctrl-C's does; the handler is put back after."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    def arm(seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    arm.error = Interrupted  # type: ignore[attr-defined]
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        yield arm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
