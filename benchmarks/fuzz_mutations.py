"""The fuzzer's mutation families: each turns a tiny valid classifier into a (probably) broken or hostile file.

A family is ``fn(rng, model, folder) -> (path, detail)``: it writes the mutated model (and any side files:
external data, symlinks) into ``folder`` and says what it did. Every choice comes from ``rng``, so a case is
reproduced from (seed, index) alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fixtures import hostile

MODEL = "model.onnx"


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / MODEL
    path.write_bytes(model.SerializeToString())  # no checks on the way out: broken models stay broken
    return path


def _pick(rng, items):
    items = list(items)
    return items[int(rng.integers(len(items)))]


# -- bytes ----------------------------------------------------------------------------------------------------


def byte_flips(rng, model, folder):
    raw = bytearray(model.SerializeToString())
    count = int(rng.integers(1, 33))
    for at in rng.integers(0, len(raw), count):
        raw[at] = int(rng.integers(256))
    (folder / MODEL).write_bytes(bytes(raw))
    return folder / MODEL, f"{count} random bytes"


def truncation(rng, model, folder):
    raw = model.SerializeToString()
    cut = int(rng.integers(0, len(raw)))
    (folder / MODEL).write_bytes(raw[:cut])
    return folder / MODEL, f"cut at {cut} of {len(raw)}"


def appended_garbage(rng, model, folder):
    extra = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    (folder / MODEL).write_bytes(model.SerializeToString() + extra)
    return folder / MODEL, f"{len(extra)} bytes appended"


# -- structure ----------------------------------------------------------------------------------------------


_DIM_VALUES = [0, 1, 2, 3, 7, 64, 1 << 20, 1 << 31, 1 << 40, -1, -5]


def dims(rng, model, folder):
    target = _pick(rng, ["initializer", "input", "output"])
    if target == "initializer":
        tensor = _pick(rng, model.graph.initializer)
        axis = int(rng.integers(len(tensor.dims))) if tensor.dims else None
        if axis is None:
            tensor.dims.append(_pick(rng, _DIM_VALUES))
        else:
            tensor.dims[axis] = _pick(rng, _DIM_VALUES)
        detail = f"initializer {tensor.name} dims {list(tensor.dims)}"
    else:
        value = (model.graph.input if target == "input" else model.graph.output)[0]
        shape = value.type.tensor_type.shape
        if rng.random() < 0.2:
            shape.dim.add().dim_value = 1
        else:
            dim = shape.dim[int(rng.integers(len(shape.dim)))]
            dim.dim_value = max(0, _pick(rng, _DIM_VALUES))
        detail = f"{target} dims {[d.dim_value or d.dim_param for d in shape.dim]}"
    return _save(model, folder), detail


_DTYPES = [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT8, TensorProto.INT64, TensorProto.UINT8,
           TensorProto.BOOL, TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.COMPLEX64, 0, 99]


def dtypes(rng, model, folder):
    dtype = _pick(rng, _DTYPES)
    if rng.random() < 0.5:
        tensor = _pick(rng, model.graph.initializer)
        tensor.data_type = dtype
        detail = f"initializer {tensor.name} dtype {dtype}"
    else:
        value = _pick(rng, list(model.graph.input) + list(model.graph.output))
        value.type.tensor_type.elem_type = dtype
        detail = f"{value.name} dtype {dtype}"
    return _save(model, folder), detail


def raw_data_lengths(rng, model, folder):
    tensor = _pick(rng, model.graph.initializer)
    raw = numpy_helper.to_array(tensor).tobytes()
    change = int(rng.integers(-len(raw), 64))
    tensor.raw_data = raw[:len(raw) + change] if change < 0 else raw + bytes(change)
    return _save(model, folder), f"{tensor.name} raw_data {len(raw)} -> {len(tensor.raw_data)} bytes"


def raw_and_float_data(rng, model, folder):
    tensor = _pick(rng, model.graph.initializer)
    count = int(rng.integers(0, 10))
    tensor.float_data.extend(rng.standard_normal(count).astype(np.float32).tolist())
    return _save(model, folder), f"{tensor.name}: raw_data and {count} float_data"


def duplicate_outputs(rng, model, folder):
    if rng.random() < 0.5:
        model.graph.output.append(model.graph.output[0])
        detail = "graph output listed twice"
    else:
        node = _pick(rng, model.graph.node)
        other = _pick(rng, model.graph.node)
        node.output[0] = other.output[0]
        detail = f"{node.name} writes {other.output[0]} too"
    return _save(model, folder), detail


def cycles(rng, model, folder):
    nodes = model.graph.node
    late = int(rng.integers(1, len(nodes)))
    early = int(rng.integers(0, late + 1))
    nodes[early].input[0] = nodes[late].output[0]
    return _save(model, folder), f"{nodes[early].name} reads {nodes[late].output[0]}"


def unknown_ops(rng, model, folder):
    node = _pick(rng, model.graph.node)
    choice = _pick(rng, ["op", "domain", "both"])
    if choice in ("op", "both"):
        node.op_type = _pick(rng, ["MysteryOp", "", "Conv2D", "ai.onnx.Relu", "Loop", "Scan", "If"])
    if choice in ("domain", "both"):
        node.domain = _pick(rng, ["com.example", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"])
        if rng.random() < 0.5:
            model.opset_import.append(helper.make_opsetid(node.domain, int(rng.integers(1, 5))))
    return _save(model, folder), f"{node.name}: {node.domain or 'ai.onnx'}.{node.op_type}"


def opsets_and_ir(rng, model, folder):
    if rng.random() < 0.6:
        model.opset_import[0].version = int(rng.integers(0, 30))
    if rng.random() < 0.6:
        model.ir_version = int(rng.integers(0, 15))
    if rng.random() < 0.2:
        del model.opset_import[:]
    versions = [o.version for o in model.opset_import]
    return _save(model, folder), f"opsets {versions}, IR {model.ir_version}"


_NAMES = ["", "x", "logits", "a" * 5000, "∂/é\u202e", "../../etc/passwd", "w1", "name with spaces", "\x00nul"]


def names(rng, model, folder):
    name = _pick(rng, _NAMES)
    kind = _pick(rng, ["node", "tensor", "input", "initializer"])
    if kind == "node":
        _pick(rng, model.graph.node).name = name
    elif kind == "tensor":
        node = _pick(rng, model.graph.node)
        old = node.output[0]
        node.output[0] = name
        for other in model.graph.node:
            for i, value in enumerate(other.input):
                if value == old:
                    other.input[i] = name
    elif kind == "input":
        model.graph.input[0].name = name
    else:
        _pick(rng, model.graph.initializer).name = name
    return _save(model, folder), f"{kind} named {name[:20]!r}"


def huge_attributes(rng, model, folder):
    node = next(n for n in model.graph.node if n.op_type in ("Conv", "Gemm"))
    choice = _pick(rng, ["pads", "strides", "dilations", "group", "kernel_shape", "blob", "alpha"])
    del_names = {choice}
    keep = [a for a in node.attribute if a.name not in del_names]
    del node.attribute[:]
    node.attribute.extend(keep)
    big = _pick(rng, [1 << 40, -(1 << 40), 0, -1, 1 << 20])
    if choice in ("pads", "strides", "dilations", "kernel_shape"):
        node.attribute.append(helper.make_attribute(choice, [big] * _pick(rng, [2, 4, 1000])))
    elif choice == "group":
        node.attribute.append(helper.make_attribute("group", big))
    elif choice == "alpha":
        node.attribute.append(helper.make_attribute("alpha", float(_pick(rng, [np.inf, np.nan, 1e38]))))
    else:
        node.attribute.append(helper.make_attribute("blob", b"\xff" * int(rng.integers(1 << 16, 1 << 22))))
    return _save(model, folder), f"{node.name}.{choice} = {big}"


def multi_io(rng, model, folder):
    if rng.random() < 0.5:
        model.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 3, 8, 8]))
        detail = "second input"
    else:
        extra = _pick(rng, model.graph.node).output[0]
        model.graph.output.insert(int(rng.integers(0, 2)), helper.make_tensor_value_info(extra, TensorProto.FLOAT, None))
        detail = f"extra output {extra}"
    return _save(model, folder), detail


def non_image_inputs(rng, model, folder):
    shape = model.graph.input[0].type.tensor_type.shape
    choice = _pick(rng, ["rank2", "rank5", "int", "dynamic"])
    if choice == "rank2":
        del shape.dim[2:]
    elif choice == "rank5":
        shape.dim.add().dim_value = 1
    elif choice == "int":
        model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    else:
        for dim in shape.dim[1:]:
            dim.dim_param = "d"
    return _save(model, folder), choice


_EXTERNAL_EDITS = [("offset", "abc"), ("offset", "576.5"), ("offset", "-1"), ("offset", str(1 << 62)),
                   ("length", "abc"), ("length", "0"), ("length", str(1 << 40)), ("location", "../outside.bin"),
                   ("location", "/etc/hostname"), ("location", "w\0.bin"), ("location", ""), ("location", "loop.bin"),
                   ("location", "zero.bin"), ("location", "missing.bin"), ("location", "sub"), ("checksum", "x")]


def external_data(rng, model, folder):
    onnx.save_model(model, folder / MODEL, save_as_external_data=True, location="w.bin", size_threshold=0)
    proto = onnx.load(folder / MODEL, load_external_data=False)
    key, value = _pick(rng, _EXTERNAL_EDITS)
    tensor = _pick(rng, proto.graph.initializer)
    entries = {e.key: e for e in tensor.external_data}
    if key in entries:
        entries[key].value = value
    else:
        tensor.external_data.add(key=key, value=value)
    if value == "loop.bin":
        os.symlink("loop.bin", folder / "loop.bin")
    elif value == "zero.bin":
        os.symlink("/dev/zero", folder / "zero.bin")
    elif value == "sub":
        (folder / "sub").mkdir()
    return _save(proto, folder), f"{tensor.name} external {key}={value!r}"


def subgraphs(rng, model, folder):
    choice = _pick(rng, ["conv_in_if", "relu_in_if", "empty_branch"])
    if choice == "conv_in_if":
        model = hostile.with_conv_in_if(model)
    elif choice == "relu_in_if":
        model = hostile.with_relu_in_if(model)
    else:
        model = hostile.with_relu_in_if(model)
        branch = next(a for a in model.graph.node[hostile.node_index(model, "if")].attribute if a.name == "then_branch")
        del branch.g.node[:]
    return _save(model, folder), choice


def memory_bombs(rng, model, folder):
    if rng.random() < 0.5:
        dims_ = (int(2 ** rng.integers(10, 40)), 3, 8, 8)
        return _save(hostile.with_huge_constant_of_shape(model, dims_), folder), f"ConstantOfShape {dims_}"
    limit = float(10 ** rng.integers(3, 13))
    return _save(hostile.with_huge_range(model, limit), folder), f"Range to {limit:g}"


def weights_and_outputs(rng, model, folder):
    choice = _pick(rng, ["nan", "inf", "string_output", "int_output"])
    if choice in ("nan", "inf"):
        name = _pick(rng, ["w1", "w2", "wf", "bf"])
        model = hostile.with_weight_values(model, name, float(choice))
    elif choice == "string_output":
        model = hostile.with_string_output(model)
    else:
        out = model.graph.output[0]
        producer = next(n for n in model.graph.node if out.name in n.output)
        producer.output[list(producer.output).index(out.name)] = "scores"
        model.graph.node.append(helper.make_node("ArgMax", ["scores"], [out.name], name="argmax", axis=1))
        out.type.tensor_type.elem_type = TensorProto.INT64
    return _save(model, folder), choice


def node_count(rng, model, folder):
    layers = int(_pick(rng, [int(rng.integers(20, 400)), 6000, 20000]))
    return _save(hostile.conv_chain(layers), folder), f"{layers}-conv chain"


def file_kinds(rng, model, folder):
    choice = _pick(rng, ["dev_zero", "directory", "fifo", "empty", "dangling", "loop"])
    path = folder / MODEL
    if choice == "dev_zero":
        os.symlink("/dev/zero", path)
    elif choice == "directory":
        path.mkdir()
    elif choice == "fifo":
        os.mkfifo(path)
    elif choice == "empty":
        path.write_bytes(b"")
    elif choice == "dangling":
        os.symlink(folder / "nowhere.onnx", path)
    else:
        os.symlink(MODEL, path)
    return path, choice


FAMILIES = {f.__name__: f for f in (
    byte_flips, truncation, appended_garbage, dims, dtypes, raw_data_lengths, raw_and_float_data,
    duplicate_outputs, cycles, unknown_ops, opsets_and_ir, names, huge_attributes, multi_io, non_image_inputs,
    external_data, subgraphs, memory_bombs, weights_and_outputs, node_count, file_kinds)}


def base_model(rng) -> onnx.ModelProto:
    """A random tiny classifier: 2..6 channels, 3 classes, 8x8 images, sometimes NHWC or ending in Softmax."""
    return hostile.tiny_cnn(seed=int(rng.integers(1 << 30)), channels=int(rng.integers(2, 7)),
                            layout="NHWC" if rng.random() < 0.2 else "NCHW", softmax=bool(rng.random() < 0.3))
