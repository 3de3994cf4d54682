"""Stage 8: write the pruned model, zeroed or shrunk, and check it against the masked evaluation.

Zeroed: the pruned groups' producer weights, biases and re-introduced offsets (BatchNorm scale and shift,
bias Add) are set to zero; the graph is otherwise untouched, so it runs wherever the original did.
Shrunk: the pruned channels are cut out of every tensor of their group (weights, consumers' input slices,
BatchNorm statistics, depthwise group counts, reshape targets), giving a smaller, faster model. Both are
written atomically and only after onnxruntime has confirmed that they compute what the masked model computes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OutputError, UnsupportedModelError
from ..files import atomic_output, track_written
from ..instrument import MaskedEvaluator
from ..instrument.masked import fill_fixed_batch
from ..load.loader import LoadedModel
from ..neuron_map import NeuronMap
from ..neuron_map.build import compact_ids
from ..runtime import make_session

TOLERANCE = 1e-4
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf cannot hold more than 2 GB


class ShrinkError(UnsupportedModelError):
    """The mask can be applied by zeroing, but the graph cannot be cut down around it."""


def _edit_initializers(model: onnx.ModelProto, edits: dict[str, np.ndarray]) -> None:
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name in edits:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(edits[tensor.name], tensor.name))


def zeroed_model(lm: LoadedModel, nmap: NeuronMap, mask) -> onnx.ModelProto:
    """The model with every pruned group's output forced to exactly zero by its parameters."""
    pruned = nmap.check_mask(mask)
    model = copy.deepcopy(lm.model)
    arrays: dict[str, np.ndarray] = {}
    for site in nmap.param_sites:
        if not site.zero:
            continue
        hit = (site.groups >= 0) & pruned[np.maximum(site.groups, 0)]
        if not hit.any():
            continue
        array = arrays.setdefault(site.initializer, lm.initializer_array(site.initializer).copy())
        index = [slice(None)] * array.ndim
        index[site.axis] = np.flatnonzero(hit)
        array[tuple(index)] = 0
    _edit_initializers(model, arrays)
    return model


def shrunk_model(lm: LoadedModel, nmap: NeuronMap, mask) -> onnx.ModelProto:
    """The model with every pruned group's channels removed from all its tensors."""
    pruned = nmap.check_mask(mask)
    model = zeroed_model(lm, nmap, pruned)
    if not pruned.any():
        return model
    current = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def kept(groups: np.ndarray) -> np.ndarray:
        return ~((groups >= 0) & pruned[np.maximum(groups, 0)])

    arrays: dict[str, np.ndarray] = {}
    for site in nmap.param_sites:
        keep = kept(site.groups)
        if keep.all():
            continue
        array = arrays.get(site.initializer, current[site.initializer])
        arrays[site.initializer] = np.compress(keep, array, axis=site.axis)
    nodes = {n.name: n for n in model.graph.node}
    for site in nmap.shape_sites:
        if all(kept(g).all() for g in site.groups):
            continue
        node = nodes[site.node]
        if site.kind == "group":
            _set_attr(node, "group", int(kept(site.groups[0]).sum()))
        elif site.kind == "reshape":
            target = node.input[1]
            shape = arrays.get(target, current[target]).copy()
            axis, count = _single_channel_axis(site.groups[0], kept, node)
            if shape[axis] > 0:
                shape[axis] = count
            arrays[target] = shape
        elif site.kind == "split":
            _shrink_split(node, site, kept, arrays, current)
        elif site.kind == "dynamic-reshape":
            # A computed shape adapts by itself, or is a Concat with the channel count as a constant piece
            # (torch's TorchScript exporter: [batch, tokens, heads, head_dim]); otherwise the check below catches it.
            _shrink_concat_shape(lm, model, node, site, kept, arrays)
        else:
            raise ShrinkError(f"cannot shrink: {site.detail or site.node}; write the zeroed model instead")
    _edit_initializers(model, arrays)
    del model.graph.value_info[:]  # shapes changed: stale annotations would mislead the runtime
    for declared in model.graph.input:  # old models also list initializers as inputs, with their shapes
        if declared.name in arrays:
            dims = declared.type.tensor_type.shape.dim
            for dim, size in zip(dims, arrays[declared.name].shape):
                dim.Clear()
                dim.dim_value = size
    return model


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for attr in node.attribute:
        if attr.name == name:
            node.attribute.remove(attr)
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _single_channel_axis(groups: np.ndarray, kept, node) -> tuple[int, int]:
    """The one axis along which a tensor's channels vary, and how many positions stay along it."""
    compact = compact_ids(groups)
    varying = [a for a in range(compact.ndim) if compact.shape[a] > 1]
    if len(varying) != 1:
        raise ShrinkError(f"cannot shrink: '{node.name}' spreads channels over several axes; "
                          "write the zeroed model instead")
    return varying[0], int(kept(compact.reshape(-1)).sum())


def _shrink_concat_shape(lm: LoadedModel, model: onnx.ModelProto, node, site, kept, arrays) -> None:
    """Set the channel count in a reshape target built by a Concat whose piece at the channel axis is a
    constant: the Concat reads a new initializer there (the constant itself may be shared)."""
    try:
        axis, count = _single_channel_axis(site.groups[0], kept, node)
    except ShrinkError:
        return
    concat = next((n for n in model.graph.node if node.input[1] in n.output), None)
    if concat is None or concat.op_type != "Concat":
        return
    offset = 0
    for slot, piece in enumerate(concat.input):
        size = int(np.prod(lm.shapes.get(piece, [0]))) if piece in lm.shapes else None
        if size is None:
            return
        if offset <= axis < offset + size:
            constant = piece in lm.initializers or any(
                n.op_type == "Constant" and piece in n.output for n in model.graph.node)
            value = lm.small_values.get(piece) if constant else None  # never a value computed from the input
            if value is None or size != 1 or int(np.asarray(value).reshape(-1)[0]) <= 0:
                return
            name = f"{node.name}/onp_shrunk_dim{axis}"
            arrays[name] = np.full(np.shape(value), count, dtype=np.asarray(value).dtype)
            model.graph.initializer.append(numpy_helper.from_array(arrays[name], name))
            concat.input[slot] = name
            return
        offset += size


def _shrink_split(node, site, kept, arrays, current) -> None:
    rank = site.groups[0].ndim
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % rank
    sizes = [int(kept(np.moveaxis(out, axis, 0).reshape(out.shape[axis], -1)[:, 0]).sum())
             for out in site.groups[1:]]
    if len(node.input) > 1 and node.input[1]:
        arrays[node.input[1]] = np.array(sizes, dtype=current[node.input[1]].dtype)
    elif any(a.name == "split" for a in node.attribute):
        _set_attr(node, "split", sizes)
    else:
        raise ShrinkError(f"cannot shrink: Split '{node.name}' splits into equal parts; "
                          "write the zeroed model instead")


# ----------------------------------------------------------------------------------------------------------
# Writing and checking


@dataclass
class WrittenModel:
    path: Path
    shrunk: bool
    max_abs_diff: float  # written model against the masked evaluation, on the check data
    check_samples: int
    bytes_before: int
    bytes_after: int
    provider: str
    pruned_neurons: dict[str, list[int]]


def fits_one_file(model: onnx.ModelProto) -> bool:
    """Whether the weights stay inside the .onnx file (else they go to a data file beside it)."""
    return sum(t.ByteSize() for t in model.graph.initializer) <= _EXTERNAL_DATA_THRESHOLD


def _save_bytes(data: bytes, path) -> None:
    """A serialized model to a (temporary) file: what onnx.save_model writes for a model without external data."""
    Path(path).write_bytes(data)


def write_model(model: onnx.ModelProto, path: Path, *, serialized: bytes | None = None) -> None:
    """Save atomically: a crash or a failed check never leaves a half-written file at ``path``.

    ``serialized``: the model's bytes when the caller has them already (the export check's session was built from
    them), so that a large model is not serialized a second time."""
    path = Path(path)
    if serialized is not None or fits_one_file(model):  # the caller serializes only a model that fits
        with atomic_output(path) as tmp:
            _save_bytes(serialized if serialized is not None else model.SerializeToString(), tmp)
        return
    # The weights go to a data file beside the model, written first: removed again if the model is not
    # written (failure, Ctrl-C), and removed with the model if the run is interrupted later.
    data = path.parent / f"{path.name}.data"
    try:
        with atomic_output(path) as tmp:
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name)
    except BaseException:
        data.unlink(missing_ok=True)
        raise
    track_written(data)


def _run_batch(session, lm: LoadedModel, x: np.ndarray) -> np.ndarray:
    (filled,) = fill_fixed_batch(np.ascontiguousarray(x, dtype=lm.input_dtype), fixed=lm.batch_fixed)
    return session.run([lm.output_name], {lm.input_name: filled})[0][:len(x)]


def export_pruned(lm: LoadedModel, nmap: NeuronMap, mask, out_path, *, shrink: bool = False,
                  check_inputs: np.ndarray | None = None, provider: str = "auto",
                  evaluator: MaskedEvaluator | None = None, tolerance: float = TOLERANCE) -> WrittenModel:
    """Build the zeroed or shrunk model, check it with onnxruntime against the masked model, then write it.

    ``check_inputs``: preprocessed inputs for the check (real data is best); random ones when None.
    """
    pruned = nmap.check_mask(mask)
    out_path = Path(out_path)
    if lm.path is not None and out_path.exists() and out_path.resolve() == Path(lm.path).resolve():
        raise OutputError(f"{out_path}: refusing to overwrite the input model")
    model = shrunk_model(lm, nmap, pruned) if shrink else zeroed_model(lm, nmap, pruned)
    if check_inputs is None:
        rng = np.random.default_rng(0)
        # Random images when no data is given: eight, or as many as fit a few batches under the memory cap.
        count = min(8, lm.batch_within_memory(8))
        check_inputs = rng.standard_normal((count,) + tuple(lm.probe_input_shape[1:])).astype(np.float32)
    evaluator = evaluator or MaskedEvaluator(lm, nmap, provider=provider)
    expected = evaluator.logits(check_inputs, pruned)
    # Serialized once, for the check's session and for the file.
    serialized = model.SerializeToString() if fits_one_file(model) else None
    session, used = make_session(serialized if serialized is not None else model, provider,
                                 what=f"{out_path} (pruned)")
    batch = lm.batch_within_memory(256)
    got = np.concatenate([_run_batch(session, lm, check_inputs[i:i + batch])
                          for i in range(0, len(check_inputs), batch)]).reshape(expected.shape)
    diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
    if not diff <= tolerance:
        raise OutputError(f"{out_path}: not written: the {'shrunk' if shrink else 'zeroed'} model differs from "
                          f"the masked evaluation by {diff:.3g} (tolerance {tolerance:g})")
    del session  # its copy of the weights is not needed while the file is written
    write_model(model, out_path, serialized=serialized)
    before = Path(lm.path).stat().st_size if lm.path is not None else lm.model.ByteSize()
    return WrittenModel(path=out_path, shrunk=shrink, max_abs_diff=diff, check_samples=len(check_inputs),
                        bytes_before=before, bytes_after=out_path.stat().st_size, provider=used,
                        pruned_neurons=nmap.pruned_neurons(pruned))
