"""`rtseg calibrate`: the frame list, the int8 QDQ graphs of each target, and the TensorRT entropy
cache reported as skipped on a machine without TensorRT or a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtseg.cli import main
from rtseg.engine.calibration import LIST_HEADER, CalibrationList
from rtseg.models import get_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGES = ("low", "deep", "head")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Engine and calibration folders shared by the module (the targets reuse one calibration)."""
    root = tmp_path_factory.mktemp("calibrate")
    paths = {"engines": root / "engines", "calibration": root / "calibration", "root": root}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RTSEG_ENGINE_DIR", str(root / "default-engines"))
        mp.setenv("RTSEG_CALIBRATION_DIR", str(paths["calibration"]))
        yield paths


@pytest.fixture(scope="module")
def weights(dirs: dict[str, Path]) -> Path:
    torch.manual_seed(0)
    model = get_model("espnet", num_classes=11)
    return save_checkpoint(dirs["root"] / "espnet_small.pt", model.state_dict(), model.meta)


@pytest.fixture(scope="module")
def images(dirs: dict[str, Path]) -> Path:
    folder = dirs["root"] / "data" / "frames"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:02d}.png"), cv2.resize(coarse, (96, 72)))
    return folder


def _calibrate(weights: Path, images: Path, engines: Path, *extra: str) -> int:
    return main(
        [
            *("calibrate", "--weights", str(weights), "--images", str(images), "--num", "4"),
            *("--size", "64x48", "--engine-dir", str(engines), *extra),
        ]
    )


def _graphs(out: str, target: str) -> list[Path]:
    lines = out.splitlines()
    start = lines.index(f"int8 QDQ graphs for {target}:")
    found = []
    for stage, line in zip(STAGES, lines[start + 1 : start + 4], strict=True):
        assert line.startswith(f"  {stage}: ") and "(scheme " in line, line
        found.append(Path(line.split(": ", 1)[1].split("  (scheme", 1)[0]))
    return found


def test_cpu_target_writes_the_list_and_the_int8_graphs(
    weights: Path, images: Path, dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    list_path = dirs["root"] / "lists" / "list.txt"
    rc = _calibrate(weights, images, dirs["engines"], "--targets", "cpu", "--list", str(list_path))
    assert rc == 0
    out = capsys.readouterr().out
    calib = CalibrationList.load(list_path)
    assert list_path.read_text().splitlines()[:2] == [LIST_HEADER, "# images: ../data/frames"]
    assert calib.source == images.resolve() and calib.entries == ("00.png", "01.png", "03.png", "04.png")
    assert f"calibration list: {list_path} (4 frames, id {calib.id})" in out
    graphs = _graphs(out, "cpu")
    for stage, path in zip(STAGES, graphs, strict=True):
        assert path.parent == dirs["engines"] and path.is_file() and Path(f"{path}.json").is_file()
        assert f"-64x48-int8_{calib.id}u-onnx-any-ort" in path.name and path.name.endswith(f".{stage}.onnx")
    assert "int8 QDQ graphs for tensorrt:" not in out
    assert "TensorRT entropy cache: skipped (tensorrt is not in --targets)" in out
    ranges = sorted((dirs["calibration"] / "cache").glob("*.ranges.json"))  # beside their lock files
    assert len(ranges) == 3 and all(f".{calib.id}." in p.name for p in ranges)
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in ranges)  # shared, like the engine cache
    assert "Collecting tensor data" not in out and "Percentile" not in out  # onnxruntime's own prints


def test_tensorrt_target_writes_symmetric_graphs_and_skips_the_entropy_cache(
    weights: Path, images: Path, dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = _calibrate(weights, images, dirs["engines"], "--targets", "tensorrt", "--device", "cuda")
    assert rc == 0
    out = capsys.readouterr().out
    default_list = dirs["calibration"] / "espnet-data-frames-4.txt"  # no --list: calibration/<...>
    calib = CalibrationList.load(default_list)
    graphs = _graphs(out, "tensorrt")
    assert all(f"-int8_{calib.id}s-onnx-any-ort" in p.name and p.is_file() for p in graphs)
    skipped = [line for line in out.splitlines() if line.startswith("TensorRT entropy cache: skipped (")]
    assert len(skipped) == 1, out
    if not torch.cuda.is_available():
        assert "needs" in skipped[0]  # TensorRT or a GPU, named with how to get it
    assert f"--calibration {default_list}` on a GPU machine" in skipped[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num", "0"], "--num must be positive, got 0"),
        (["--num", "7"], "asked for 7 calibration frames but the source has only 6"),
    ],
)
def test_bad_requests_are_one_line_errors(
    weights: Path,
    images: Path,
    dirs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    argv = ["calibrate", "--weights", str(weights), "--images", str(images), *args]
    assert main([*argv, "--engine-dir", str(dirs["root"] / "unused")]) == 2
    err = capsys.readouterr().err
    assert f"rtseg calibrate: error: {message}" in err and len(err.strip().splitlines()) == 1
    assert not (dirs["root"] / "unused").exists()


def test_a_missing_image_folder_is_named(
    weights: Path, dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = dirs["root"] / "nowhere"
    assert main(["calibrate", "--weights", str(weights), "--images", str(missing)]) == 2
    assert f"calibration image folder not found: {missing}" in capsys.readouterr().err
    one = dirs["root"] / "one.png"
    cv2.imwrite(str(one), np.zeros((8, 8, 3), np.uint8))
    assert main(["calibrate", "--weights", str(weights), "--images", str(one)]) == 2
    assert f"calibration images: {one} is a file; give the folder" in capsys.readouterr().err
    assert main(["calibrate", "--weights", str(weights), "--video", str(one)]) == 2
    assert "for still images give their folder with --images" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["the weights", "a calibration image", "the video"])
def test_a_list_over_an_input_is_refused_before_anything_is_written(
    weights: Path, images: Path, dirs: dict[str, Path], capsys: pytest.CaptureFixture[str], target: str
) -> None:
    """--list naming the --weights checkpoint (or the --video, or one of the images) replaced it
    by the frame list once the graphs were built."""
    work = dirs["root"] / f"over-{target.replace(' ', '-')}"
    work.mkdir()
    own = work / "w.pt"
    own.write_bytes(weights.read_bytes())
    folder = work / "frames"
    folder.mkdir()
    for image in sorted(images.iterdir())[:4]:  # --num 4 of 4: every image is a calibration frame
        (folder / image.name).write_bytes(image.read_bytes())
    video = work / "in.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    frames = ["--images", str(folder)] if target != "the video" else ["--video", str(video)]
    listed, message = {
        "the weights": (work / "frames" / ".." / "w.pt", "an input (--weights)"),
        "a calibration image": (folder / "01.png", "an input (--images)"),
        "the video": (video, "an input (--video)"),
    }[target]
    engines = work / "engines"
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    argv = ["calibrate", "--weights", str(own), *frames, "--num", "4", "--size", "64x48"]
    assert main([*argv, "--engine-dir", str(engines), "--targets", "cpu", "--list", str(listed)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rtseg calibrate: error: --list {listed} would overwrite ") and message in err, err
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == before
    assert not engines.exists()


@pytest.mark.parametrize("where", ["missing-parent", "file-parent", "folder"])
def test_an_unwritable_list_is_a_one_line_error(
    weights: Path, images: Path, dirs: dict[str, Path], capsys: pytest.CaptureFixture[str], where: str
) -> None:
    blocker = dirs["root"] / "blocker"
    blocker.write_text("")
    target = {
        "missing-parent": Path("/proc/rtseg-nowhere/list.txt"),
        "file-parent": blocker / "list.txt",
        "folder": dirs["root"],
    }[where]
    unused = dirs["root"] / "unused-list"
    assert _calibrate(weights, images, unused, "--targets", "cpu", "--list", str(target)) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtseg calibrate: error: ") and len(err.strip().splitlines()) == 1, err
    assert str(target) in err and "--list" in err
    assert not unused.exists()


def test_an_unreadable_frame_leaves_no_list_behind(
    weights: Path, dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = dirs["root"] / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG not really")
    (folder / "b.png").write_bytes(b"")
    list_path = dirs["root"] / "lists" / "broken.txt"
    argv = ["calibrate", "--weights", str(weights), "--images", str(folder), "--num", "2"]
    argv += ["--size", "64x48", "--engine-dir", str(dirs["engines"]), "--targets", "cpu"]
    assert main([*argv, "--list", str(list_path)]) == 2
    captured = capsys.readouterr()
    assert f"calibration image {folder / 'a.png'} is missing or unreadable" in captured.err
    assert not list_path.exists() and "calibration list:" not in captured.out


def test_a_failed_run_puts_back_the_list_it_would_have_replaced(
    weights: Path, images: Path, dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The list was written before the frames were read: a run that then failed left the old list
    replaced by one without graphs, orphaning the int8 builds made from the old one."""
    folder = dirs["root"] / "half-broken"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((72, 96, 3), 90, np.uint8))
    (folder / "b.png").write_bytes(b"\x89PNG not really")
    list_path = dirs["root"] / "lists" / "kept.txt"
    CalibrationList.from_images(images, 4).save(list_path)
    before = list_path.read_bytes()
    argv = ["calibrate", "--weights", str(weights), "--images", str(folder), "--num", "2"]
    argv += ["--size", "64x48", "--engine-dir", str(dirs["engines"]), "--targets", "cpu"]
    assert main([*argv, "--list", str(list_path)]) == 2
    assert "is missing or unreadable" in capsys.readouterr().err
    assert list_path.read_bytes() == before


def test_the_default_list_of_another_source_is_not_replaced(
    weights: Path,
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RTSEG_CALIBRATION_DIR", str(tmp_path / "calibration"))
    other = tmp_path / "elsewhere" / "data" / "frames"  # the same folder names as `images`
    other.mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(other / f"{i:02d}.png"), np.full((72, 96, 3), 50 * i, np.uint8))
    default_list = tmp_path / "calibration" / "espnet-data-frames-4.txt"
    CalibrationList.from_images(other, 4).save(default_list)
    before = default_list.read_bytes()
    assert _calibrate(weights, images, tmp_path / "engines") == 2
    err = capsys.readouterr().err
    assert f"{default_list} already holds the calibration list of {other.resolve()}" in err
    assert "pass --list" in err and default_list.read_bytes() == before
