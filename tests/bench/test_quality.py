"""Measured mIoU: CamVid with the real ESPNet checkpoint; never a one-frame 'Cityscapes' number."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtseg.bench.quality import NO_CITYSCAPES, camvid_miou
from rtseg.errors import ConfigError


def test_cityscapes_rows_say_why_there_is_no_number() -> None:
    assert NO_CITYSCAPES == "n/a (no Cityscapes val set here)"


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RTSEG_DATA"):
        camvid_miou(tmp_path)


@pytest.mark.data
@pytest.mark.slow
def test_espnet_camvid_test_miou_matches_the_reference(data_root: Path, camvid_root: Path) -> None:
    result = camvid_miou(data_root)
    assert result["images"] == 233 and result["input_size"] == "480x360"
    assert result["miou"] == pytest.approx(57.26, abs=0.01)  # REFERENCE.md, the authors' code
