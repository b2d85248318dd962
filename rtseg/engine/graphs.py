"""The three stages as modules with flat tensor inputs and outputs: what backends compile.

``LowGraph`` takes the uint8 NHWC BGR frame and normalises inside the graph; ``HeadGraph`` ends
in uint8 class labels at the model's output resolution (argmax over the real classes inside the
engine; a void channel is never predicted), optionally with the logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..data.preprocess import Normalize, Preprocessing
from ..models.base import Features, StagedSegmenter


class _RecordingDict(dict):
    """A dict that remembers which keys were read: finds what the head really consumes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Tensor:
        self.read.add(key)
        return super().__getitem__(key)


@torch.inference_mode()
def head_low_inputs(model: StagedSegmenter, input_size: tuple[int, int]) -> tuple[str, ...]:
    """Names of the low features ``forward_head`` reads, in StageSpec order."""
    weight = next(model.parameters())  # not the default dtype: a caller's may be float64
    x = torch.zeros(1, 3, input_size[1], input_size[0], dtype=weight.dtype, device=weight.device)
    low = model.forward_low(x)
    deep = model.forward_deep(low)
    recorder = _RecordingDict(low)
    model.forward_head(recorder, deep)
    return tuple(f.name for f in model.stage_spec.low if f.name in recorder.read)


class LowGraph(nn.Module):
    def __init__(
        self,
        model: StagedSegmenter,
        preprocessing: Preprocessing,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        *,
        eager: bool = False,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.eager = eager  # True where PyTorch runs it (not exported): see Normalize.eager
        self.model = model
        self.normalize = Normalize(preprocessing)
        self.names = tuple(f.name for f in model.stage_spec.low)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        if self.eager and self.memory_format == torch.contiguous_format:
            x = self.normalize.eager(image)
        else:
            # Cast before Normalize's permute: TensorRT accepts uint8 only as network I/O cast to
            # float, not as the input of a transpose (same values for every backend).
            x = self.normalize(image.to(torch.float32))
        x = x.to(self.dtype).contiguous(memory_format=self.memory_format)
        low = self.model.forward_low(x)
        return tuple(low[n] for n in self.names)


class DeepGraph(nn.Module):
    def __init__(self, model: StagedSegmenter) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(model.stage_spec.deep_inputs)
        self.names = tuple(f.name for f in model.stage_spec.deep)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        deep = self.model.forward_deep(dict(zip(self.input_names, inputs, strict=True)))
        return tuple(deep[n] for n in self.names)


def labels_from(logits: Tensor, num_classes: int, portable: bool = False) -> Tensor:
    """uint8 argmax over the real classes. ``portable`` casts through float32 first: TensorRT only
    converts to uint8 from float32/float16, never from integer indices (exact below 2**24 classes).

    ``max(1).indices`` is argmax (the first maximum, NaN included) and exports to the same ONNX
    ArgMax, but PyTorch's CPU argmax over the channel axis is a slow strided reduction: ESPNet at
    480x360, 11 of 20 channels, 15 ms against 2.6 ms, half of the torch backend's head.

    The slice to the real classes is left out when there is nothing to cut: exported, ONNX Runtime
    copies the full-resolution logits for it (the shipped ESPNet's head at 480x360: 7.3 -> 7.0 ms;
    OpenVINO drops such a slice itself). Where there is something to cut (12 outputs, 11 classes),
    OpenVINO's CPU plugin runs the slice in its reference code, 0.4-0.5 of a 4.2 ms head; a
    VariadicSplit in its place was tried: in place on a plain tensor, but on the transposed
    convolution's blocked output the plugin copied it in reference code too, 3.0 ms.
    """
    if logits.shape[1] != num_classes:
        logits = logits[:, :num_classes]
    index = logits.max(1).indices
    if portable:
        index = index.to(torch.float32)
    return index.to(torch.uint8)


class HeadGraph(nn.Module):
    def __init__(
        self,
        model: StagedSegmenter,
        low_inputs: tuple[str, ...],
        num_classes: int,
        with_logits: bool,
        portable_labels: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.low_names = low_inputs
        self.deep_names = tuple(f.name for f in model.stage_spec.deep)
        self.num_classes = num_classes
        self.with_logits = with_logits
        self.portable_labels = portable_labels

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        n = len(self.low_names)
        low = dict(zip(self.low_names, inputs[:n], strict=True))
        deep = dict(zip(self.deep_names, inputs[n:], strict=True))
        logits = self.model.forward_head(low, deep)
        labels = labels_from(logits, self.num_classes, self.portable_labels)
        return (labels, logits) if self.with_logits else (labels,)


def as_features(names: tuple[str, ...], values: tuple | list) -> Features:
    return dict(zip(names, values, strict=True))


def pick(features: Mapping[str, object], names: tuple[str, ...]) -> list:
    try:
        return [features[n] for n in names]
    except KeyError as exc:
        raise KeyError(f"feature {exc.args[0]!r} missing; have {sorted(features)}") from None
