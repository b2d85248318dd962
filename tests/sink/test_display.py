from __future__ import annotations

import pytest

from rtseg.errors import SinkError
from rtseg.sink import display
from rtseg.sink.display import GUI_INSTALL, DisplaySink, gui_problem


def test_headless_opencv_gives_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(display.cv2, "getBuildInformation", lambda: "  GUI:  NONE\n")
    with pytest.raises(SinkError) as err:
        DisplaySink("display://0")
    assert GUI_INSTALL in str(err.value) and "display://0" in str(err.value)


def test_no_display_says_how_to_get_one(monkeypatch) -> None:
    monkeypatch.setattr(display.cv2, "getBuildInformation", lambda: "  GUI:  GTK3\n")
    monkeypatch.setattr(display.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    problem = gui_problem()
    assert problem is not None and "$DISPLAY" in problem and "ssh -X" in problem


def test_this_machine(monkeypatch) -> None:
    problem = gui_problem()
    if problem is None:
        pytest.skip("this machine can open windows")
    with pytest.raises(SinkError, match="cannot open a window"):
        DisplaySink("display://0")
