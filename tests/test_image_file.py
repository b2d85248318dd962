from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.image_file import UnreadableImage, jpeg_is_truncated, read_bgr


def _scene() -> np.ndarray:
    """Texture in every row, so that rows a decoder fills with grey differ from the picture."""
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (5, 5), 0)


def _jpeg(**params: int) -> bytes:
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if params.get("progressive") else []
    ok, data = cv2.imencode(".jpg", _scene(), flags)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("progressive", [0, 1], ids=["baseline", "progressive"])
def test_a_jpeg_cut_short_is_refused(tmp_path: Path, progressive: int) -> None:
    """cv2.imread returned the rows after the cut as flat grey, and it was segmented as a frame."""
    data = _jpeg(progressive=progressive)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="JPEG is truncated"):
        read_bgr(path)
    path.write_bytes(data)
    np.testing.assert_array_equal(
        read_bgr(path), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    )


def test_a_thumbnail_end_marker_or_a_trailer_does_not_fool_the_check() -> None:
    data = _jpeg()
    # An APP1 segment (EXIF-like) that holds a whole small JPEG, end marker included, before the scan.
    thumbnail = _jpeg()[:200] + b"\xff\xd9"
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    with_thumbnail = data[:2] + app1 + data[2:]
    assert not jpeg_is_truncated(with_thumbnail)
    assert jpeg_is_truncated(with_thumbnail[: len(with_thumbnail) // 2])
    assert not jpeg_is_truncated(data + b"motion photo video after the image" * 10)
    assert jpeg_is_truncated(data[:40])  # cut inside the header segments


def test_a_float_image_is_named_as_such_not_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "depth.tiff"
    cv2.imwrite(str(path), np.random.default_rng(0).random((12, 16), dtype=np.float32))
    with pytest.raises(UnreadableImage, match=r"float32 with 1 channel\(s\).*convert it to an 8-bit image"):
        read_bgr(path)


def test_empty_corrupt_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UnreadableImage, match="the file is empty"):
        read_bgr(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UnreadableImage, match="truncated, corrupt or not an image"):
        read_bgr(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError):
        read_bgr(tmp_path / "missing.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(UnreadableImage):
        read_bgr(tmp_path / "folder.png")


def test_a_file_name_that_is_not_utf8_is_read(tmp_path: Path) -> None:
    """cv2.imread crashed the process on the lone surrogate Python gives such a name."""
    raw = tmp_path / b"caf\xe9.png".decode("utf-8", "surrogateescape")
    image = _scene()
    ok, data = cv2.imencode(".png", image)
    assert ok
    raw.write_bytes(data.tobytes())
    np.testing.assert_array_equal(read_bgr(raw), image)
