"""``display://N``: an OpenCV window. Needs OpenCV's GUI build and a display to show it on."""

from __future__ import annotations

import os
import sys

import cv2

from ..errors import SinkError
from .base import Policy, Sink
from .packet import Packet

GUI_INSTALL = "pip uninstall opencv-python-headless && pip install opencv-python"


def gui_problem() -> str | None:
    """Why a window cannot open here, or None when it can."""
    info = cv2.getBuildInformation()
    gui = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.strip().startswith("GUI:")), ""
    )
    if gui.upper() == "NONE":
        return (
            "this OpenCV build has no GUI support (opencv-python-headless, which rtseg installs so it works "
            f"on servers). For windows install the GUI build: `{GUI_INSTALL}`"
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return (
            "there is no display ($DISPLAY is not set): run on a desktop session or with `ssh -X`, "
            "or write to a file (out.mp4) or a stream (zmq://) instead"
        )
    return None


class DisplaySink(Sink):
    """Shows overlays in a window; Esc, q or closing the window asks the pipeline to stop."""

    def __init__(
        self, uri: str, *, window: str | None = None, queue_size: int = 2, policy: Policy | None = None
    ) -> None:
        problem = gui_problem()
        if problem is not None:
            raise SinkError(f"{uri}: cannot open a window: {problem}")
        self.window = window or f"rtseg {uri}"
        self._shown = False
        super().__init__(uri, queue_size=queue_size, policy=policy)

    def emit(self, packet: Packet) -> None:
        if not self._shown:
            cv2.namedWindow(self.window, cv2.WINDOW_NORMAL)
        cv2.imshow(self.window, packet.overlay())
        self._shown = True
        key = cv2.waitKey(1) & 0xFF
        closed = cv2.getWindowProperty(self.window, cv2.WND_PROP_VISIBLE) < 1
        if key in (27, ord("q")) or closed:
            self.request_stop()

    def release(self) -> None:
        if self._shown:
            cv2.destroyWindow(self.window)
            cv2.waitKey(1)
