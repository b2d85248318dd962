"""``Segmenter``: an engine plus a keyframe scheduler behind one call, ``seg(frame) -> SegResult``."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from . import process
from .data.labels import ClassSet
from .data.preprocess import cv2_interpolation
from .engine.base import Engine
from .errors import ConfigError, InputTypeError
from .models.base import StagedSegmenter
from .ownership import SingleOwner
from .result import SegResult
from .schedule import SCHEDULER_OPTIONS, Scheduler, make_scheduler
from .source.frame import Frame


def as_scheduler(scheduler: object) -> Scheduler:
    """A scheduler name made a Scheduler (default options); a Scheduler as it is; else InputTypeError."""
    if isinstance(scheduler, str):
        return make_scheduler(scheduler)
    if not isinstance(scheduler, Scheduler):
        raise InputTypeError(
            "scheduler must be a name (every, clockwork, adaptive, async) or a Scheduler "
            f"(rtseg.schedule.make_scheduler(...)), got {type(scheduler).__name__}"
        )
    return scheduler


def _check_engine_options(scheduler: object, options: dict[str, Any]) -> None:
    """A make_scheduler option among the engine options would reach the backend as an unknown one."""
    misplaced = [k for k in options if k in SCHEDULER_OPTIONS]
    if not misplaced:
        return
    name = scheduler if isinstance(scheduler, str) else getattr(scheduler, "name", "adaptive")
    given = ", ".join(f"{k}={options[k]!r}" for k in misplaced)
    what = "a scheduler option" if len(misplaced) == 1 else "scheduler options"
    message = (
        f"{', '.join(misplaced)}: {what} of rtseg.schedule.make_scheduler, not of the engine; pass "
        f"scheduler=rtseg.schedule.make_scheduler({name!r}, {given})"
    )
    try:  # the call suggested may itself be wrong (max_interval for the default "every"): say why
        make_scheduler(name, **{k: options[k] for k in misplaced})
    except (ConfigError, TypeError, ValueError) as e:
        message += f", which as it stands fails: {e}"
    raise ConfigError(message)


def _network(model: str | StagedSegmenter | None, weights: str | os.PathLike[str] | None) -> StagedSegmenter:
    """Resolve ``model``/``weights`` as the CLI does, with errors phrased for a Python caller."""
    from .models import DEFAULT_MODEL, get_spec, load_model

    if isinstance(model, StagedSegmenter):
        if weights is not None:
            raise ConfigError(
                "weights= would be ignored: model is an already built network; pass the registry "
                "name with weights= (Segmenter('espnet', weights=...)), or load them into the network "
                "with rtseg.models.get_model(name, weights=...)"
            )
        return model
    if model is not None and not isinstance(model, str):
        raise InputTypeError(
            "model must be a registry name (rtseg.models.list_models()), a built network "
            f"(rtseg.models.get_model(...)) or None for the shipped model, got {type(model).__name__}"
        )
    if model is not None:
        get_spec(model)  # an unknown name says so, not "weights are required"
    if weights is None and model not in (None, DEFAULT_MODEL):
        raise ConfigError(
            f"Segmenter({model!r}) needs weights=: rtseg ships trained weights only for "
            f"{DEFAULT_MODEL!r}; for an untrained network pass rtseg.models.get_model({model!r})"
        )
    return load_model(model, None if weights is None else os.fspath(weights))


def load_engine(
    model: str | StagedSegmenter | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    input_size: tuple[int, int] | None = None,
    scheduler: Scheduler | None = None,
    **options: Any,
) -> Engine:
    """An engine for a registry name, a built network, or (neither) rtseg's default model and weights;
    a ``scheduler`` that cannot run at the input size (given, or the weights') is refused before
    the build, which takes seconds (auto: timing every backend)."""
    from .engine import check_input_size, load

    size = check_input_size(input_size)
    net = _network(model, weights)
    if scheduler is not None:
        scheduler.check_input_size(*(size or net.meta.preprocessing.input_size))
    return load(net, backend=backend, input_size=size, **options)


class Segmenter:
    """Segments frames of one stream; thread-safe, no global state.

    Thread safety: ``__call__``, ``reset``, ``use_scheduler`` and ``close`` may be called from any
    thread; they take one lock, so calls are serialised (never interleaved inside the engine or the
    scheduler) and each returns its own ``SegResult`` with its own label array. Calls from two
    threads still feed one schedule, in lock order: two cameras need two Segmenters (they can
    share one engine, ``engine=``). ``close`` waits for a call in progress; later calls raise.
    From a signal handler that interrupted a call on its own thread it cannot wait: the call
    finishes its frame and closes the Segmenter as it returns.
    A Scheduler object serves one Segmenter at a time: a second one given it is refused
    (ConfigError) until the first closes or switches schedulers. Likewise a Segmenter serves one
    running ``Pipeline`` at a time (``claim``): a second one started meanwhile is refused.

    ``scheduler`` is a name (``every``, ``clockwork``, ``adaptive``, ``async``: default options) or
    a configured Scheduler (``rtseg.schedule.make_scheduler(...)``); a scheduler's options
    (``threshold=``, ``interval=``, ...) go to ``make_scheduler``, not here. Scheduling state is per
    stream: use one Segmenter per camera; ``jump()`` when the stream jumps (a seek, a reconnect)
    and ``reset()`` for a new stream. Pass ``engine`` to
    share one loaded engine between several Segmenters: ``close()`` then leaves it open (its
    owner closes it); an engine the Segmenter loaded itself is closed with it.
    """

    def __init__(
        self,
        model: str | StagedSegmenter | None = None,
        *,
        weights: str | os.PathLike[str] | None = None,
        backend: str = "auto",
        input_size: tuple[int, int] | None = None,
        scheduler: str | Scheduler = "every",
        engine: Engine | None = None,
        **engine_options: Any,
    ) -> None:
        # The scheduler first: a misspelt name must not cost an engine load (or `auto`'s timing runs),
        # nor leave the loaded engine unclosed.
        _check_engine_options(scheduler, engine_options)
        chosen = as_scheduler(scheduler)
        chosen.claim(self)
        try:
            self._set_up(chosen, model, weights, backend, input_size, engine, engine_options)
        except BaseException:
            chosen.release(self)
            raise

    def _set_up(
        self,
        chosen: Scheduler,
        model: str | StagedSegmenter | None,
        weights: str | os.PathLike[str] | None,
        backend: str,
        input_size: tuple[int, int] | None,
        engine: Engine | None,
        engine_options: dict[str, Any],
    ) -> None:
        self._pid = process.current  # used in another process (a fork) it refuses: see rtseg.process
        self._owns_engine = engine is None
        if engine is None:
            engine = load_engine(
                model,
                weights=weights,
                backend=backend,
                input_size=input_size,
                scheduler=chosen,  # checked again below, against the engine: what it needs beside the size
                **engine_options,
            )
        else:
            if not isinstance(engine, Engine):
                raise InputTypeError(
                    f"engine must be an rtseg Engine (rtseg.engine.load(...)), got {type(engine).__name__}"
                )
            loading = {"model": model, "weights": weights, "input_size": input_size, **engine_options}
            given = [k for k, v in loading.items() if v is not None]
            given += ["backend"] if backend != "auto" else []
            if given:
                raise ConfigError(
                    f"engine= is an already loaded engine ({engine.info.model} on "
                    f"{engine.info.backend}): {', '.join(given)} would be ignored; pass either "
                    "engine or the options to load one"
                )
        self.engine = engine
        self.scheduler = chosen
        try:
            self.scheduler.check(engine)
            # A scheduler handed on from a closed Segmenter still held that stream's deep cache
            # (answered from another engine's features, or a flow between frames of two sizes).
            self.scheduler.reset()
        except BaseException:
            if self._owns_engine:
                engine.close()
            raise
        # Reentrant, for close() from a signal handler that interrupted a call on this thread: a
        # plain lock waited for itself there, forever. _busy counts the calls inside (the handler's
        # close must not close the engine under them); _released says close's work is done.
        self._lock = threading.RLock()
        # The running Pipeline that feeds this Segmenter its stream (``claim``), held weakly: a
        # pipeline dropped unclosed lets go of it.
        self._runner = SingleOwner()
        self._busy = 0
        self._closed = False
        self._released = False
        self._interpolation = cv2_interpolation(engine.meta.preprocessing.interpolation)

    @property
    def classes(self) -> ClassSet:
        return self.engine.meta.classes

    @property
    def input_size(self) -> tuple[int, int]:
        return self.engine.input_size

    @property
    def output_size(self) -> tuple[int, int]:
        return self.engine.output_size

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The frame at the engine's input size: the one copy the hot loop makes (none if it fits)."""
        if not isinstance(image, np.ndarray):
            raise InputTypeError(f"expected an HxWx3 uint8 BGR NumPy array, got {type(image).__name__}")
        # ConfigError (a ValueError too): a robot's loop catching RtsegError catches a bad frame.
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ConfigError(
                f"expected an HxWx3 uint8 BGR image, got shape {image.shape} dtype {image.dtype}"
            )
        if image.size == 0:
            raise ConfigError(f"expected a non-empty image, got shape {image.shape}")
        size = self.engine.input_size
        if (image.shape[1], image.shape[0]) == tuple(size):
            # Views (crops, image[..., ::-1]) are copied once here rather than in every engine.
            return image if image.flags.c_contiguous else np.ascontiguousarray(image)
        return cv2.resize(image, size, interpolation=self._interpolation)

    def __call__(self, frame: np.ndarray | Frame) -> SegResult:
        """Labels for one BGR frame (any size; resized to the engine's input), at output resolution.
        A ``Frame`` that follows a jump in its stream (``discontinuity``: a loop's new pass, a
        reconnect) is a keyframe (Scheduler.jump): clockwork answered a loop's first frames from the
        last pass's final keyframe (agreement with every frame 77-80 %, 96-98 % elsewhere)."""
        image, index = (frame.image, frame.index) if isinstance(frame, Frame) else (frame, None)
        with self._open():
            t0 = time.perf_counter()
            x = self.preprocess(image)
            ms = (time.perf_counter() - t0) * 1000.0
            if isinstance(frame, Frame) and frame.discontinuity:
                self.scheduler.jump()
            result = self.scheduler.step(self.engine, x, index=index)
        return SegResult(
            result.labels,
            result.frame_index,
            result.is_keyframe,
            result.deep_age,
            result.classes,
            {"preprocess": ms, **result.timings},
            result.change,
        )

    def use_scheduler(self, scheduler: str | Scheduler) -> None:
        """Switch schedulers (the new one starts with an empty cache)."""
        new = as_scheduler(scheduler)
        with self._open():
            new.check(self.engine)
            new.claim(self)
            old, self.scheduler = self.scheduler, new
            try:  # the new one is in place even if closing the old one raises (a worker's failure)
                if old is not new:
                    old.release(self)
                old.close()
            finally:
                new.reset()

    def claim(self, owner: object) -> None:
        """Bind this Segmenter to one running stream (a ``Pipeline`` claims it from the start of its
        run until it is closed). Two pipelines running through one Segmenter at once fed one
        schedule two streams: frames of one answered from the other's deep features, keyframes
        irregular, each run's reset() resetting the other mid-run."""
        self._runner.claim(
            owner,
            lambda: (
                f"this Segmenter ({self.scheduler.describe()}) is already segmenting another running "
                "Pipeline's stream: it holds one stream's deep features and keyframe reference, and "
                "two streams through it would be answered from each other's; give each Pipeline its "
                "own Segmenter (they can share one engine: rtseg.Segmenter(engine=seg.engine, "
                "scheduler=...), the engine open until seg closes), or close the other Pipeline first"
            ),
        )

    def release(self, owner: object) -> None:
        """Undo ``claim`` (the pipeline's run ended)."""
        self._runner.release(owner)

    def reset(self) -> None:
        """Start a new stream: no deep cache, keyframe reference, statistics or calibration."""
        with self._open():
            self.scheduler.reset()

    def jump(self) -> None:
        """The stream jumped (a seek, a reconnect) and goes on: the next frame is a keyframe; the
        statistics and a calibrated threshold stay. A ``Frame`` marked ``discontinuity`` does this."""
        with self._open():
            self.scheduler.jump()

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this Segmenter is closed; make a new one to segment more frames")

    @contextlib.contextmanager
    def _open(self) -> Iterator[None]:
        """Hold the lock for a call on an open Segmenter. A close() that came meanwhile from a
        signal handler on this thread only marked it closed: the call closes it on its way out."""
        if self._pid != process.current:  # before the lock: a thread fork did not copy may hold it
            raise process.built_elsewhere("Segmenter", self._pid)
        with self._lock:
            self._busy += 1  # a handler's close() from here on leaves the closing to this call
            try:
                self._check_open()
                yield
            finally:
                self._busy -= 1
                if self._closed and not self._busy:
                    self._release()

    def close(self) -> None:
        """End the scheduler's worker and, if this Segmenter loaded its engine, the engine; idempotent.
        From a signal handler that interrupted a call on this thread, it marks the Segmenter closed
        and returns: that call finishes its frame and closes it as it returns.
        In a process forked after it was built it only marks it closed, taking no lock and leaving
        the engine's native handles to the parent (an owned engine's ``close`` keeps them)."""
        if self._pid != process.current:
            self._closed = self._released = True
            if self._owns_engine:
                self.engine.close()
            return
        with self._lock:
            self._closed = True
            if not self._busy:
                self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        try:  # the engine is closed even if the scheduler's close raises (a worker's failure)
            self.scheduler.close()
        finally:
            self.scheduler.release(self)
            if self._owns_engine:
                self.engine.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        info = self.engine.info
        return (
            f"Segmenter({info.model}, backend={info.backend}, "
            f"input={info.input_size[0]}x{info.input_size[1]}, "
            f"scheduler={self.scheduler.describe()})"
        )
