"""Resource limits on untrusted model files, checked before anything big is read or allocated.

A gate reads files from people it does not trust: a symlink to /dev/zero, a 3 TB ConstantOfShape or a
10,000-layer chain must fail in a second with one line, not exhaust the machine. The caps are visible to the
user (``onnx-onp --max-memory 8G --max-model-size 1G --max-nodes 5000 VERB ...``) and in the error messages.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace

import math

import numpy as np
import onnx
import onnx.numpy_helper

from .errors import UnsupportedModelError

MEMORY_FRACTION = 0.5  # of the machine's physical memory: the default --max-memory
DEFAULT_MAX_MODEL_BYTES = 2 << 30  # protobuf cannot hold more than 2 GiB anyway
DEFAULT_MAX_NODES = 5000  # the largest ONNX-zoo image classifiers have ~2,000; a 10,000-conv chain is an attack


def physical_memory() -> int:
    """The machine's memory, or the container's (cgroup) limit when that is lower."""
    try:
        memory = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        memory = 8 << 30
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit():
            memory = min(memory, int(text))
    return memory


@dataclass(frozen=True)
class Limits:
    max_memory: int  # bytes the model's tensors may need at batch size 1 (weights + every activation)
    max_model_bytes: int  # size of the .onnx file (external data counts toward max_memory)
    max_nodes: int  # nodes, subgraphs included


DEFAULTS = Limits(max_memory=int(physical_memory() * MEMORY_FRACTION), max_model_bytes=DEFAULT_MAX_MODEL_BYTES,
                  max_nodes=DEFAULT_MAX_NODES)
_current = DEFAULTS


def current() -> Limits:
    return _current


def configure(**changes) -> Limits:
    """Set the caps for this process (the CLI's --max-* options, once per command); None is the default."""
    global _current
    _current = replace(DEFAULTS, **{k: v for k, v in changes.items() if v is not None})
    return _current


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5G', '1000000' (bytes; K/M/G/T are powers of 1024, a trailing B or iB is allowed)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"'{text}' is not a size (e.g. 8G, 512M, 1000000)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 1:
        raise ValueError(f"'{text}' must be at least one byte")
    return int(value)


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(size) < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"


# ----------------------------------------------------------------------------------------------------------


def count_nodes(graph: onnx.GraphProto) -> int:
    total = len(graph.node)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += count_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                total += sum(count_nodes(g) for g in attr.graphs)
    return total


def check_nodes(model: onnx.ModelProto, where: str) -> None:
    cap = current().max_nodes
    nodes = count_nodes(model.graph)
    if nodes > cap:
        raise UnsupportedModelError(f"{where}: {nodes:,} nodes, over the cap of {cap:,} (--max-nodes)")


def _tensor_bytes(tensor_type, elements: int) -> int:
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 8
    return elements * max(itemsize, 1)


def _value_bytes(value: onnx.ValueInfoProto) -> int:
    """Bytes of a tensor from its declared or inferred shape; dynamic dimensions (the batch) count as 1."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return 0
    elements = 1
    for dim in value.type.tensor_type.shape.dim:
        elements *= dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1
    return _tensor_bytes(value.type.tensor_type, elements)


def _initializer_bytes(tensor: onnx.TensorProto) -> int:
    elements = 1
    for d in tensor.dims:
        elements *= max(int(d), 0)
    return max(len(tensor.raw_data), elements * 4 if tensor.data_type != onnx.TensorProto.STRING else 0)


def _constant_scalars(graph: onnx.GraphProto) -> dict[str, float]:
    """Scalar values of initializers and Constant nodes: what a Range's start, limit and delta can be."""
    values: dict[str, float] = {}
    tensors = [(t.name, t) for t in graph.initializer]
    tensors += [(n.output[0], a.t) for n in graph.node if n.op_type == "Constant" and n.output
                for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    for name, tensor in tensors:
        try:
            array = onnx.numpy_helper.to_array(tensor)
        except Exception:  # noqa: BLE001 - a malformed constant is the checker's and the runtime's to refuse
            continue
        if array.size == 1 and array.dtype.kind in "iuf":
            values[name] = float(array.reshape(-1)[0])
    return values


def _range_bytes(graph: onnx.GraphProto) -> dict[str, int]:
    """Range outputs from constant inputs: shape inference leaves their length unknown, and a huge limit is an
    allocation the runtime would attempt."""
    scalars = _constant_scalars(graph)
    sizes = {}
    for node in graph.node:
        if node.op_type != "Range" or len(node.input) != 3 or not all(i in scalars for i in node.input):
            continue
        start, limit, delta = (scalars[i] for i in node.input)
        if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
            continue
        sizes[node.output[0]] = max(0, math.ceil((limit - start) / delta)) * 8  # int64 or double: the widest
    return sizes


def estimate_memory(model: onnx.ModelProto) -> tuple[int, str, int]:
    """(total bytes, largest tensor's name, its bytes): the weights plus every tensor whose shape is declared
    or inferred by onnx's shape inference (with constant propagation), at batch size 1. The load probe keeps
    all of them at once, so the total is what it needs; tensors of unknown shape are not counted."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort: the runtime catches what it misses
        inferred = model
    graph = inferred.graph
    sizes: dict[str, int] = {}
    for value in list(graph.value_info) + list(graph.output) + list(graph.input):
        sizes[value.name] = _value_bytes(value)
    for tensor in graph.initializer:
        sizes[tensor.name] = _initializer_bytes(tensor)
    sizes.update(_range_bytes(graph))
    if not sizes:
        return 0, "", 0
    largest = max(sizes, key=sizes.get)
    return sum(sizes.values()), largest, sizes[largest]


def check_memory(model: onnx.ModelProto, where: str) -> None:
    cap = current().max_memory
    total, largest, largest_bytes = estimate_memory(model)
    if total > cap:
        raise UnsupportedModelError(
            f"{where}: its tensors need about {format_size(total)} at batch size 1 (the largest, '{largest}', "
            f"{format_size(largest_bytes)}), over the memory cap of {format_size(cap)} (--max-memory)")
