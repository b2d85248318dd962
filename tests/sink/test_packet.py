from __future__ import annotations

import threading

import numpy as np

from rtseg.overlay import OverlayStyle


def test_overlay_is_drawn_once_for_all_sinks(packet_factory) -> None:
    timings: list[float] = []
    packet = packet_factory(2, style=OverlayStyle(alpha=0.3), on_overlay=timings.append)
    results = []
    threads = [threading.Thread(target=lambda: results.append(packet.overlay())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(timings) == 1
    assert all(r is results[0] for r in results)
    assert results[0].shape == packet.frame.image.shape
    assert not np.array_equal(results[0], packet.frame.image)
