"""Stage 1: read an ONNX classifier safely and bring it into the one form the rest of the pipeline edits.

The input file is only ever read. Everything downstream works on ``LoadedModel.model``, a normalised copy:
constants are initializers, no initializer is used twice (so editing one layer never edits another), and
every tensor's shape (at batch size 1) is known from one probe run of onnxruntime.
"""

from __future__ import annotations

import copy
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from google.protobuf.message import DecodeError

from .. import limits
from ..errors import ExternalDataError, ModelFileError, UnsupportedModelError
from ..runtime import make_session

# Integer tensors up to this many elements are kept from the probe: they hold shapes, axes and indices.
_SMALL_INT_TENSOR = 64


@dataclass
class LoadedModel:
    """A normalised model plus what the probe learned about it."""

    model: onnx.ModelProto
    path: Path | None
    sha256: str
    input_name: str
    input_shape: list  # declared shape; str or None for dynamic dims
    input_dtype: np.dtype
    output_name: str
    num_classes: int
    output_is_probability: bool  # the graph ends in Softmax: outputs are probabilities, not logits
    shapes: dict[str, tuple[int, ...]] = field(repr=False)  # every tensor's shape at batch size 1
    dtypes: dict[str, np.dtype] = field(repr=False)  # every computed tensor's element type
    small_values: dict[str, np.ndarray] = field(repr=False)  # values of small integer tensors
    initializers: dict[str, onnx.TensorProto] = field(repr=False)

    @property
    def probe_input_shape(self) -> tuple[int, ...]:
        return self.shapes[self.input_name]

    @property
    def bytes_per_image(self) -> int:
        """Every tensor the model computes for one image, in bytes (the probe ran it at batch size 1)."""
        return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(self.dtypes.get(name, np.float32)).itemsize
                   for name, shape in self.shapes.items() if name not in self.initializers)

    def batch_within_memory(self, wanted: int) -> int:
        """The batch size to run, at most ``wanted``: a batch's tensors stay under half the memory cap, so a
        model whose images are huge runs in small batches instead of running out of memory."""
        from .. import limits

        if self.batch_fixed:
            return self.batch_fixed
        return int(max(1, min(wanted, limits.current().max_memory // (2 * max(self.bytes_per_image, 1)))))

    @property
    def batch_fixed(self) -> int | None:
        """The batch size the model insists on, or None when the batch dimension is dynamic."""
        dim = self.input_shape[0]
        return dim if isinstance(dim, int) and dim > 0 else None

    def initializer_array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def describe(self) -> dict:
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), None)
        return {
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
            "opset": opset,
            "input": {"name": self.input_name, "shape": self.input_shape},
            "output": {"name": self.output_name, "classes": self.num_classes},
            "nodes": len(self.model.graph.node),
        }


def load_model(path: str | Path, *, input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Read, check, normalise and probe an ONNX image classifier.

    ``input_shape`` fixes dynamic non-batch input dimensions (e.g. (1, 3, 32, 32)) for the probe.
    Raises ModelFileError, ExternalDataError or UnsupportedModelError with a one-line message.
    """
    path = Path(path)
    raw = _read_bytes(path)
    model = _parse(raw, path)
    limits.check_nodes(model, str(path))
    _load_external_data(model, path)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelFileError(f"{path}: invalid ONNX model: {_first_line(exc)}") from None
    # Before normalise: folding a ConstantOfShape or Range would allocate what the shapes declare.
    limits.check_memory(model, str(path))
    _check_finite_weights(model, str(path))
    normalised = normalise(model)
    return probe(normalised, path=path, sha256=hashlib.sha256(raw).hexdigest(), input_shape=input_shape)


def load_model_proto(model: onnx.ModelProto, *, input_shape=None) -> LoadedModel:
    """Same as load_model for a model already in memory (tests, pipelines); the proto is not modified."""
    raw = model.SerializeToString()
    limits.check_nodes(model, "model")
    limits.check_memory(model, "model")
    _check_finite_weights(model, "model")
    return probe(normalise(model), path=None, sha256=hashlib.sha256(raw).hexdigest(), input_shape=input_shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, after checking (without reading) that it is a regular file within the size cap: a
    symlink to /dev/zero or a FIFO would otherwise be read until memory runs out, or forever."""
    try:
        info = os.stat(path)  # follows symlinks: what would be read
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:  # symlink loop, name too long, NUL in the name
        raise ModelFileError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelFileError(f"{path}: is a folder, not an ONNX file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(f"{path}: not a regular file (a device, pipe or socket); refused without reading it")
    cap = limits.current().max_model_bytes
    if info.st_size > cap:
        raise ModelFileError(f"{path}: {limits.format_size(info.st_size)}, over the model-file cap of "
                             f"{limits.format_size(cap)} (--max-model-size)")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(cap + 1)  # the file may grow between stat and read
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > cap:
        raise ModelFileError(f"{path}: over the model-file cap of {limits.format_size(cap)} (--max-model-size)")
    if not raw:
        raise ModelFileError(f"{path}: empty file, not an ONNX model")
    return raw


def _parse(raw: bytes, path: Path) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError):
        raise ModelFileError(f"{path}: not an ONNX model, or truncated (protobuf parse failed)") from None
    # Random bytes and truncated files sometimes parse into an almost empty message.
    if model.ir_version <= 0 or not model.graph.node or not model.graph.output:
        raise ModelFileError(f"{path}: not an ONNX model, or truncated (no graph, nodes or outputs)")
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Load external tensor data, refusing any location outside the model's folder."""
    base = path.parent.resolve()
    tensors = [t for t in _all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    total = 0
    for tensor in tensors:
        total += _check_external_entry(tensor, path, base)
    cap = limits.current().max_memory
    if total > cap:
        raise UnsupportedModelError(f"{path}: external data of {limits.format_size(total)}, over the memory cap "
                                    f"of {limits.format_size(cap)} (--max-memory)")
    if tensors:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as exc:  # noqa: BLE001 - onnx raises several types here
            raise ExternalDataError(f"{path}: cannot load external data: {_first_line(exc)}") from None


def _check_external_entry(tensor: onnx.TensorProto, path: Path, base: Path) -> int:
    """Check one tensor's external-data entry (location inside the folder, a regular file, integer offset and
    length within it); return the bytes it will read."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    where = f"{path}: tensor '{tensor.name}'"
    if not location or "\0" in location or Path(location).is_absolute():
        raise ExternalDataError(f"{where} points to external data {location!r} outside the model's folder")
    try:
        target = (base / location).resolve()
        inside = target.is_relative_to(base)
        info_target = os.stat(target) if inside else None
    except FileNotFoundError:
        raise ExternalDataError(f"{where}: external data file {location!r} not found") from None
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, over-long names
        raise ExternalDataError(f"{where}: cannot open external data {location!r}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
    if not inside:
        raise ExternalDataError(f"{where} points to external data {location!r} outside the model's folder")
    if not stat.S_ISREG(info_target.st_mode):
        raise ExternalDataError(f"{where}: external data {location!r} is not a regular file")
    size = info_target.st_size
    offset, length = (_external_int(info, key, where) for key in ("offset", "length"))
    if length is None:
        length = size - (offset or 0)
    offset = offset or 0
    if offset + length > size:
        raise ExternalDataError(f"{where}: external data {location!r} is truncated "
                                f"(needs {offset + length} bytes, has {size})")
    return length


def _external_int(info: dict, key: str, where: str) -> int | None:
    text = info.get(key)
    if text in (None, ""):
        return None
    if not text.isdigit():  # onnx would call int() on it: 'abc' or '576.5' would be a ValueError
        raise ExternalDataError(f"{where}: external data {key} {text!r} is not a non-negative integer")
    return int(text)


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensors(g)


def _check_finite_weights(model: onnx.ModelProto, where: str) -> None:
    """Refuse NaN or Inf in float weights: every result computed from them would be meaningless, and the
    export check would blame the pruned model for the input's NaNs."""
    for tensor in _all_tensors(model.graph):
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        try:
            values = numpy_helper.to_array(tensor)
        except Exception:  # noqa: BLE001 - malformed tensors are the checker's and onnxruntime's to report
            continue
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise UnsupportedModelError(f"{where}: weight '{tensor.name}' holds {bad} NaN or infinite values; "
                                        "repair or retrain the model first")


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


# ----------------------------------------------------------------------------------------------------------
# Normalisation


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy with constants as initializers and no initializer shared between node inputs."""
    model = copy.deepcopy(model)
    graph = model.graph
    # IR < 4 needs every initializer listed as a graph input; IR 4 (opset 9 era) lifts that, so the
    # initializers that later stages add need no extra bookkeeping.
    model.ir_version = max(model.ir_version, 4)
    _constants_to_initializers(graph)
    _fold_constant_nodes(model)
    _unshare_initializers(graph)
    _name_nodes(graph)
    return model


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        value = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _constant_value(node)
        elif node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = numpy_helper.to_array(inits[node.input[0]]).astype(np.int64)
            fill = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"),
                        np.zeros(1, np.float32))
            value = np.full(tuple(shape), fill.reshape(-1)[0], dtype=fill.dtype)
        if value is None:
            keep.append(node)
            continue
        tensor = numpy_helper.from_array(np.asarray(value), node.output[0])
        graph.initializer.append(tensor)
        inits[tensor.name] = tensor
    del graph.node[:]
    graph.node.extend(keep)


_NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli", "Dropout"}


# Folding writes a node's result into the model as a weight: a Range or ConstantOfShape of a billion elements
# would be allocated (and copied) here, before any limit could refuse it.
FOLD_MAX_ELEMENTS = 1 << 22


def _folded_elements(node: onnx.NodeProto, arrays: list[np.ndarray]) -> float:
    """Elements the ops that make large tensors out of small inputs would produce (others: their input sizes)."""
    try:
        if node.op_type == "Range":
            start, limit, delta = (float(np.asarray(a).reshape(-1)[0]) for a in arrays[:3])
            return max(0.0, (limit - start) / delta) if delta else 0.0
        if node.op_type == "ConstantOfShape":
            return float(np.prod(np.asarray(arrays[0], dtype=np.float64)))
        if node.op_type == "Expand":
            return float(np.prod(np.maximum(np.asarray(arrays[1], dtype=np.float64), 1))) * max(arrays[0].size, 1)
        if node.op_type == "Tile":
            return float(arrays[0].size) * float(np.prod(np.asarray(arrays[1], dtype=np.float64)))
    except (ValueError, IndexError, OverflowError, TypeError):
        return float("inf")  # malformed: leave it to the runtime, which refuses it with a message
    return float(sum(a.size for a in arrays))


def _fold_constant_nodes(model: onnx.ModelProto) -> None:
    """Replace nodes that compute only from initializers (Reshape or Unsqueeze of a weight) by their result.

    Weights computed this way would otherwise look like data to the neuron map.
    """
    from onnx.reference import ReferenceEvaluator  # imported here: only models that need folding pay for it

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    values = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        foldable = (inputs and all(name in values for name in inputs) and node.domain in ("", "ai.onnx")
                    and node.op_type not in _NOT_FOLDED
                    and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                for a in node.attribute))
        results = None
        if foldable:
            try:
                feeds = {name: numpy_helper.to_array(values[name]) for name in inputs}
                if _folded_elements(node, [feeds[name] for name in inputs]) > FOLD_MAX_ELEMENTS:
                    raise ValueError("too large to fold")  # the runtime computes it, under the memory cap
                single = onnx.helper.make_model(
                    onnx.helper.make_graph([node], "fold", [onnx.helper.make_tensor_value_info(n, values[n].data_type,
                                                                                               None)
                                                            for n in dict.fromkeys(inputs)],
                                           [onnx.ValueInfoProto(name=o) for o in node.output if o]),
                    opset_imports=[onnx.helper.make_opsetid("", opset)])
                results = ReferenceEvaluator(single).run(None, feeds)
            except Exception:  # noqa: BLE001 - a node the reference evaluator cannot run stays a node
                results = None
        if results is None:
            keep.append(node)
            continue
        for name, value in zip([o for o in node.output if o], results):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            values[name] = tensor
    del graph.node[:]
    graph.node.extend(keep)


def _constant_value(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), np.int64)
    return None  # sparse or string constants stay as nodes


def _unshare_initializers(graph: onnx.GraphProto) -> None:
    """Give every node input its own copy of an initializer that several inputs use."""
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    seen: dict[str, int] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name not in inits:
                continue
            uses = seen.get(name, 0)
            seen[name] = uses + 1
            if uses == 0 and name not in graph_outputs:
                continue
            copy_name = f"{name}__onp_copy{uses}"
            tensor = copy.deepcopy(inits[name])
            tensor.name = copy_name
            graph.initializer.append(tensor)
            node.input[slot] = copy_name


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Unique, stable node names: layers are addressed by them on the command line."""
    used = set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in used:
            name = f"{name}_{index}"
        used.add(name)
        node.name = name


# ----------------------------------------------------------------------------------------------------------
# Probe


def probe(model: onnx.ModelProto, *, path, sha256, input_shape=None) -> LoadedModel:
    """Run the model once at batch size 1 with every tensor as an output: exact shapes and shape values."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    data_inputs = [i for i in graph.input if i.name not in inits]
    where = str(path) if path else "model"
    if len(data_inputs) != 1:
        names = ", ".join(i.name for i in data_inputs) or "none"
        raise UnsupportedModelError(f"{where}: expected one image input, found {len(data_inputs)} ({names})")
    inp = data_inputs[0]
    tensor_type = inp.type.tensor_type
    declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
    if len(declared) != 4:
        raise UnsupportedModelError(f"{where}: input '{inp.name}' has rank {len(declared)}; expected an image "
                                    "batch of rank 4 (NCHW or NHWC)")
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    except (KeyError, ValueError, TypeError):  # an element type number onnx does not define
        raise UnsupportedModelError(f"{where}: input '{inp.name}' has element type {tensor_type.elem_type}, which "
                                    "ONNX does not define; expected a float image tensor") from None
    if not np.issubdtype(dtype, np.floating):
        raise UnsupportedModelError(f"{where}: input '{inp.name}' is {dtype}; expected a float image tensor")
    shape = [1] + [d if isinstance(d, int) and d > 0 else None for d in declared[1:]]
    if isinstance(declared[0], int) and declared[0] > 0:
        shape[0] = declared[0]
    if input_shape is not None:
        shape = [shape[0]] + list(input_shape[1:])
    if any(d is None for d in shape):
        raise UnsupportedModelError(f"{where}: input '{inp.name}' has dynamic image dimensions {declared}; "
                                    "give the input size explicitly")

    output_name = graph.output[0].name
    probe_model = copy.deepcopy(model)
    existing = {o.name for o in probe_model.graph.output}
    for node in probe_model.graph.node:
        for out in node.output:
            if out and out not in existing:
                probe_model.graph.output.append(onnx.ValueInfoProto(name=out))
                existing.add(out)
    session, _ = make_session(probe_model, "cpu", what=where)
    feed = np.zeros(shape, dtype=dtype)
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, {inp.name: feed})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise UnsupportedModelError(f"{where}: onnxruntime cannot run the model: {_first_line(exc)}") from None

    shapes = {inp.name: tuple(shape)}
    dtypes = {inp.name: np.dtype(dtype)}
    small = {}
    for name, value in zip(names, values):
        value = np.asarray(value)
        shapes[name] = tuple(value.shape)
        dtypes[name] = value.dtype
        if value.dtype.kind in "iu" and value.size <= _SMALL_INT_TENSOR:
            small[name] = value
    for name, tensor in inits.items():
        shapes[name] = tuple(tensor.dims)
        if tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and np.prod(tensor.dims) <= 64:
            small[name] = numpy_helper.to_array(tensor)

    out_shape = shapes[output_name]
    if dtypes.get(output_name, np.dtype(np.float32)).kind != "f":
        kind = dtypes[output_name]
        raise UnsupportedModelError(f"{where}: output '{output_name}' is {'string' if kind.kind in 'OSU' else kind}; "
                                    "expected float class scores")
    if len(out_shape) < 2 or out_shape[1] < 2 or any(d != 1 for d in out_shape[2:]):
        raise UnsupportedModelError(f"{where}: output '{output_name}' has shape {list(out_shape)} at batch size 1; "
                                    "expected class scores of shape [N, classes]")
    if out_shape[0] != shape[0]:  # a broadcast against a constant batch: one row per image is what we score
        raise UnsupportedModelError(f"{where}: output '{output_name}' has {out_shape[0]} rows for a batch of "
                                    f"{shape[0]} image{'s' if shape[0] != 1 else ''}; expected one row of class "
                                    "scores per input image")
    producer = {o: n for n in graph.node for o in n.output}
    last = producer.get(output_name)
    is_prob = last is not None and last.op_type == "Softmax"
    return LoadedModel(model=model, path=path, sha256=sha256, input_name=inp.name, input_shape=declared,
                       input_dtype=np.dtype(dtype), output_name=output_name, num_classes=int(out_shape[1]),
                       output_is_probability=is_prob, shapes=shapes, dtypes=dtypes, small_values=small, initializers=inits)
