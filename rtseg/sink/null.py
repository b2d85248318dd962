"""``null://``: consumes results and writes nothing; ``null://?overlay=1`` still draws (to time it)."""

from __future__ import annotations

from .base import Policy, Sink
from .packet import Packet


class NullSink(Sink):
    def __init__(
        self, uri: str = "null://", *, draw: bool = False, queue_size: int = 4, policy: Policy | None = None
    ) -> None:
        self.draw = draw
        super().__init__(uri, queue_size=queue_size, policy=policy)

    @property
    def draws(self) -> bool:
        return self.draw

    def emit(self, packet: Packet) -> None:
        if self.draw:
            packet.overlay()
