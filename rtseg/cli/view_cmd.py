"""`rtseg view`: watch a zmq:// result stream in a window, or headless: record it or print stats."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, InputTypeError, SinkError, StreamTimeout
from ..overlay.annotate import colorize
from ..signals import restore, take
from ..sink import Packet, Sink, open_sink
from ..sink.file import VIDEO_FOURCC
from ..source.frame import Frame
from ..stream.protocol import DEFAULT_MAX_PIXELS, STREAM_ID_RULE, is_stream_id
from ..stream.subscriber import Message, Subscriber
from ..window import RecentSamples
from .common import Terminated, positive_float, positive_int

_WINDOW = "rtseg view"
DEFAULT_OUT_FPS = 30.0  # an --out video's frame rate unless --fps says


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view",
        help="show or record a zmq:// result stream",
        description="Subscribe to an rtseg publisher and show its frames; reports end-to-end latency "
        "from the header timestamps (capture -> receipt).",
    )
    p.add_argument(
        "endpoint",
        help="the publisher's endpoint, e.g. zmq://tcp://127.0.0.1:5555 (zmq:// may be left out)",
    )
    p.add_argument("--headless", action="store_true", help="no window: write --out, else print stats")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="with --headless: record to a file output as `rtseg run` writes it, a video (.mp4/.avi) or an "
        "image pattern (out/%%06d.png); a path without a suffix is a folder of PNGs (DIR/%%06d.png)",
    )
    p.add_argument("--frames", type=positive_int, default=None, help="stop after N messages")
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        help="give up when no message arrives for this many seconds (default 10)",
    )
    p.add_argument(
        "--topic",
        action="append",
        default=None,
        type=_stream_id,
        help="a stream id to receive, exactly (cam1 is not cam10); repeat for more (default: all)",
    )
    p.add_argument(
        "--part",
        choices=["auto", "overlay", "labels", "frame"],
        default="auto",
        help="what to show: the overlay, the colourised labels or the raw frame (auto: overlay "
        "if sent, else labels)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="process the messages in order instead of only the newest; a viewer slower than "
        "the publisher still misses some once the few messages queued for it (the publisher's "
        "hwm and the viewer's own) are full, counted as gaps",
    )
    p.add_argument(
        "--fps",
        type=positive_float,
        default=None,
        help="frame rate of an --out video (default 30); without --all each image is held until the next one "
        "arrives, so the video lasts as long as the recording (with --all: each image once)",
    )
    p.add_argument("--curve-keys", type=Path, default=None, help="CurveZMQ client keys folder")
    p.set_defaults(func=run)


def _stream_id(text: str) -> str:
    if not is_stream_id(text):
        raise argparse.ArgumentTypeError(f"expected a stream id ({STREAM_ID_RULE}), got {text!r}")
    return text


def _draw_size(image_shape: tuple[int, ...], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) to colour labels at: the source frame's ``image_shape``, scaled down (aspect
    kept) to at most ``max_pixels``. The header's size is only metadata, not checked against the
    pixel limit (a 24 MP camera's stream is readable), and a publisher may claim any size: drawn
    as it is, a claim of 10^6 x 10^6 would allocate terabytes."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if h * w <= max_pixels:
        return w, h
    scale = math.sqrt(max_pixels / (h * w))
    nh = max(1, int(h * scale))
    nw = max(1, min(int(w * scale), max_pixels // nh))
    return nw, nh


def _image_of(message: Message, part: str) -> np.ndarray | None:
    if part in ("auto", "overlay") and message.overlay is not None:
        return message.overlay
    if part in ("auto", "labels") and message.labels is not None:
        if message.classes is None:
            return None  # the palette arrives with the class set, at most classes_every frames later
        return colorize(message.labels, message.classes, _draw_size(message.header.image_shape))
    if part == "frame":
        return message.frame
    return None


@dataclass(eq=False)
class _Shown(Packet):
    """What ``--out`` hands its file sink: the image view shows (the publisher's overlay, the
    labels coloured, or the frame), already drawn, as the packet's frame; ``overlay()`` is that
    image, so the sink draws nothing on it. A message need not carry labels (an overlay-only
    stream), so there is no SegResult to give: ``result`` is None, and the file sink, writing
    ``overlay()``, never reads it."""

    def __post_init__(self) -> None:  # Packet's own checks want a SegResult
        if not isinstance(self.frame, Frame):
            raise InputTypeError(f"_Shown.frame must be a Frame, got {type(self.frame).__name__}")

    def overlay(self) -> np.ndarray:
        return self.frame.image


def _out_uri(out: Path) -> str:
    """``--out`` as a file sink path. A path without a suffix (and no frame number field) is a
    folder of numbered PNGs, as ``rtseg view`` documents it; the file sink cannot tell a format
    from it (``rtseg run`` refuses it), so it is given as that folder's pattern, DIR/%06d.png."""
    if out.suffix == "" and "%" not in out.name:
        return str(out / "%06d.png")
    return str(out)


def _open_out(out: Path, fps: float, *, timed: bool) -> Sink:
    """The file sink ``--out`` writes through: the file sink's rules for the path (those of
    ``rtseg run``), its checks before the first message, and the encoding and writing on its own
    thread, not on the receive loop. ``timed``: a video holds each image until the next one's
    receipt time (at ``fps``), as the file sink does behind a live source; receiving only the
    newest message skips some, and written once each they made a video that played too fast.
    Every image is written (policy "block"), and a video fits an image of another size to its
    first (the stream's size may change: another publisher, --part auto)."""
    uri = _out_uri(out)
    try:
        return open_sink(uri, fps=fps, timed=timed, policy="block", fit=True)
    except SinkError as exc:  # said of the option: "--out PATH: ..."
        raise SinkError(f"--out {out}: {str(exc).removeprefix(f'{uri}: ')}") from None


def _sink_failure(text: str) -> SinkError:
    """A SinkStats error text ("SinkError: ...") as the SinkError to raise after the summary."""
    prefix = f"{SinkError.__name__}: "
    return SinkError(text.removeprefix(prefix))


def _open_window() -> None:
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise ConfigError(
            "cannot open a window: no display ($DISPLAY is not set); use --headless "
            "(with --out FILE to record the stream)"
        )
    try:
        cv2.namedWindow(_WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise ConfigError(
            "cannot open a window: this OpenCV build has no GUI support (opencv-python-headless); use "
            "--headless, or `pip uninstall opencv-python-headless && pip install opencv-python`"
        ) from None


@contextmanager
def _raise_on_sigterm() -> Iterator[None]:
    """SIGTERM (docker stop, systemd, ROS launch) stops the viewer cleanly; a second one is not
    caught."""

    def stop(signum: int, _frame: object) -> None:
        restore(signal.SIGTERM, previous)
        raise Terminated

    previous = take(signal.SIGTERM, stop)
    try:
        yield
    finally:
        restore(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    if args.out is not None and not args.headless:
        raise ConfigError("--out records in headless mode: add --headless")
    if args.fps is not None and (args.out is None or args.out.suffix.lower() not in VIDEO_FOURCC):
        # It did nothing there, silently: the window and the printed stats have no frame rate.
        recorded = "nothing is recorded" if args.out is None else f"{args.out} is images, not a video"
        raise ConfigError(
            f"--fps is the frame rate of an --out video ({'/'.join(VIDEO_FOURCC)}); here {recorded}"
        )
    if not args.headless:
        _open_window()
    fps = DEFAULT_OUT_FPS if args.fps is None else args.fps
    sink = _open_out(args.out, fps, timed=not args.all) if args.out is not None else None
    latency, transport = RecentSamples(), RecentSamples()  # a viewer may run for days
    keyframes = shown = 0
    uncoloured = 0  # messages whose labels were to be shown but had no class set (no palette) yet
    first_seq: int | None = None  # above 0: this viewer joined after the publisher's first messages
    seen_parts: set[str] = set()
    t_start = last_print = time.monotonic()
    quiet: StreamTimeout | None = None
    stopped_by: str | None = None  # Ctrl-C or SIGTERM
    failed: SinkError | None = None
    written = 0  # images --out wrote
    closed_whole = True  # --out closed with its check passed (a video that does not open is not)
    sub: Subscriber | None = None
    try:
        with (
            _raise_on_sigterm(),
            Subscriber(
                args.endpoint,
                topics=args.topic,
                exact_topics=True,  # ZeroMQ's SUBSCRIBE alone would let cam10 in for --topic cam1
                latest=not args.all,
                curve_keys=args.curve_keys,
            ) as sub,
        ):
            while args.frames is None or len(latency) < args.frames:
                # --out failed (disk full, folder removed): stop and report what was done, as the
                # first failure (said after the summary)
                last_error = sink.stats.last_error if sink is not None else None
                if last_error is not None:
                    failed = _sink_failure(last_error)
                    break
                try:
                    message = sub.recv(timeout=args.timeout)
                    received = time.perf_counter()
                except StreamTimeout as exc:
                    quiet = exc
                    break
                latency.add(message.latency_ms)
                transport.add(message.transport_ms)
                keyframes += message.header.is_keyframe
                seen_parts.update(message.parts)
                if first_seq is None:
                    first_seq = message.header.seq
                image = _image_of(message, args.part)
                if image is None and message.labels is not None and message.classes is None:
                    uncoloured += args.part in ("auto", "labels")
                if image is not None:
                    if sink is not None:
                        # named by the images written (000000.png, ...), timed by receipt
                        frame = Frame(image, shown, message.header.capture_ts, received, sub.endpoint)
                        sink.write(_Shown(frame, None))  # type: ignore[arg-type]  # no SegResult
                    elif not args.headless:
                        cv2.imshow(_WINDOW, image)
                    shown += 1
                if not args.headless and cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
                now = time.monotonic()
                if args.headless and sink is None and now - last_print >= 1.0:
                    print(
                        f"{len(latency)} msgs  {len(latency) / (now - t_start):5.1f}/s  "
                        f"latency p50 {latency.percentile(50, 30):6.1f} ms  "
                        f"frame {message.header.frame_index}",
                        flush=True,
                    )
                    last_print = now
    except KeyboardInterrupt:
        stopped_by = "Ctrl-C"
    except Terminated:
        stopped_by = "SIGTERM"
    finally:
        if sink is not None:
            # what is queued is written; a video's index and its read-back check come last
            final = sink.close()
            written = final.written
            if final.close_error is not None:  # said after the summary
                failed = failed or _sink_failure(final.close_error)
                closed_whole = False
            elif final.last_error is not None:  # a write that failed after the loop last looked
                failed = failed or _sink_failure(final.last_error)
        if not args.headless:
            cv2.destroyAllWindows()
    stats = sub.stats if sub is not None else None
    if stopped_by is not None:
        print(f"stopped ({stopped_by})" + (f": {args.out} closed" if sink else ""), file=sys.stderr)
    n = len(latency)
    elapsed = max(time.monotonic() - t_start, 1e-9)
    print(
        f"rtseg view: {n} messages in {elapsed:.1f} s ({n / elapsed:.1f}/s), {shown} shown"
        + (f", written to {args.out}" if written and closed_whole else "")
        + (f", {args.out} not written whole" if sink is not None and not closed_whole else "")
    )
    if n:
        print(
            f"  end-to-end latency (capture -> receipt): p50 {latency.percentile(50):.1f} ms, "
            f"p95 {latency.percentile(95):.1f} ms, max {latency.max():.1f} ms"
        )
        print(
            f"  transport (publish -> receipt): p50 {transport.percentile(50):.1f} ms; "
            f"keyframes {keyframes / n:.0%}"
        )
    if stats is not None:
        print(
            f"  missed by the network/publisher (sequence gaps): {stats.gaps}; skipped as stale: "
            f"{stats.skipped}; malformed: {stats.malformed}"
        )
    if failed is not None:
        raise failed  # after the summary; the CLI prints it as one line, exit status 2
    if stopped_by is not None:
        # As for `rtseg run` and `rtseg serve`: Ctrl-C is 130, SIGTERM (a service manager's stop) success.
        return 130 if stopped_by == "Ctrl-C" else 0
    if quiet is not None and (n == 0 or args.frames is not None):
        raise quiet  # nothing arrived, or fewer messages than asked for
    if n and not shown:
        not_written = f"; nothing was written to {args.out}" if sink is not None else ""
        if uncoloured:
            # The labels were there: what was missing is the class set that colours them.
            late = (
                f"; this viewer joined at message {first_seq} of the stream, after the first ones, "
                "and rtseg publishers repeat 'classes' only every classes_every messages (30 by "
                "default): ask for more with --frames, or publish with ?classes_every=N"
                if first_seq
                else ""
            )
            raise ConfigError(
                f"none of the {n} messages could be shown: {uncoloured} carried labels, but no "
                "'classes' (the class set, whose palette colours the labels) arrived with them or "
                "before them, so the labels have no colours; the publisher must send 'classes' in "
                "its headers (rtseg's send it on their first messages and every N-th), or send an "
                f"overlay or frame part to show (they carry: {', '.join(sorted(seen_parts))})"
                + late
                + not_written
            )
        raise ConfigError(
            f"none of the {n} messages had a part --part {args.part} can show "
            f"(they carry: {', '.join(sorted(seen_parts)) or 'no parts'})" + not_written
        )
    return 0
