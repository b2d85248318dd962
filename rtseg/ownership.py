"""One owner at a time for an object that holds one stream's state (a Scheduler's cache, a
Segmenter's schedule): a second owner would be answered from the first one's stream, silently."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from .errors import ConfigError


class SingleOwner:
    """The current owner, held weakly: an owner dropped without letting go frees the object."""

    def __init__(self) -> None:
        self._ref: weakref.ref[object] | None = None
        self._lock = threading.Lock()

    def holder(self) -> object | None:
        return self._ref() if self._ref is not None else None

    def claim(self, owner: object, refusal: Callable[[], str]) -> None:
        """Make ``owner`` the owner; ConfigError(``refusal()``) while another one is."""
        with self._lock:
            current = self.holder()
            if current is not None and current is not owner:
                raise ConfigError(refusal())
            self._ref = weakref.ref(owner)

    def release(self, owner: object) -> None:
        """Let go, if ``owner`` is the owner (a later owner's claim stays)."""
        with self._lock:
            if self.holder() is owner:
                self._ref = None
