"""Graph rewrites of ``MaxPool``'s second (``Indices``) output, which ENet needs.

TensorRT parses neither ``MaxUnpool`` nor a ``MaxPool`` with indices, and OpenVINO's CPU plugin
runs the latter through its slow reference implementation (ENet at 1024x512: 264 of the low
stage's 314 ms, and as much again in deep). rtseg's ENet already unpools with index-equality
masking; the pooling indices are rewritten here, exactly, into ops both run natively:

    values  = MaxPool(x)                                   (2x2, stride 2)
    up      = values repeated over each 2x2 window          (Unsqueeze, Expand, Reshape)
    where   = Where(x == up, position_in_plane, H*W)        (positions of the window maxima)
    indices = -MaxPool(-where) + plane offset               (the smallest such position)

The smallest position among equal maxima is the first one in row-major scan order, which is the
one PyTorch's max_pool2d records, so the indices match bit for bit (positions are exact in
float32 below 2**24 pixels per plane). The 1x1 pooling the TorchScript exporter adds to find
each plane's offset becomes constants plus an Add. ``tests/engine/test_onnx_rewrite.py`` runs both
graphs in ONNX Runtime and compares them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import EngineBuildError

UNSUPPORTED_BY_TENSORRT = ("MaxUnpool",)


# In the name of every node of the pooling-index rewrite: those count positions in floats, exact
# in float32 only, and a TensorRT build pins them to float32 (tensorrt_backend.pin_exact_layers).
EXACT_MARK = "rtseg_pool_indices"


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _shape(model: onnx.ModelProto, name: str) -> list[int]:
    for v in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        if v.name == name:
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
            if len(dims) == 4 and all(dims):
                return dims
    raise EngineBuildError(f"cannot rewrite MaxPool indices: the shape of {name!r} is not static 4-D")


def _window(node: onnx.NodeProto) -> int | None:
    """k for a plain k x k, stride-k MaxPool with k in (1, 2) (what the exporters emit), else None."""
    k = list(_attr(node, "kernel_shape", []))
    plain = (
        list(_attr(node, "strides", [1, 1])) == k
        and not any(_attr(node, "pads", [0, 0, 0, 0]))
        and list(_attr(node, "dilations", [1, 1])) == [1, 1]
        and _attr(node, "ceil_mode", 0) == 0
        and _attr(node, "storage_order", 0) == 0
        and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )
    return k[0] if plain and k in ([1, 1], [2, 2]) else None


def _pool_indices_nodes(node: onnx.NodeProto, shape: list[int], k: int, tag: str) -> tuple[list, list]:
    """Nodes and initializers computing ``node``'s values and ONNX indices (flat over N, C, H, W)."""
    n, c, h, w = shape
    x, values, indices = node.input[0], node.output[0], node.output[1]
    t = f"{tag}/{EXACT_MARK}"
    # ONNX indices count over the whole tensor: plane offset (n * C + c) * H * W plus the position
    # inside the plane. The exporters subtract the offsets again to get PyTorch's per-plane indices.
    offsets = (np.arange(n * c, dtype=np.int32) * (h * w)).reshape(n, c, 1, 1)
    inits = [numpy_helper.from_array(offsets, f"{t}/offsets")]
    if k == 1:
        inits.append(
            numpy_helper.from_array(np.arange(h * w, dtype=np.int32).reshape(1, 1, h, w), f"{t}/pos")
        )
        nodes = [
            helper.make_node("Identity", [x], [values], name=f"{t}/values"),
            helper.make_node("Add", [f"{t}/pos", f"{t}/offsets"], [f"{t}/flat"], name=f"{t}/add"),
            helper.make_node("Cast", [f"{t}/flat"], [indices], to=onnx.TensorProto.INT64, name=f"{t}/cast"),
        ]
        return nodes, inits
    inits += [
        numpy_helper.from_array(np.array([3, 5], dtype=np.int64), f"{t}/axes"),
        numpy_helper.from_array(np.array([n, c, h // 2, 2, w // 2, 2], dtype=np.int64), f"{t}/expand"),
        numpy_helper.from_array(np.array([n, c, h, w], dtype=np.int64), f"{t}/full"),
        numpy_helper.from_array(np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w), f"{t}/positions"),
        numpy_helper.from_array(np.array(float(h * w), dtype=np.float32), f"{t}/beyond"),
    ]
    nodes = [
        helper.make_node("MaxPool", [x], [values], kernel_shape=[2, 2], strides=[2, 2], name=f"{t}/max"),
        helper.make_node("Unsqueeze", [values, f"{t}/axes"], [f"{t}/v6"], name=f"{t}/unsqueeze"),
        helper.make_node("Expand", [f"{t}/v6", f"{t}/expand"], [f"{t}/v6e"], name=f"{t}/expand"),
        helper.make_node("Reshape", [f"{t}/v6e", f"{t}/full"], [f"{t}/up"], name=f"{t}/reshape"),
        helper.make_node("Equal", [x, f"{t}/up"], [f"{t}/is_max"], name=f"{t}/equal"),
        helper.make_node(
            "Where", [f"{t}/is_max", f"{t}/positions", f"{t}/beyond"], [f"{t}/where"], name=f"{t}/where"
        ),
        helper.make_node("Neg", [f"{t}/where"], [f"{t}/neg"], name=f"{t}/neg"),
        helper.make_node(
            "MaxPool", [f"{t}/neg"], [f"{t}/negmin"], kernel_shape=[2, 2], strides=[2, 2], name=f"{t}/min"
        ),
        helper.make_node("Neg", [f"{t}/negmin"], [f"{t}/first"], name=f"{t}/first"),
        helper.make_node(
            "Cast", [f"{t}/first"], [f"{t}/first32"], to=onnx.TensorProto.INT32, name=f"{t}/i32"
        ),
        helper.make_node("Add", [f"{t}/first32", f"{t}/offsets"], [f"{t}/flat"], name=f"{t}/add"),
        helper.make_node("Cast", [f"{t}/flat"], [indices], to=onnx.TensorProto.INT64, name=f"{t}/cast"),
    ]
    return nodes, inits


def _rewritable(node: onnx.NodeProto, inferred: onnx.ModelProto) -> tuple[int, list[int]]:
    """The window and input shape of a pool whose indices ``_pool_indices_nodes`` computes exactly."""
    k = _window(node)
    if k is None:
        raise EngineBuildError(
            f"TensorRT cannot return MaxPool indices, and node {node.name!r} is not a plain 1x1 or "
            "2x2 pooling rtseg can rewrite exactly; use backend onnxruntime or torch"
        )
    shape = _shape(inferred, node.input[0])
    if shape[2] % k or shape[3] % k:
        raise EngineBuildError(f"MaxPool {node.name!r} input {shape} is not divisible by its window")
    return k, shape


def rewrite_pool_indices(model: onnx.ModelProto, *, strict: bool) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose plain 1x1 and 2x2 MaxPools compute their indices from ops every
    backend has, and a description of each rewrite made. Other pools with indices raise
    EngineBuildError when ``strict``, else stay as they are."""
    pools = [n for n in model.graph.node if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]]
    if not pools:
        return model, []
    inferred = onnx.shape_inference.infer_shapes(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    done = []
    for i, node in enumerate(model.graph.node):
        try:
            k, shape = _rewritable(node, inferred) if node in pools else (None, None)
        except EngineBuildError:
            if strict:
                raise
            k = shape = None
        if k is None or shape is None:
            out.graph.node.append(node)
            continue
        nodes, inits = _pool_indices_nodes(node, shape, k, node.name or f"maxpool{i}")
        out.graph.node.extend(nodes)
        out.graph.initializer.extend(inits)
        how = "constant positions" if k == 1 else "equality mask + min-pool"
        done.append(f"MaxPool {node.name or i} indices -> {how}")
    onnx.checker.check_model(out)
    return out, done


def for_tensorrt(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` TensorRT can parse, and a description of each rewrite made.

    Raises EngineBuildError naming the op when the graph holds something with no rewrite.
    """
    bad = sorted({n.op_type for n in model.graph.node if n.op_type in UNSUPPORTED_BY_TENSORRT})
    if bad:
        raise EngineBuildError(
            f"TensorRT's ONNX parser does not support {', '.join(bad)}; use backend onnxruntime or torch"
        )
    return rewrite_pool_indices(model, strict=True)
