"""`rtseg serve`: the request/reply segmentation server for robot stacks (ZeroMQ ROUTER)."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from ..engine import BACKENDS, load
from ..models import load_model
from ..schedule import Scheduler
from ..signals import restore, take
from ..stream.curve import check_server_keys
from ..stream.endpoint import endpoint_of
from ..stream.protocol import DEFAULT_MAX_PIXELS, INT_MAX, MAX_HEADER_BYTES
from ..stream.server import DEFAULT_SERVER_ENDPOINT, MIN_MAX_BYTES, Server, ServerLimits
from .common import (
    PRECISION_HELP,
    add_engine_place_args,
    add_model_args,
    engine_place,
    parse_size,
    positive_float,
    positive_int,
    ranged,
    scheduler_flags,
)
from .console import Terminated, stop_while_starting
from .scheduler_args import add_scheduler_args, check_scheduler_size, scheduler_from_args

# No async: its deep stage runs on a thread of each stream's own, outside --workers, so up to
# --max-streams more threads would run the engine at once.
SERVER_SCHEDULERS = ("every", "clockwork", "adaptive")


# The limits are checked by argparse, so that an error names the flag (argument --queue: ...), not
# the ServerLimits field it fills.
# --max-bytes is ZMQ_MAXMSGSIZE: below MIN_MAX_BYTES libzmq drops every request, and the server
# would start but answer none; above 2**63-1 (an int64) setting it raised OverflowError.
_request_bytes = ranged(
    int,
    f"a whole number of bytes in {MIN_MAX_BYTES}..2**63-1 (at least a header of up to "
    f"{MAX_HEADER_BYTES} bytes plus a small image)",
    lambda v: MIN_MAX_BYTES <= v <= INT_MAX,
)
# --drain: 0 refuses what is queued at once; otherwise a finite wait.
_seconds_or_zero = ranged(float, "a finite number of seconds >= 0", lambda v: 0 <= v < math.inf)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve segmentation requests over ZeroMQ (request/reply)",
        description=(
            "Answer [header, image] requests with [header, label map, overlay]; wire format in "
            "docs/wire-format.md. Binds 127.0.0.1 unless told otherwise."
        ),
    )
    add_model_args(p)
    p.add_argument(
        "--bind",
        default=DEFAULT_SERVER_ENDPOINT,
        help=f"ZeroMQ endpoint to bind (default {DEFAULT_SERVER_ENDPOINT}; tcp://*:PORT for all "
        "interfaces: then use --curve-keys)",
    )
    p.add_argument("--backend", choices=list(BACKENDS), default=BACKENDS[0])
    p.add_argument("--precision", default="fp32", help=PRECISION_HELP)
    add_engine_place_args(p)
    p.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="engine input WxH; requests are resized to it (default: the weights' training size)",
    )
    p.add_argument("--workers", type=positive_int, default=1, help="inference threads (default 1)")
    add_scheduler_args(
        p,
        default="clockwork",
        choices=SERVER_SCHEDULERS,
        what="keyframe schedule for requests that carry a stream id",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image accepted, in pixels (default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument(
        "--max-bytes",
        type=_request_bytes,
        default=ServerLimits.max_bytes,
        help=f"byte limit in {MIN_MAX_BYTES}..2**63-1 (default 64 MiB): a frame over it drops the "
        "connection (ZMQ_MAXMSGSIZE, a per-frame cap), a request over it is refused as too_large; "
        "libzmq receives a whole message before that, so one request may hold its frame count x "
        "this in memory: use --curve-keys on untrusted networks",
    )
    p.add_argument(
        "--max-streams",
        type=positive_int,
        default=ServerLimits.max_streams,
        help="streams kept at once; beyond that the least recently used is evicted "
        f"(default {ServerLimits.max_streams})",
    )
    p.add_argument(
        "--stream-ttl",
        type=positive_float,
        default=ServerLimits.stream_ttl_s,
        help=f"seconds a stream may stay idle before it is dropped (default {ServerLimits.stream_ttl_s:g})",
    )
    p.add_argument(
        "--drain",
        type=_seconds_or_zero,
        default=ServerLimits.drain_s,
        help="on Ctrl-C/SIGTERM: seconds the requests already accepted get to be answered; new ones "
        "are refused as busy meanwhile, as are those still queued after it "
        f"(default {ServerLimits.drain_s:g})",
    )
    p.add_argument(
        "--queue",
        type=positive_int,
        default=ServerLimits.queue_size,
        help="requests that may wait; beyond that clients get a 'busy' reply "
        f"(default {ServerLimits.queue_size})",
    )
    p.add_argument(
        "--curve-keys",
        type=Path,
        default=None,
        help="CurveZMQ: encrypt and admit only clients whose keys are in DIR/clients "
        "(make keys with `rtseg keys DIR`)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    limits = ServerLimits(
        max_pixels=args.max_pixels,
        max_bytes=args.max_bytes,
        max_streams=args.max_streams,
        stream_ttl_s=args.stream_ttl,
        drain_s=args.drain,
        queue_size=args.queue,
    )

    def scheduler() -> Scheduler:  # the Server calls it once per stream: each needs its own
        return scheduler_from_args(args, choices=SERVER_SCHEDULERS)

    options = scheduler()  # a bad combination of options fails here, before the model loads
    options.close()  # never stepped: its checks need no worker
    place = engine_place(args)
    endpoint_of(args.bind, bind=True, who="rtseg serve", name="--bind")  # zmq:// optional, as for view
    if args.curve_keys is not None:
        check_server_keys(args.curve_keys)
    try:
        with stop_while_starting():  # a service manager's stop during a (long) engine build
            model = load_model(args.model, args.weights)
            # the size (given or the weights') is known now: a --flow-stride too large for it is
            # refused before the engine build, not after
            check_scheduler_size(options, lambda: args.size or model.meta.preprocessing.input_size)
            engine = load(
                model,
                backend=args.backend,
                precision=args.precision,
                input_size=args.size,
                **place,
            )
            engine.warmup(2)
    except Terminated:
        print("rtseg serve: stopped (SIGTERM) while loading the model", file=sys.stderr)
        return 0
    probe = scheduler()
    try:  # as Server does, but naming the flags (--flow-stride, not flow_stride), as `rtseg run` does
        with scheduler_flags():
            probe.check(engine)
    finally:
        probe.close()
    server = Server(
        engine,
        bind=args.bind,
        workers=args.workers,
        scheduler=scheduler,
        limits=limits,
        curve_keys=args.curve_keys,
    )
    w, h = engine.input_size
    ow, oh = engine.output_size
    secure = "CurveZMQ" if args.curve_keys else "no encryption"
    stopped_by: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        server.stop()

    # Handlers first: a signal sent as soon as the banner is read must stop the server cleanly.
    previous = {s: take(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(
            f"rtseg serve: {engine.meta.model} ({engine.info.backend} {engine.info.precision}, "
            f"input {w}x{h}, labels {ow}x{oh}) on {server.endpoint} ({secure}); Ctrl-C to stop",
            flush=True,
        )
        server.serve_forever()
    finally:
        server.close()
        for s, handler in previous.items():
            restore(s, handler)
    stats = server.stats
    errors = ", ".join(f"{k} {v}" for k, v in sorted(stats.errors.items())) or "none"
    print(
        f"rtseg serve: stopped; {stats.received} requests, {stats.ok} ok, errors: {errors}", file=sys.stderr
    )
    # As for `rtseg run`: Ctrl-C is 130, SIGTERM (the stop a service manager asks for) is success.
    return 130 if signal.SIGINT in stopped_by else 0
