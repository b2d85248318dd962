"""Frame checks its fields when it is made: a wrong one is an RtsegError naming it, never a value
that passes and misleads later (discontinuity="no" made a keyframe, index="7" a result's index)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtseg.errors import ConfigError, InputTypeError
from rtseg.source import Frame

IMAGE = np.zeros((6, 8, 3), np.uint8)


def _frame(**changes: object) -> Frame:
    fields: dict[str, object] = dict(
        image=IMAGE, index=3, timestamp=1700000000.5, monotonic=12.25, source="test://"
    )
    fields.update(changes)
    return Frame(**fields)  # type: ignore[arg-type]


def test_what_sources_make_and_other_valid_values_are_kept() -> None:
    frame = _frame(position_s=0.4, discontinuity=True)
    assert (frame.index, frame.position_s, frame.discontinuity, frame.size) == (3, 0.4, True, (8, 6))
    view = IMAGE[:, ::-1].view()  # a non-contiguous, read-only view (Pipeline hands those out)
    view.flags.writeable = False
    others = _frame(
        image=view,
        index=0,
        timestamp=np.float64(1.5),
        monotonic=7,
        position_s=np.float32(0.25),
        discontinuity=np.bool_(False),
    )
    assert others.image is view and others.timestamp == 1.5 and not others.discontinuity


@pytest.mark.parametrize(
    "changes, error, message",
    [
        (dict(discontinuity="no"), InputTypeError, r"Frame.discontinuity must be True or False, got 'no'"),
        (dict(discontinuity=0), InputTypeError, r"Frame.discontinuity must be True or False, got 0"),
        (dict(index="7"), InputTypeError, r"Frame.index must be an int .*got '7' \(str\)"),
        (dict(index=7.0), InputTypeError, r"Frame.index must be an int .*got 7.0 \(float\)"),
        (dict(index=True), InputTypeError, r"Frame.index must be an int .*got True \(bool\)"),
        (dict(index=np.int64(7)), InputTypeError, r"Frame.index must be an int \(for a NumPy integer"),
        (dict(index=-1), ConfigError, r"Frame.index must be >= 0, got -1"),
        (dict(timestamp="now"), InputTypeError, r"Frame.timestamp must be a number of seconds, got 'now'"),
        (dict(monotonic=math.nan), ConfigError, r"Frame.monotonic must be a finite number .*got nan"),
        (dict(timestamp=math.inf), ConfigError, r"Frame.timestamp must be a finite number .*got inf"),
        (dict(position_s=math.nan), ConfigError, r"Frame.position_s must be a finite number .*got nan"),
        (dict(position_s="0.4"), InputTypeError, r"Frame.position_s must be a number .*got '0.4'"),
        (dict(source=None), InputTypeError, r"Frame.source must be a str, got None"),
        (dict(image=IMAGE.tolist()), InputTypeError, r"Frame.image must be an HxWx3 uint8 .*got list"),
        (dict(image=IMAGE[..., 0]), ConfigError, r"HxWx3 uint8 BGR image, got shape \(6, 8\) dtype uint8"),
        (dict(image=IMAGE[..., :1]), ConfigError, r"got shape \(6, 8, 1\) dtype uint8"),
        (dict(image=IMAGE.astype(np.float32)), ConfigError, r"got shape \(6, 8, 3\) dtype float32"),
        (dict(image=IMAGE[:0]), ConfigError, r"non-empty HxWx3 uint8 BGR image, got shape \(0, 8, 3\)"),
    ],
)
def test_a_wrong_field_is_refused_naming_it(changes: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _frame(**changes)
