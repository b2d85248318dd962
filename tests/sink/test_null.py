from __future__ import annotations

from rtseg.sink.null import NullSink


def test_discards_and_optionally_draws(packet_factory) -> None:
    drawn: list[float] = []
    quiet = NullSink(policy="block")
    drawing = NullSink("null://?overlay=1", draw=True, policy="block")
    for i in range(5):
        quiet.write(packet_factory(i, on_overlay=drawn.append))
    assert quiet.close().written == 5 and drawn == []
    for i in range(5):
        drawing.write(packet_factory(i, on_overlay=drawn.append))
    assert drawing.close().written == 5 and len(drawn) == 5 and all(ms >= 0 for ms in drawn)
