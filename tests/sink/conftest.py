"""Packets made by hand: a frame, a label map and a SegResult, no model needed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rtseg.data.labels import CAMVID
from rtseg.result import SegResult
from rtseg.sink.packet import Packet
from rtseg.source.frame import Frame


def make_packet(index: int, size: tuple[int, int] = (64, 48), **packet_kw) -> Packet:
    w, h = size
    image = np.full((h, w, 3), (index * 7) % 256, np.uint8)
    labels = np.zeros((h // 2, w // 2), np.uint8)
    labels[:, : (index % (w // 2)) + 1] = 3  # road grows to the right frame by frame
    result = SegResult(labels, index, index % 2 == 0, index % 2, CAMVID, {"low": 1.0, "head": 2.0})
    frame = Frame(image, index, time.time(), time.perf_counter(), "test://")
    return Packet(frame, result, **packet_kw)


@pytest.fixture()
def packet_factory():
    return make_packet
