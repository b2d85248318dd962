"""A procedural moving road scene: demos and tests without a camera or a video file.

A pinhole camera drives down a three-lane road: sky gradient, distant buildings, dashed lane
markings and roadside trees and poles moving past in perspective, and car-like boxes at their own
speeds. Frame ``t`` is a pure function of (seed, t), so any frame can be rendered again exactly.
The static part is drawn once; a frame costs one copy plus a few dozen OpenCV fills (about 1 ms at
1280x720).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ConfigError, SourceError
from .base import MAX_FRAME_SIDE, MediaSource, SourceInfo, SourceOptions

SCENES = ("drive",)

_CAM_HEIGHT = 1.4  # metres above the road
_SPEED = 14.0  # camera speed, m/s
_NEAR, _FAR = 1.2, 220.0  # drawing range along the road, metres
_LANE = 3.5
_DASH_PERIOD, _DASH_LENGTH, _LINE_WIDTH = 12.0, 3.0, 0.15
_TREE_SPACING, _POLE_SPACING = 18.0, 30.0


@dataclass(frozen=True)
class DriveParams:
    size: tuple[int, int] = (1280, 720)
    fps: float = 30.0
    seed: int = 0
    frames: int | None = None  # None: endless

    def __post_init__(self) -> None:
        w, h = self.size
        if w < 32 or h < 32:
            raise ConfigError(f"synthetic size must be at least 32x32, got {w}x{h}")
        if max(w, h) > MAX_FRAME_SIDE:  # a frame NumPy cannot allocate failed with a MemoryError traceback
            raise ConfigError(f"synthetic size must be at most {MAX_FRAME_SIDE} pixels per side, got {w}x{h}")
        if not 0 < self.fps < float("inf"):
            raise ConfigError(f"synthetic fps must be a positive finite number, got {self.fps}")
        if self.seed < 0:  # NumPy's generators take none
            raise ConfigError(f"synthetic seed must be a whole number >= 0, got {self.seed}")
        if self.frames is not None and self.frames <= 0:
            raise ConfigError(f"synthetic frames must be positive, got {self.frames}")


def _unit_hash(seed: int, *keys: int) -> float:
    """A stable pseudo-random number in [0, 1) for an object identity (no RNG state to carry)."""
    x = (seed * 0x9E3779B1) & 0xFFFFFFFF
    for k in keys:
        x = ((x ^ (k & 0xFFFFFFFF)) * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & 0xFFFFFFFF
        x ^= x >> 16
    return x / 2**32


class DriveScene:
    """Renders frames of the drive scene."""

    def __init__(self, params: DriveParams) -> None:
        self.params = params
        w, h = params.size
        self.w, self.h = w, h
        self.focal = 0.9 * w
        self.cx = w / 2
        self.horizon = 0.42 * h
        rng = np.random.default_rng(params.seed)
        self._cars = [
            (
                float(rng.choice([-_LANE, 0.0, _LANE])),  # lane centre X
                float(rng.uniform(8, 110)),  # distance at t = 0
                float(rng.uniform(-5.0, 7.0)),  # speed relative to the camera
                tuple(int(c) for c in rng.integers(30, 230, 3)),  # body colour
            )
            for _ in range(4)
        ]
        self._background = self._draw_background(rng)

    def _project(self, x: float, y: float, z: float) -> tuple[float, float]:
        """World (X right, Y up from the road, Z ahead) -> pixel (u, v)."""
        return self.cx + self.focal * x / z, self.horizon + self.focal * (_CAM_HEIGHT - y) / z

    def _quad(self, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
        pts = [
            self._project(x0, 0, z0),
            self._project(x1, 0, z0),
            self._project(x1, 0, z1),
            self._project(x0, 0, z1),
        ]
        return np.round(np.array(pts)).astype(np.int32)

    def _draw_background(self, rng: np.random.Generator) -> np.ndarray:
        w, h, hz = self.w, self.h, int(self.horizon)
        image = np.empty((h, w, 3), dtype=np.uint8)
        t = np.linspace(0.0, 1.0, hz, dtype=np.float32)[:, None]
        sky_top, sky_low = np.array([150, 95, 40], np.float32), np.array([235, 215, 190], np.float32)
        image[:hz] = ((1 - t) * sky_top + t * sky_low).astype(np.uint8)[:, None, :]
        t = np.linspace(0.0, 1.0, h - hz, dtype=np.float32)[:, None]
        far, near = np.array([95, 140, 110], np.float32), np.array([50, 115, 60], np.float32)
        image[hz:] = ((1 - t) * far + t * near).astype(np.uint8)[:, None, :]
        # A distant skyline, static because it is far away.
        x = 0
        while x < w:
            bw = int(rng.integers(w // 40, w // 12))
            bh = int(rng.integers(h // 40, h // 8))
            grey = int(rng.integers(70, 150))
            cv2.rectangle(image, (x, hz - bh), (x + bw, hz), (grey, grey, grey + 10), -1)
            x += bw + int(rng.integers(0, w // 30))
        half = 1.5 * _LANE
        cv2.fillPoly(image, [self._quad(-half - 0.6, half + 0.6, _NEAR, _FAR)], (88, 88, 92))
        for side in (-1, 1):
            xe = side * half
            cv2.fillPoly(
                image, [self._quad(xe - _LINE_WIDTH, xe + _LINE_WIDTH, _NEAR, _FAR)], (235, 235, 235)
            )
        return image

    def render(self, t: int) -> np.ndarray:
        s = t / self.params.fps
        travelled = _SPEED * s
        image = self._background.copy()
        # Dashed lane markings between the three lanes.
        phase = travelled % _DASH_PERIOD
        for k in range(int(_FAR / _DASH_PERIOD) + 2):
            z0, z1 = k * _DASH_PERIOD - phase, k * _DASH_PERIOD - phase + _DASH_LENGTH
            if z1 <= _NEAR or z0 >= _FAR:
                continue
            z0 = max(z0, _NEAR)
            for xl in (-_LANE / 2, _LANE / 2):
                cv2.fillPoly(image, [self._quad(xl - _LINE_WIDTH, xl + _LINE_WIDTH, z0, z1)], (240, 240, 240))
        drawables: list[tuple[float, int, int, float]] = []  # (z, kind, identity, x)
        for kind, spacing, x in ((0, _TREE_SPACING, 9.0), (1, _POLE_SPACING, 6.4)):
            first = math.floor((travelled + 3.0) / spacing)
            for k in range(first, first + int(80 / spacing) + 1):
                z = k * spacing - travelled
                if z > 3.0:
                    side = 1 if _unit_hash(self.params.seed, kind, k) < 0.5 else -1
                    drawables.append((z, kind, k, side * x))
        for i, (x, z0, dv, _) in enumerate(self._cars):
            z = 6.0 + (z0 - 6.0 + dv * s) % 110.0
            drawables.append((z, 2, i, x))
        for z, kind, ident, x in sorted(drawables, reverse=True):
            if kind == 0:
                self._tree(image, x, z, ident)
            elif kind == 1:
                self._pole(image, x, z)
            else:
                self._car(image, x, z, self._cars[ident][3])
        return image

    def _tree(self, image: np.ndarray, x: float, z: float, ident: int) -> None:
        height = 4.0 + 3.0 * _unit_hash(self.params.seed, 7, ident)
        u0, v0 = self._project(x - 0.2, 0.0, z)
        u1, v1 = self._project(x + 0.2, height * 0.6, z)
        cv2.rectangle(image, (round(u0), round(v0)), (round(u1), round(v1)), (30, 55, 85), -1)
        uc, vc = self._project(x, height * 0.75, z)
        radius = max(1, round(self.focal * height * 0.3 / z))
        green = 90 + int(70 * _unit_hash(self.params.seed, 9, ident))
        cv2.circle(image, (round(uc), round(vc)), radius, (40, green, 35), -1)

    def _pole(self, image: np.ndarray, x: float, z: float) -> None:
        u0, v0 = self._project(x - 0.08, 0.0, z)
        u1, v1 = self._project(x + 0.08, 6.0, z)
        cv2.rectangle(image, (round(u0), round(v0)), (round(u1), round(v1)), (150, 150, 160), -1)
        us, vs = self._project(x + 0.08, 5.0, z)
        ue, ve = self._project(x + 0.9, 5.6, z)
        cv2.rectangle(image, (round(us), round(vs)), (round(ue), round(ve)), (40, 40, 200), -1)

    def _car(self, image: np.ndarray, x: float, z: float, colour: tuple[int, ...]) -> None:
        b, g, r = colour
        u0, v0 = self._project(x - 0.9, 0.25, z)
        u1, v1 = self._project(x + 0.9, 1.5, z)
        cv2.rectangle(image, (round(u0), round(v0)), (round(u1), round(v1)), (b, g, r), -1)
        uw0, vw0 = self._project(x - 0.75, 1.05, z)
        uw1, vw1 = self._project(x + 0.75, 1.4, z)
        cv2.rectangle(image, (round(uw0), round(vw0)), (round(uw1), round(vw1)), (60, 50, 40), -1)
        for side in (-1, 1):
            ut0, vt0 = self._project(x + side * 0.85 - 0.15, 0.0, z)
            ut1, vt1 = self._project(x + side * 0.85 + 0.15, 0.35, z)
            cv2.rectangle(image, (round(ut0), round(vt0)), (round(ut1), round(vt1)), (20, 20, 20), -1)


class SyntheticSource(MediaSource):
    def __init__(self, uri: str, scene: str, params: DriveParams, options: SourceOptions) -> None:
        if scene not in SCENES:
            raise SourceError(f"unknown synthetic scene {scene!r}; available: {', '.join(SCENES)}")
        super().__init__(uri, options, fps=params.fps)
        self.params = params
        self.scene = DriveScene(params)
        self._t = 0
        self.info = SourceInfo(
            uri=uri,
            kind="synthetic",
            live=options.realtime,
            fps=params.fps,
            size=self._output_size(params.size),
            frame_count=params.frames,
        )

    def _ended(self) -> bool:
        return self.params.frames is not None and self._t >= self.params.frames

    def _read(self) -> np.ndarray | None:
        if self._ended():
            return None
        self._t += 1
        return self.scene.render(self._t - 1)

    def _skip(self) -> bool:
        if self._ended():
            return False
        self._t += 1
        return True

    def _rewind(self) -> bool:
        self._t = 0
        return True
