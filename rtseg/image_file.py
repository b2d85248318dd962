"""Reading one still image from disk as BGR uint8, refusing what OpenCV would silently accept.

``cv2.imread`` decodes a JPEG cut short as a picture whose missing rows are flat grey, with only a
libjpeg warning that names no file, and it crashes on a file name that is not valid UTF-8. The
bytes are read by Python (any name the file system holds) and checked before they are decoded.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_START_OF_SCAN = 0xDA
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length


class UnreadableImage(ValueError):
    """Why an image file cannot be used; the caller names the file and raises its own error type."""


def jpeg_is_truncated(data: bytes) -> bool:
    """True when a JPEG ends before its end-of-image marker.

    Walks the marker segments to the first start-of-scan and looks for the end marker after it,
    so an EXIF thumbnail's own end marker before the scan does not count, and data a camera
    appends after the end (a motion photo's video) does not hide it. Entropy-coded data cannot
    hold the end marker (0xFF is stuffed there), so it marks the end of the image, not a chance
    byte pair."""
    position = len(_JPEG_START)
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False  # not a marker: malformed, which the decoder judges
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        elif marker == _START_OF_SCAN:
            return data.find(_JPEG_END, position) == -1
        elif marker in _STANDALONE_MARKERS:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return True  # the segments run past the end of the file


def read_bgr(path: Path) -> np.ndarray:
    """The image as BGR uint8 (grey, 16-bit and alpha images converted, as ``cv2.imread`` does).

    Raises FileNotFoundError for a missing file (callers word that themselves) and
    UnreadableImage for one that is empty, truncated, corrupt or of a sample format that has no
    8-bit colour reading (a float TIFF holds depths or scores, whose range only its writer knows)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise UnreadableImage(error.strerror or str(error)) from None
    if not data:
        raise UnreadableImage("the file is empty")
    if data.startswith(_JPEG_START) and jpeg_is_truncated(data):
        raise UnreadableImage("the JPEG is truncated (it ends before its end-of-image marker)")
    encoded = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if image is not None:
        return image
    raw = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if raw is not None:
        channels = 1 if raw.ndim == 2 else raw.shape[2]
        raise UnreadableImage(
            f"its samples are {raw.dtype} with {channels} channel(s), which have no 8-bit colour "
            "reading; convert it to an 8-bit image"
        )
    raise UnreadableImage("truncated, corrupt or not an image")
