from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from rtseg.errors import ConfigError, InputTypeError
from rtseg.overlay import OverlayStyle
from rtseg.sink import Packet


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


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("style", "mask", InputTypeError, "Packet.style must be a rtseg.overlay.OverlayStyle, got 'mask'"),
        ("fps", "30", InputTypeError, "fps must be None or a number of frames per second"),
        ("fps", float("nan"), ConfigError, "fps must be None or a finite number >= 0"),
        ("result", None, InputTypeError, "Packet.result must be a SegResult, got NoneType"),
    ],
)
def test_a_packet_refuses_fields_the_sink_thread_would_fail_on(
    packet_factory, field: str, value: object, error: type, message: str
) -> None:
    """Packet(frame, result, style="mask") passed write()'s check and failed on the sink's thread
    (AttributeError: 'str' object has no attribute 'mode'): nothing written, no exception."""
    good = packet_factory(0)
    fields = {"frame": good.frame, "result": good.result, "style": good.style, "fps": None, field: value}
    with pytest.raises(error, match=re.escape(message)):
        Packet(**fields)
