"""The published Cityscapes quality/speed table (``bench/cityscapes_table.csv``), read and validated.

``rtseg/bench/cityscapes_table.csv`` links to it and is package data (setup.py; a wheel holds the
file itself), so an installed rtseg has the table; it is not looked up beside a checkout.

Every number in the CSV comes from the source named on its row; an empty cell means the source
does not publish it (or it could not be verified), never a guess. ``rtseg_model`` names the
registry model a row corresponds to, for the rows rtseg implements.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..models import list_models

TABLES = {"cityscapes": Path(__file__).resolve().parent / "cityscapes_table.csv"}
COLUMNS = (
    "model",
    "year",
    "miou_test",
    "miou_val",
    "resolution",
    "fps",
    "latency_ms",
    "gpu",
    "tensorrt",
    "source",
    "rtseg_model",
    "notes",
)
TENSORRT = ("yes", "no", "unknown")


@dataclass(frozen=True)
class PublishedRow:
    model: str
    year: int
    miou_test: float | None
    miou_val: float | None
    resolution: tuple[int, int] | None  # (width, height) of the speed measurement
    fps: float | None
    latency_ms: float | None
    gpu: str | None
    tensorrt: str
    source: str
    rtseg_model: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("PublishedRow.model must not be empty")
        if not 1990 <= self.year <= 2100:
            raise ConfigError(f"{self.model}: year must be in 1990..2100, got {self.year}")
        for name in ("miou_test", "miou_val"):
            v = getattr(self, name)
            if v is not None and not 0 < v < 100:
                raise ConfigError(f"{self.model}: {name} must be a percentage in (0, 100), got {v}")
        for name in ("fps", "latency_ms"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{self.model}: {name} must be positive, got {v}")
        if self.resolution is not None and min(self.resolution) <= 0:
            raise ConfigError(f"{self.model}: resolution must be positive WxH, got {self.resolution}")
        if self.tensorrt not in TENSORRT:
            raise ConfigError(f"{self.model}: tensorrt must be one of {TENSORRT}, got {self.tensorrt!r}")
        if not self.source:
            raise ConfigError(f"{self.model}: source must name the paper or repository")
        if self.rtseg_model is not None and self.rtseg_model not in list_models():
            raise ConfigError(
                f"{self.model}: rtseg_model must be a registry model ({', '.join(list_models())}), "
                f"got {self.rtseg_model!r}"
            )

    @property
    def miou(self) -> float | None:
        """The test mIoU where published, else the val mIoU."""
        return self.miou_test if self.miou_test is not None else self.miou_val

    @property
    def miou_split(self) -> str | None:
        if self.miou_test is not None:
            return "test"
        return "val" if self.miou_val is not None else None

    @property
    def resolution_text(self) -> str:
        return "" if self.resolution is None else f"{self.resolution[0]}x{self.resolution[1]}"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "year": self.year,
            "miou_test": self.miou_test,
            "miou_val": self.miou_val,
            "resolution": self.resolution_text or None,
            "fps": self.fps,
            "latency_ms": self.latency_ms,
            "gpu": self.gpu,
            "tensorrt": self.tensorrt,
            "source": self.source,
            "rtseg_model": self.rtseg_model,
            "notes": self.notes,
        }


def _number(text: str, column: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"column {column!r} must be a finite number or empty, got {text!r}")
    return value


def _resolution(text: str) -> tuple[int, int] | None:
    text = text.strip().lower()
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.split("x"))
    except ValueError:
        raise ConfigError(f"resolution must look like 1024x512, got {text!r}") from None
    return w, h


def load_table(path: str | Path) -> list[PublishedRow]:
    """Rows of a published-results CSV; errors name the line and the column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"published table {path} not found")
    try:  # utf-8-sig: spreadsheets save UTF-8 CSV with a byte-order mark
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the table as UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
    rows = []
    for raw in reader:
        line = reader.line_num  # of the file, blank lines and quoted line breaks included
        if None in raw or None in raw.values():  # csv fills a short row with None, keys a long one None
            fields = sum(v is not None for k, v in raw.items() if k is not None) + len(raw.get(None) or [])
            hint = " (a cell that holds a comma must be in double quotes)" if fields > len(header) else ""
            raise ConfigError(
                f"{path} line {line}: {fields} fields, expected {len(header)} like the header{hint}"
            )
        try:
            year = int(raw["year"])
        except ValueError:
            raise ConfigError(f"{path} line {line}: year must be an integer, got {raw['year']!r}") from None
        try:
            rows.append(
                PublishedRow(
                    model=raw["model"].strip(),
                    year=year,
                    miou_test=_number(raw["miou_test"], "miou_test"),
                    miou_val=_number(raw["miou_val"], "miou_val"),
                    resolution=_resolution(raw["resolution"]),
                    fps=_number(raw["fps"], "fps"),
                    latency_ms=_number(raw["latency_ms"], "latency_ms"),
                    gpu=raw["gpu"].strip() or None,
                    tensorrt=raw["tensorrt"].strip(),
                    source=raw["source"].strip(),
                    rtseg_model=raw["rtseg_model"].strip() or None,
                    notes=raw["notes"].strip(),
                )
            )
        except ConfigError as exc:
            raise ConfigError(f"{path} line {line}: {exc}") from None
    return rows


def table_path(name: str) -> Path:
    try:
        return TABLES[name]
    except KeyError:
        raise ConfigError(f"unknown table {name!r}; available: {', '.join(TABLES)}") from None


def implemented(rows: list[PublishedRow]) -> list[PublishedRow]:
    """Rows rtseg can measure here: a registry model and a published resolution."""
    return [r for r in rows if r.rtseg_model is not None and r.resolution is not None]
