"""Metadata for the authors' released checkpoints, which are plain state dicts without any.

Files are recognised by a digest of their tensors (names, dtypes, shapes and bytes, after the
state dict is unwrapped and a DataParallel ``module.`` prefix is stripped), so a renamed, re-saved
(``torch.save(torch.load(f))``) or DataParallel copy still gets the right preprocessing and
classes; the file's own SHA-256 is kept as a fast path for the unchanged files.

The numbers under ``metrics`` are references measured with the authors' own code
(../shared/data/REFERENCE.md); rtseg's tests reproduce them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..data.labels import CAMVID, CITYSCAPES, ClassSet
from ..data.preprocess import IMAGENET_RGB, Preprocessing

# The authors' test scripts compute (img - mean) / std / 255 on BGR images: the trailing /255 is real.
ESPNET_CITYSCAPES_INPUT = Preprocessing(
    channel_order="BGR",
    mean=(72.3923111, 82.90893555, 73.15840149),
    std=(45.3192215, 46.15289307, 44.91483307),
    post_scale=1 / 255,
    input_size=(1024, 512),
)
ESPNET_CAMVID_INPUT = Preprocessing(
    channel_order="BGR",
    mean=(110.331, 108.409, 105.033),
    std=(72.126, 72.691, 69.904),
    post_scale=1 / 255,
    input_size=(480, 360),
)
ESPNETV2_CITYSCAPES_INPUT = IMAGENET_RGB.with_input_size((1024, 512))

_ESPNET_SOURCE = {
    "source": "https://github.com/sacmehta/ESPNet",
    "licence": "MIT",
    "authors": "Mehta, Rastegari, Caspi, Shapiro, Hajishirzi (ECCV 2018)",
}
_ESPNETV2_SOURCE = {
    "source": "https://github.com/sacmehta/EdgeNets",
    "licence": "MIT",
    "authors": "Mehta, Rastegari, Shapiro, Hajishirzi (CVPR 2019)",
}


@dataclass(frozen=True)
class KnownCheckpoint:
    """An upstream checkpoint rtseg recognises by the digest of its tensors (or of its file)."""

    sha256: str  # of the file as the authors released it: a match skips hashing the tensors
    tensors_sha256: str  # checkpoint.tensors_sha256 of its state dict: survives re-saving
    filename: str
    model: str
    classes: ClassSet
    num_outputs: int
    preprocessing: Preprocessing
    provenance: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)


def _espnet(sha: str, tensors: str, q: int, model: str) -> KnownCheckpoint:
    folder = "decoder" if model == "espnet" else "encoder"
    return KnownCheckpoint(
        sha256=sha,
        tensors_sha256=tensors,
        filename=f"espnet/{folder}/espnet_p_2_q_{q}.pth",
        model=model,
        classes=CITYSCAPES,
        num_outputs=20,  # channel 19 is void and is never predicted
        preprocessing=ESPNET_CITYSCAPES_INPUT,
        provenance={**_ESPNET_SOURCE, "dataset": "cityscapes", "p": 2, "q": q},
    )


KNOWN_CHECKPOINTS: tuple[KnownCheckpoint, ...] = (
    _espnet(
        "8f3eb198fb15e5da7fa8d258d5f0fc4a4213e1124f415f6fc54d2772d585a7fc",
        "4188344dd09924b61060cc673680749448876b177f285375a737c2a3940a1d63",
        3,
        "espnet",
    ),
    _espnet(
        "0378be45080ca5edfc416e9ba06b04e74ec5e2ec4baf56597f25a894a8593942",
        "1e0fdc456f067496ba7a9fa4e1b963f6f41b077bf5ae23ba7cd613463a152246",
        5,
        "espnet",
    ),
    _espnet(
        "343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e",
        "d7dacfa7711da90d4ba95383e0c454b99bffc3269fbce54b8440e6a458612083",
        8,
        "espnet",
    ),
    _espnet(
        "5101e9bc90dd2a57d8460e70cdfaa743f76317bf806d2d1c4adb635c8d392e77",
        "dcfc9e26b49aa92088c2202192216cecbde7bc8a689eb56dc61aa2b4a90524ae",
        3,
        "espnet-c",
    ),
    _espnet(
        "ec028eb60b08a56583eb9d310f5f4f7c4bc70972009030c25f1414dc48c916d6",
        "915625f628e75091ff1e6eb38de32f6e332f3f1094eca1251daa1a4d5c5d3055",
        5,
        "espnet-c",
    ),
    _espnet(
        "836f28a2a31bd4fc8997001ab6b620d1f9b7b274a03b32d9f3a95c17a011b438",
        "d0c2cf45ac9e5be31788a5b6cf71617e335618720e836c77c841018c375e4324",
        8,
        "espnet-c",
    ),
    KnownCheckpoint(
        sha256="7d354a257170322086dcd4c1e89a482454cf2c9d30b085e70883878dd59301af",
        tensors_sha256="836205103a8f807cd966f461e03660b258d6cb2d0a9f785e78dbe0f45f38f80c",
        filename="espnet/decoder/espnet_p_2_q_8_camvid.pth",
        model="espnet",
        classes=CAMVID,
        num_outputs=12,  # channel 11 is void and is never predicted
        preprocessing=ESPNET_CAMVID_INPUT,
        provenance={**_ESPNET_SOURCE, "dataset": "camvid", "p": 2, "q": 8},
        metrics={
            "camvid/test": {"miou": 57.26, "pixel_accuracy": 87.65, "by": "authors' code, REFERENCE.md"},
            "camvid/val": {"miou": 69.35, "pixel_accuracy": 93.30, "by": "authors' code, REFERENCE.md"},
        },
    ),
    KnownCheckpoint(
        sha256="0918c833fed889e32901ce739b1784fdd2b79f95a9aea199a469ca3394dd7a14",
        tensors_sha256="b7c84be6c831a680069885f383dbb1aeba234b9ce8b429ff95ee6663493eb8a8",
        filename="espnetv2/espnetv2_s_1.0_city_1024x512.pth",
        model="espnetv2",
        classes=CITYSCAPES,
        num_outputs=20,
        preprocessing=ESPNETV2_CITYSCAPES_INPUT,
        provenance={**_ESPNETV2_SOURCE, "dataset": "cityscapes", "scale": 1.0},
    ),
    KnownCheckpoint(
        sha256="a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8",
        tensors_sha256="c00283df60c5b4e936da9a483756dac8c6fdad6a6e161d49526a1dc6670037a5",
        filename="espnetv2/espnetv2_s_2.0_city_1024x512.pth",
        model="espnetv2",
        classes=CITYSCAPES,
        num_outputs=20,
        preprocessing=ESPNETV2_CITYSCAPES_INPUT,
        provenance={**_ESPNETV2_SOURCE, "dataset": "cityscapes", "scale": 2.0},
        metrics={"cityscapes/val": {"miou": 66.4, "by": "authors' report (EdgeNets README)"}},
    ),
)


def find_known(digest: str, catalog: Iterable[KnownCheckpoint] = KNOWN_CHECKPOINTS) -> KnownCheckpoint | None:
    """The entry of ``catalog`` whose file SHA-256 or tensor digest is ``digest``, else None.

    Either digest is accepted so that a caller holding only the file's hash (a quick look before
    loading) and one holding the loaded tensors' digest (any re-saved copy) both find the entry.
    """
    return next((c for c in catalog if digest in (c.sha256, c.tensors_sha256)), None)
