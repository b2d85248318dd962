"""Checkpoint files: rtseg's own format, the authors' plain state dicts, and clear failures.

rtseg's format is a plain dict that ``torch.load(..., weights_only=True)`` accepts:
``{"format": "rtseg.checkpoint", "format_version": 1, "meta": {...}, "state_dict": {...}}``.
``meta`` is ``WeightsMeta.to_dict()``: everything needed to use the weights without the code
that trained them (classes, palette, preprocessing, provenance, measured metrics).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import numbers
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write, atomic_write_bytes
from ..data.labels import ClassSet
from ..data.preprocess import Preprocessing
from ..errors import CheckpointError

FORMAT = "rtseg.checkpoint"
FORMAT_VERSION = 1
# The marker of rtseg train's resumable state files (OUT.state.pt), which are no weights file.
TRAIN_STATE_FORMAT = "rtseg.train-state"


@dataclass(frozen=True)
class WeightsMeta:
    """What a set of weights means: which architecture, which classes, which input."""

    model: str
    config: Mapping[str, Any]
    classes: ClassSet
    num_outputs: int
    preprocessing: Preprocessing
    provenance: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_outputs < len(self.classes):
            raise ValueError(
                f"WeightsMeta.num_outputs ({self.num_outputs}) must be >= the number of classes "
                f"({len(self.classes)}); extra outputs are void channels that are never predicted"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "config": dict(self.config),
            "classes": self.classes.to_dict(),
            "num_outputs": self.num_outputs,
            "preprocessing": self.preprocessing.to_dict(),
            "provenance": dict(self.provenance),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightsMeta:
        return cls(
            model=str(data["model"]),
            config=dict(data.get("config", {})),
            classes=ClassSet.from_dict(data["classes"]),
            num_outputs=int(data["num_outputs"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            provenance=dict(data.get("provenance", {})),
            metrics=dict(data.get("metrics", {})),
        )


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint's tensors plus its metadata (``None`` for an unknown plain state dict)."""

    path: Path
    sha256: str
    state_dict: dict[str, Tensor]
    meta: WeightsMeta | None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes: torch.load does not check the archive's CRCs,
    so a flipped bit in a weight would otherwise load silently and give wrong masks."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _state_dict_from(obj: Any, path: Path) -> dict[str, Tensor]:
    # Common wrappers: {"state_dict": ...} (Lightning, many repos) and {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a state dict; entries that are not tensors: {bad[:5]}")
    # DataParallel prefixes every name with "module.".
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def meta_sha256(meta: Mapping[str, Any]) -> str:
    """A digest of the metadata as canonical JSON: the tensors' digest leaves it out, and a bit
    flipped in a stored mean loaded silently (72.39 read as 76.39: every mask off)."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def read_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Read any supported checkpoint file; every failure names the file and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"weights path is not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file is empty: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip = head == b"PK\x03\x04"  # torch.save since 1.6
    is_legacy = head[:1] == b"\x80"  # a pickle stream (older torch.save)
    if not (is_zip or is_legacy):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (it starts with bytes {head!r}, "
            "not a zip archive or pickle stream)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        text = str(exc)
        if "weights_only" in text.lower() or "Unsupported global" in text:
            raise CheckpointError(
                f"{path}: the checkpoint holds Python objects besides tensors; rtseg only loads "
                "tensor-only files (weights_only=True) so that a checkpoint cannot run code. "
                "Re-save its state_dict with torch.save(model.state_dict(), path)"
            ) from None
        if is_zip:
            _refuse_other_zip(path)
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read the checkpoint; the file is truncated or corrupt ({reason})"
        ) from None
    if isinstance(obj, Mapping) and obj.get("format") == TRAIN_STATE_FORMAT:
        # Its "model" entry unwrapped like a plain state dict loaded with a warning, numbered
        # classes and another model's preprocessing: labels that were half wrong.
        best = path.with_name(path.name.removesuffix(".state.pt") + ".pt")
        raise CheckpointError(
            f"{path} is a training state (for rtseg train --resume), not weights: use the weights "
            f"file written beside it ({best.name}), which carries the classes and preprocessing"
        )
    digest = sha256_of(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        version = obj.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: rtseg checkpoint format_version {version!r} is not supported "
                f"(this rtseg reads version {FORMAT_VERSION})"
            )
        if not isinstance(obj.get("meta"), Mapping):
            raise CheckpointError(
                f"{path}: invalid rtseg checkpoint: the 'meta' entry is missing or not a dict "
                f"(got {type(obj.get('meta')).__name__}); save weights with rtseg.models.save_checkpoint"
            )
        # Before parsing: a corrupt entry is named as corruption, not as invalid metadata.
        stored_meta = obj.get("meta_sha256")  # older rtseg files have none: nothing to check
        if stored_meta is not None and stored_meta != meta_sha256(obj["meta"]):
            raise CheckpointError(
                f"{path}: the metadata (classes, preprocessing) does not match the checksum stored "
                "with it; the file is corrupt (a bad copy or a failing disk): copy it again"
            )
        try:
            meta = WeightsMeta.from_dict(obj["meta"])
        except KeyError as exc:  # str(KeyError) is only the quoted key: say what it means
            raise CheckpointError(
                f"{path}: invalid rtseg checkpoint metadata: the key {exc.args[0]!r} is missing"
            ) from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: invalid rtseg checkpoint metadata: {exc}") from None
        state_dict = _state_dict_from(obj.get("state_dict"), path)
        stored = obj.get("tensors_sha256")  # older rtseg files have none: nothing to check
        if stored is not None and stored != tensors_sha256(state_dict):
            raise CheckpointError(
                f"{path}: the weights do not match the checksum stored with them; the file is "
                "corrupt (a bad copy or a failing disk): copy it again"
            )
        return LoadedCheckpoint(path, digest, state_dict, meta)
    return LoadedCheckpoint(path, digest, _state_dict_from(obj, path), None)


def _refuse_other_zip(path: Path) -> None:
    """A readable zip without torch.save's ``<name>/data.pkl`` (an .npz, a Keras or ONNX bundle
    renamed .pth) is another format, not a damaged checkpoint: say so, with what it holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return  # not a readable zip: truncated or corrupt, as the caller says
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise CheckpointError(
        f"{path}: a zip archive but not a PyTorch checkpoint (torch.save writes a */data.pkl "
        f"member; this one holds {len(names)} member{'' if len(names) == 1 else 's'}: {shown or 'none'})"
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Tensor],
    meta: WeightsMeta,
    *,
    half: bool = False,
) -> Path:
    """Write an rtseg checkpoint atomically (temporary file, then rename): never half a file.

    ``half`` stores floating-point tensors as fp16 to halve the size of shipped weights; they are
    cast back to the model's dtype on load.
    """
    tensors = {
        k: (v.detach().to("cpu").half() if half and v.is_floating_point() else v.detach().to("cpu"))
        for k, v in state_dict.items()
    }
    plain = plain_metadata(meta.to_dict(), f"{path}: meta")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": plain,
        "meta_sha256": meta_sha256(plain),
        "state_dict": tensors,
        "tensors_sha256": tensors_sha256(tensors),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    try:  # read_checkpoint loads with weights_only=True: a file it refuses is never written
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not written: the checkpoint would not load with weights_only=True ({reason})"
        ) from None
    return atomic_write_bytes(path, data)


def plain_metadata(value: Any, where: str) -> Any:
    """``value`` with NumPy scalars and arrays as Python numbers and lists, containers rebuilt.

    torch.load(weights_only=True) refuses NumPy scalars: an ``output_stride=np.int64(8)`` in
    ``meta.config`` wrote a checkpoint that read_checkpoint then rejected as holding Python objects.
    Anything else that is not None, bool, int, float, str, a list, tuple or dict is refused here,
    with ``where`` (the key path) in the message.
    """
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {
            plain_metadata(k, f"{where} key {k!r}"): plain_metadata(v, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        items = [plain_metadata(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise CheckpointError(
        f"{where}: expected None, a bool, number, string, list, tuple or dict, got "
        f"{type(value).__module__}.{type(value).__qualname__} {value!r}: a weights_only checkpoint "
        "cannot hold it"
    )


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def check_state_dict_fits(
    expected: Mapping[str, Tensor],
    actual: Mapping[str, Tensor],
    *,
    path: Path,
    model: str,
    num_outputs: int | None = None,
) -> None:
    """Raise CheckpointError listing the first missing/unexpected keys, shape mismatches and
    tensors whose kind of number (float, integer, bool) differs from the model's."""
    # Checkpoints from PyTorch < 0.4.1 have no BatchNorm step counters; they carry no weights.
    missing = [k for k in expected if k not in actual and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in actual if k not in expected]
    shapes = [
        f"{k}: model expects {tuple(expected[k].shape)}, checkpoint has {tuple(actual[k].shape)}"
        for k in expected
        if k in actual and expected[k].shape != actual[k].shape
    ]
    # A cast on load would truncate every weight of an integer tensor saved for a float one (or
    # the reverse) without a word: only a change of precision within a kind is cast.
    kinds = [
        f"{k}: model expects {expected[k].dtype}, checkpoint has {actual[k].dtype}"
        for k in expected
        if k in actual and _dtype_kind(expected[k]) != _dtype_kind(actual[k])
    ]
    if not (missing or unexpected or shapes or kinds):
        return
    lines = [f"{path} does not fit model {model!r}:"]
    if missing:
        lines.append(f"  {len(missing)} keys missing from the checkpoint, first: {missing[:5]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys in the checkpoint, first: {unexpected[:5]}")
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatches, first:")
        lines.extend(f"    {s}" for s in shapes[:5])
        outputs = None if missing or unexpected else _other_output_count(expected, actual, num_outputs)
        if outputs is not None:
            lines.append(
                f"  only the number of outputs differs (the checkpoint has {outputs}, the model "
                f"{num_outputs}): pass num_classes={outputs} (or the number of real classes, if "
                "some outputs are void)"
            )
    if kinds:
        lines.append(f"  {len(kinds)} tensors of another kind of number (float, integer, bool), first:")
        lines.extend(f"    {s}" for s in kinds[:5])
    raise CheckpointError("\n".join(lines))


def _other_output_count(
    expected: Mapping[str, Tensor], actual: Mapping[str, Tensor], num_outputs: int | None
) -> int | None:
    """The checkpoint's output count when every shape mismatch is the model's ``num_outputs``
    against one other number in the same dimension: a state dict of another class count (an
    11-class ENet loaded as 19 gave only a list of classifier shapes)."""
    found: set[int] = set()
    for k, e in expected.items():
        if k not in actual or e.shape == actual[k].shape:
            continue
        a = actual[k].shape
        diff = [i for i in range(len(e.shape)) if len(a) == len(e.shape) and a[i] != e.shape[i]]
        if len(diff) != 1 or e.shape[diff[0]] != num_outputs:
            return None
        found.add(int(a[diff[0]]))
    return found.pop() if len(found) == 1 else None


def _dtype_kind(tensor: Tensor) -> str:
    if tensor.dtype == torch.bool:
        return "bool"
    if tensor.is_floating_point():
        return "float"
    return "complex" if tensor.is_complex() else "integer"


# The dtypes CPUs compute in float32's range: float16 has its own (subnormal below 6.1e-5, values
# a network uses) and is converted before any arithmetic, so it is left alone.
SUBNORMAL_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# What the log line that reports them says, wherever they are set to 0.
SUBNORMAL_REASON = "CPUs compute with them many times slower; the outputs do not change"


def without_subnormals(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """The state dict with subnormal floats set to 0, and how many there were.

    The authors' ESPNet checkpoints hold 5,865 to 20,475 weights below the smallest normal float
    (3-6 % of them). x86 CPUs compute with subnormals through a slow microcode assist: ESPNet's
    deep stage took 149 ms on torch and 84 ms on ONNX Runtime at 480x360 with them (the CamVid
    weights), 38 and 30 ms without; 638 and 377 ms at 1024x512 (Cityscapes), 131 and 92 ms
    without. A subnormal's contribution is below float32 resolution beside any normal term: the
    outputs are the same, bit for bit on both.
    """
    out: dict[str, Tensor] = {}
    count = 0
    for name, tensor in state_dict.items():
        if tensor.dtype in SUBNORMAL_DTYPES:
            subnormal = (tensor != 0) & (tensor.abs() < torch.finfo(tensor.dtype).tiny)
            found = int(subnormal.sum())
            if found:
                tensor = tensor.masked_fill(subnormal, 0)
                count += found
        out[name] = tensor
    return out, count


Module = TypeVar("Module", bound=nn.Module)


def without_subnormal_weights(model: Module) -> tuple[Module, int]:
    """``model`` itself when none of its weights is subnormal, else a copy with them set to 0 (the
    caller's network stays as it is), and how many there were: for networks built in memory,
    which do not pass through ``get_model``'s loading."""
    state, count = without_subnormals(model.state_dict())
    if not count:
        return model, 0
    clone = copy.deepcopy(model)
    clone.load_state_dict(state)
    return clone, count


def nonfinite_tensors(tensors: Mapping[str, Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinite values."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(state_dict: Mapping[str, Tensor], *, path: Path) -> None:
    """Refuse NaN or infinite weights: they load without complaint (a run that diverged before it
    was saved, or bytes corrupted in a plain state dict, which carries no checksum) and then label
    every pixel with class 0."""
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensors hold NaN or infinite values, first: {bad[:5]}; the weights "
            "come from a diverged training run or the file is corrupt"
        )
