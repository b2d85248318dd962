"""The published Cityscapes table: the issue's seed rows exactly, the modern rows, validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtseg.bench.table import COLUMNS, implemented, load_table, table_path
from rtseg.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent.parent

# The seed table of issue 6: model, year, mIoU %, FPS, ms.
SEED = [
    ("DeepLab", 2014, 63.1, 0.25, 4000),
    ("SegNet", 2015, 57.0, 16.7, 60),
    ("CRF-RNN", 2015, 62.5, 1.4, 700),
    ("Dilation10", 2015, 67.1, 0.25, 4000),
    ("ENet", 2016, 58.3, 76.9, 13),
    ("FCN", 2016, 65.3, 2, 500),
    ("FRRN", 2016, 71.8, 2.1, 469),
    ("ICNet", 2017, 70.6, 30.3, 33),
    ("PSPNet", 2017, 81.2, 0.78, 1288),
    ("ENet + Lovász-Softmax", 2018, 63.1, 76.9, 13),
    ("LEDNet", 2019, 70.6, 71, 14),
    ("ESNet", 2019, 70.7, 63, 16),
    ("FasterSeg", 2019, 71.5, 163.9, 6.1),
]
MODERN = [
    "ESPNet",
    "ESPNetv2",
    "ERFNet",
    "BiSeNetV2",
    "DDRNet-23-slim",
    "PIDNet-S",
    "PP-LiteSeg-T",
    "STDC1-Seg",
    "DeepLabV3+ MobileNetV2",
]


@pytest.fixture(scope="module")
def rows():
    return load_table(table_path("cityscapes"))


def test_an_installed_rtseg_reads_the_table_it_ships(tmp_path: Path) -> None:
    """The table was read from the checkout's bench/ folder, which a wheel does not carry: an
    installed rtseg could not run --table or --plot. setup.py's build (what a wheel packs) has it."""
    build = tmp_path / "lib"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    code = (
        "import rtseg; from rtseg.bench.table import load_table, table_path; "
        "print(rtseg.__file__); print(len(load_table(table_path('cityscapes'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(build)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    where, count = done.stdout.split()
    assert Path(where).is_relative_to(build)  # the built copy, not this checkout
    assert int(count) == len(SEED) + len(MODERN)


def test_seed_rows_exactly(rows) -> None:
    by_name = {r.model: r for r in rows}
    for model, year, miou, fps, ms in SEED:
        row = by_name[model]
        assert (row.year, row.miou, row.fps, row.latency_ms) == (year, miou, fps, ms), model
        assert row.miou_split == "test"
    assert [r.model for r in rows[: len(SEED)]] == [s[0] for s in SEED]


def test_modern_rows_and_their_sources(rows) -> None:
    names = [r.model for r in rows]
    for model in MODERN:
        assert model in names
    assert len(rows) == len(SEED) + len(MODERN)
    for row in rows:
        assert "arXiv:" in row.source or "https://" in row.source, row.model
        assert row.miou is not None, row.model
        assert row.notes, f"{row.model}: a row says where its numbers come from and what is missing"


def test_implemented_rows_are_measurable(rows) -> None:
    measured = {r.model: (r.rtseg_model, r.resolution) for r in implemented(rows)}
    assert measured == {
        "ENet": ("enet", (1024, 512)),
        "ICNet": ("icnet-r50", (2048, 1024)),
        "ESPNet": ("espnet", (1024, 512)),
        "ESPNetv2": ("espnetv2", (1024, 512)),
    }
    # The model zoo's MobileNetV2 DeepLabV3+ has no ASPP and no decoder, rtseg's has both: its
    # measured FPS beside the zoo's mIoU (and drawn at it) presented two networks as one.
    deeplab = next(r for r in rows if r.model == "DeepLabV3+ MobileNetV2")
    assert deeplab.rtseg_model is None and "not rtseg's deeplabv3plus-mobilenetv2" in deeplab.notes


def _write(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(",".join(COLUMNS) + "\n" + line + "\n", encoding="utf-8")
    return path


def test_validation_names_line_and_column(tmp_path: Path) -> None:
    good = "X,2020,70.0,,1024x512,30,,GPU,no,arXiv:1,,note"
    assert load_table(_write(tmp_path, good))[0].resolution == (1024, 512)
    with pytest.raises(ConfigError, match=r"line 2.*tensorrt"):
        load_table(_write(tmp_path, good.replace(",no,", ",maybe,")))
    with pytest.raises(ConfigError, match=r"line 2.*miou_test"):
        load_table(_write(tmp_path, good.replace("70.0", "170.0")))
    with pytest.raises(ConfigError, match=r"line 2.*'fps'"):
        load_table(_write(tmp_path, good.replace(",30,", ",fast,")))
    with pytest.raises(ConfigError, match="rtseg_model"):
        load_table(_write(tmp_path, good.replace("arXiv:1,,", "arXiv:1,nonet,")))
    with pytest.raises(ConfigError, match="unknown table"):
        table_path("ade20k")


def test_every_shipped_row_has_its_cells_in_their_columns(rows) -> None:
    # An unquoted comma in a cell shifts the rest of the row into extra fields, which were dropped.
    deeplab = next(r for r in rows if r.model == "DeepLabV3+ MobileNetV2")
    assert deeplab.notes.startswith("model-zoo checkpoint: output stride 16, single scale, no ASPP")
    assert deeplab.notes.endswith("no test mIoU published")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "X,2020,70.0,,1024x512,30,,GPU,no,arXiv:1,,a note, with a comma",
            r"line 2: 13 fields, expected 12.*quotes",
        ),
        ("X,2020,70.0,,1024x512,30,,GPU,no", r"line 2: 9 fields, expected 12 like the header$"),
        ("X,2020,70.0,,1024x512,inf,,GPU,no,arXiv:1,,note", r"line 2: column 'fps' must be a finite number"),
        (
            "X,2020,70.0,,1024x,30,,GPU,no,arXiv:1,,note",
            r"t\.csv line 2: resolution must look like 1024x512, got '1024x'$",
        ),
        ("\nX,2020,70.0,,1024x512,30,,GPU,maybe,arXiv:1,,note", r"line 3: X: tensorrt"),  # after a blank line
    ],
)
def test_malformed_rows_name_the_line_and_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_table(_write(tmp_path, text))


def test_table_encoding(tmp_path: Path) -> None:
    path = _write(tmp_path, "X,2020,70.0,,1024x512,30,,GPU,no,arXiv:1,,note")
    path.write_bytes("\ufeff".encode() + path.read_bytes())  # a spreadsheet's "CSV UTF-8"
    assert load_table(path)[0].model == "X"
    path.write_bytes(b"\xff\xfe" + ",".join(COLUMNS).encode("utf-16-le"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_table(path)
