"""Source options, in a URI's query or as arguments: a bad one is a ConfigError naming it, never a
value quietly fixed or a failure at the first frame."""

from __future__ import annotations

import numpy as np
import pytest

from rtseg.errors import ConfigError
from rtseg.source import open_source


@pytest.mark.parametrize(
    "uri, message",
    [
        ("synthetic://drive?size=12x", r"option size must be WIDTHxHEIGHT.*got '12x'"),
        ("synthetic://drive?size=64x48x3", r"option size must be WIDTHxHEIGHT.*got '64x48x3'"),
        ("synthetic://drive?size=-64x48", r"option size must be WIDTHxHEIGHT.*got '-64x48'"),
        ("synthetic://drive?size=16x16", r"option size must be at least 32x32, got '16x16'"),
        ("synthetic://drive?fps=-1", r"option fps must be a positive finite number.*got '-1'"),
        ("synthetic://drive?fps=0", r"option fps must be a positive finite number.*got '0'"),
        ("synthetic://drive?fps=nan", r"option fps must be a positive finite number.*got 'nan'"),
        ("synthetic://drive?fps=", r"option fps must be a positive finite number.*got ''"),
        ("synthetic://drive?seed=-1", r"option seed must be a whole number >= 0, got '-1'"),
        ("synthetic://drive?seed=1.5", r"option seed must be a whole number >= 0, got '1.5'"),
        ("synthetic://drive?frames=0", r"option frames must be a whole number of frames >= 1, got '0'"),
        ("synthetic://drive?loop=maybe", r"unknown option\(s\) \['loop'\]; allowed: size, fps, seed, frames"),
        ("synthetic://drive?fps=10&fps=20", r"option\(s\) \['fps'\] given more than once"),
        ("camera://0?width=-640", r"option width must be a whole number of pixels >= 1, got '-640'"),
        ("camera://0?height=480.5", r"option height must be a whole number of pixels >= 1, got '480.5'"),
        ("camera://0?fps=0", r"option fps must be a positive number of frames per second, got '0'"),
        ("camera://0?exposure=3", r"unknown option\(s\) \['exposure'\]; allowed: width, height, fps"),
    ],
)
def test_bad_query_options_are_config_errors_naming_the_option(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_source(uri)


def test_good_query_options_are_taken_as_given() -> None:
    with open_source("synthetic://drive?size=64X48&fps=12.5&seed=0&frames=2") as src:
        assert src.info.size == (64, 48) and src.info.fps == 12.5 and src.info.frame_count == 2
        assert len(list(src)) == 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"loop": "maybe"}, r"loop must be True or False, got 'maybe'"),
        ({"realtime": 1}, r"realtime must be True or False, got 1"),
        (
            {"resize": (32.0, 24.0)},
            r"resize must be \(width, height\) with positive integers, got \(32.0, 24.0\)",
        ),
        ({"resize": (True, 24)}, r"resize must be \(width, height\) with positive integers"),
        ({"resize": 32}, r"resize must be \(width, height\) with positive integers, got 32"),
        ({"reconnect": 1.5}, r"reconnect must be a whole number of attempts >= 0, got 1.5"),
    ],
)
def test_bad_arguments_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_source("synthetic://drive?size=64x48", **options)


def test_numpy_integers_and_bools_are_accepted() -> None:
    with open_source(
        "synthetic://drive?size=64x48&frames=1", resize=(np.int64(32), np.int32(24)), loop=np.bool_(False)
    ) as src:
        assert next(src).image.shape == (24, 32, 3)
