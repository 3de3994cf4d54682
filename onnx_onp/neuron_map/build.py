"""Build the neuron map by following every channel through the graph.

Each tensor that carries neuron channels gets a *track*: an integer array, broadcastable to the tensor's
shape at batch size 1 ("compact": size 1 along every axis it does not vary on), holding the neuron id of each
element (-1 where the element carries no neuron). Ops transform tracks (Transpose permutes them, Flatten
reshapes them, Concat concatenates them); ops that make two neurons meet (Add, Mul, depthwise Conv) tie them
into one group with a union-find. An op the map does not understand marks every neuron it touches
unprunable, with the reason: the map never guesses.

A track also says whether a pruned channel is exactly zero at that tensor (``zero_ok``). The zeroed export
zeroes producer weights and re-introduced offsets (BatchNorm shift, bias Add), and masks sit after each of
them, so zeros flow through every zero-preserving op. An op with f(0) != 0 (Sigmoid, Softplus...) breaks
that: the channel must then be multiplied by a zero channel (SiLU, squeeze-excitation) before it reaches a
consumer, or it is unprunable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..load.loader import LoadedModel
from .neuron_map import Group, Layer, MaskSite, NeuronMap, ParamSite, ShapeSite

ZERO_PRESERVING = {
    "Relu", "LeakyRelu", "Tanh", "Elu", "Selu", "Celu", "Gelu", "HardSwish", "Softsign", "Mish", "Identity",
    "Neg", "Abs", "Erf", "Sign", "ThresholdedRelu", "Sin", "Sinh", "Tan", "Asin", "Atan", "Asinh", "Atanh",
    "Sqrt", "Round", "Floor", "Ceil", "Dropout", "Cast", "PRelu", "Clip",
}
NOT_ZERO_PRESERVING = {"Sigmoid", "HardSigmoid", "Softplus", "Exp", "Cos", "Cosh", "Acos", "Log", "Reciprocal"}
SPATIAL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "Resize",
           "Upsample", "Pad"}
ELEMENTWISE = {"Add", "Sub", "Sum", "Mean", "Max", "Min", "Mul", "Div"}
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare",
           "ReduceProd", "ReduceLogSumExp", "ReduceLogSum"}
SHAPE_ONLY = {"Shape", "Size"}  # read the shape, not the values: no channel flows through


@dataclass
class Track:
    ids: np.ndarray  # compact neuron-id array, ndim == tensor rank
    zero_ok: bool = True
    why_nonzero: str = ""


def compact_ids(arr: np.ndarray) -> np.ndarray:
    """Shrink every axis along which the array is constant to size 1."""
    for axis in range(arr.ndim):
        if arr.shape[axis] > 1:
            first = np.take(arr, [0], axis=axis)
            if np.array_equal(np.broadcast_to(first, arr.shape), arr):
                arr = first
    return np.ascontiguousarray(arr)


def _varying_axes(arr: np.ndarray) -> list[int]:
    return [a for a in range(arr.ndim) if arr.shape[a] > 1]


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Builder:
    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.graph = lm.model.graph
        self.inits = lm.initializers
        self.shapes = lm.shapes
        self.tracks: dict[str, Track] = {}
        self.parent: list[int] = []
        self.reasons: dict[int, set[str]] = {}
        self.layers: list[Layer] = []
        self.needs_mask: dict[str, np.ndarray] = {}  # tensor -> raw id track (mask placed after it)
        self.remasked: set[str] = set()  # outputs of BN / bias Add / depthwise conv: masked for their input's channels
        self.param_sites: list[tuple[str, int, np.ndarray, bool]] = []
        self.shape_sites: list[tuple[str, str, list[np.ndarray], str]] = []
        self.blocked_tensors: dict[str, str] = {}
        self.select_axes: dict[str, list[int]] = {}  # Slice/Gather/Split node -> the axes it picks along
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.graph_outputs = {o.name for o in self.graph.output}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    # -- union-find and blocking -------------------------------------------------------------------------

    def _new_neurons(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def _find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def _block_ids(self, ids: np.ndarray, reason: str) -> None:
        for i in np.unique(ids[ids >= 0]).tolist():
            self.reasons.setdefault(int(i), set()).add(reason)

    def _block(self, tensor: str, reason: str) -> None:
        track = self.tracks.get(tensor)
        if track is not None:
            self._block_ids(track.ids, reason)
            self.blocked_tensors.setdefault(tensor, reason)

    def _block_inputs(self, node: onnx.NodeProto, reason: str) -> None:
        for name in node.input:
            self._block(name, reason)

    # -- helpers ---------------------------------------------------------------------------------------

    def _const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return self.lm.small_values.get(name)

    def _full(self, name: str) -> np.ndarray:
        """The tensor's track materialised to its probe shape (-1 everywhere if untracked)."""
        shape = self.shapes[name]
        track = self.tracks.get(name)
        if track is None:
            return np.full(shape, -1, dtype=np.int64)
        return np.broadcast_to(track.ids, shape)

    def _set(self, name: str, ids: np.ndarray, zero_ok=True, why="") -> None:
        ids = compact_ids(np.asarray(ids, dtype=np.int64))
        if (ids >= 0).any():
            self.tracks[name] = Track(ids, zero_ok, why)

    def _channel_vector(self, name: str, axis: int) -> np.ndarray | None:
        """The track as one id per position along ``axis``, or None if it varies along other axes too."""
        track = self.tracks[name]
        axis = axis % track.ids.ndim
        if any(a != axis for a in _varying_axes(track.ids)):
            return None
        return np.broadcast_to(track.ids.reshape(-1), (self.shapes[name][axis],)).copy() \
            if track.ids.shape[axis] == 1 else track.ids.reshape(-1).copy()

    def _consumed(self, node: onnx.NodeProto, name: str, axis: int) -> np.ndarray | None:
        """Input channels read by a weight: one id per position along ``axis``, or None (blocked)."""
        if name not in self.tracks:
            return None
        track = self.tracks[name]
        if not track.zero_ok:
            self._block(name, f"passes through {track.why_nonzero}, whose output is not zero when the "
                              f"channel is removed, into {node.op_type} '{node.name}'")
            return None
        vec = self._channel_vector(name, axis)
        if vec is None:
            self._block(name, f"{node.op_type} '{node.name}' reads channels spread over several axes")
        return vec

    def _add_layer(self, node: onnx.NodeProto, size: int, weight: str) -> np.ndarray:
        ids = self._new_neurons(size)
        self.layers.append(Layer(index=len(self.layers), name=node.name, op_type=node.op_type,
                                 output=node.output[0], size=size, first_neuron=int(ids[0]), weight=weight))
        return ids

    def _channel_track(self, ids: np.ndarray, rank: int, axis: int) -> np.ndarray:
        shape = [1] * rank
        shape[axis % rank] = ids.shape[0]
        return ids.reshape(shape)

    # -- the walk --------------------------------------------------------------------------------------------

    def build(self) -> NeuronMap:
        for node in self.graph.node:
            self._visit(node)
        self._block_subgraph_references()
        for out in self.graph.output:
            self._block(out.name, f"reaches the model output '{out.name}' (final classifier)")
        return self._finish()

    def _block_subgraph_references(self) -> None:
        """An If/Loop/Scan body reads outer tensors and weights by name, invisibly to the walk: every neuron
        whose tensor or weight it names is unprunable (the export would edit or mask it under the body)."""
        for node in self.graph.node:
            for name in _subgraph_references(node):
                reason = f"read inside the {node.op_type} '{node.name}' subgraph, which the neuron map does not follow"
                self._block(name, reason)
                for weight, _axis, ids, _producer in self.param_sites:
                    if weight == name:
                        self._block_ids(np.asarray(ids), reason)

    def _visit(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            self._block_inputs(node, f"custom operator {node.domain}.{op} '{node.name}' is not understood")
            return
        if op in ("Conv", "ConvTranspose"):
            return self._conv(node)
        if op == "Gemm":
            return self._gemm(node)
        if op == "MatMul":
            return self._matmul(node)
        if not any(name in self.tracks for name in node.input):
            return  # nothing from a neuron flows here
        if op in SHAPE_ONLY:
            return
        if op in ZERO_PRESERVING or op in NOT_ZERO_PRESERVING:
            return self._unary(node)
        if op in SPATIAL:
            return self._spatial(node)
        if op in ("BatchNormalization", "InstanceNormalization"):
            return self._normalization(node)
        if op in ("Softmax", "LogSoftmax", "Hardmax"):
            return self._softmax(node)
        if op == "LayerNormalization":
            return self._layer_norm(node)
        if op == "Attention":
            return self._attention(node)
        if op in ELEMENTWISE:
            return self._elementwise(node)
        if op == "Concat":
            return self._concat(node)
        if op in RESHAPES:
            return self._reshape(node)
        if op == "Transpose":
            return self._transpose(node)
        if op in ("Split", "Slice", "Gather"):
            return self._select(node)
        if op in REDUCES:
            return self._reduce(node)
        self._block_inputs(node, f"{op} '{node.name}' is not understood by the neuron map")

    # -- producers -------------------------------------------------------------------------------------------

    def _conv(self, node: onnx.NodeProto) -> None:
        x, weight = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if weight not in self.inits or (bias and bias not in self.inits):
            self._block(x, f"{node.op_type} '{node.name}' has non-constant weights")
            return
        w_shape = self.shapes[weight]
        group = int(_attr(node, "group", 1))
        c_in = self.shapes[x][1]
        out_rank = len(self.shapes[node.output[0]])
        transpose = node.op_type == "ConvTranspose"
        c_out = w_shape[1] * group if transpose else w_shape[0]
        out_axis = 1 if transpose else 0

        if group == 1:
            consumed = self._consumed(node, x, 1)
            if consumed is not None:
                self.param_sites.append((weight, 0 if transpose else 1, consumed, False))
            ids = self._add_layer(node, c_out, weight)
            self._producer_sites(node, weight, out_axis, bias, ids)
            self._set(node.output[0], self._channel_track(ids, out_rank, 1))
            self.needs_mask[node.output[0]] = self.tracks[node.output[0]].ids
            return

        depthwise = not transpose and group == c_in and c_out % c_in == 0
        if depthwise and x in self.tracks:
            vec = self._consumed(node, x, 1)
            if vec is not None:
                # Output channel o reads input channel o // m only: it lives and dies with that channel.
                out_ids = np.repeat(vec, c_out // c_in)
                self._producer_sites(node, weight, 0, bias, out_ids)
                self.shape_sites.append((node.name, "group", [vec], ""))
                self._set(node.output[0], self._channel_track(out_ids, out_rank, 1))
                if node.output[0] in self.tracks:
                    self.needs_mask[node.output[0]] = self.tracks[node.output[0]].ids
                    self.remasked.add(node.output[0])
                return
        reason = f"grouped convolution '{node.name}' (group={group}): pruning one channel would unbalance groups"
        self._block(x, reason)
        ids = self._add_layer(node, c_out, weight)
        self._block_ids(ids, reason)
        self._set(node.output[0], self._channel_track(ids, out_rank, 1))

    def _producer_sites(self, node, weight, axis, bias, ids) -> None:
        self.param_sites.append((weight, axis, ids, True))
        if bias:
            self.param_sites.append((bias, 0, ids, True))

    def _gemm(self, node: onnx.NodeProto) -> None:
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if b not in self.inits or _attr(node, "transA", 0):
            self._block(a, f"Gemm '{node.name}' has a non-constant weight or transposed input")
            self._block(b, f"Gemm '{node.name}' multiplies two tensors")
            return
        trans_b = bool(_attr(node, "transB", 0))
        n_out = self.shapes[b][0 if trans_b else 1]
        consumed = self._consumed(node, a, 1)
        if consumed is not None:
            self.param_sites.append((b, 1 if trans_b else 0, consumed, False))
        ids = self._add_layer(node, n_out, b)
        self.param_sites.append((b, 0 if trans_b else 1, ids, True))
        if c is not None:
            c_shape = self.shapes[c]
            if c not in self.inits:
                self._block_ids(ids, f"Gemm '{node.name}' has a non-constant bias")
            elif c_shape and c_shape[-1] == n_out and int(np.prod(c_shape)) == n_out:
                self.param_sites.append((c, len(c_shape) - 1, ids, True))
            elif np.any(self._const(c) != 0):
                self._block_ids(ids, f"Gemm '{node.name}' has a bias that is not per unit")
        self._set(node.output[0], self._channel_track(ids, 2, 1))
        self.needs_mask[node.output[0]] = self.tracks[node.output[0]].ids

    def _matmul(self, node: onnx.NodeProto) -> None:
        a, b = node.input[0], node.input[1]
        if self._const(a) is None and self._const(b) is None:
            return self._matmul_activations(node)
        if b not in self.inits or len(self.shapes[b]) != 2:
            for name in (a, b):
                self._block(name, f"MatMul '{node.name}' multiplies two tensors or a non-2-D weight")
            return
        consumed = self._consumed(node, a, -1)
        if consumed is not None:
            self.param_sites.append((b, 0, consumed, False))
        ids = self._add_layer(node, self.shapes[b][1], b)
        self.param_sites.append((b, 1, ids, True))
        out_rank = len(self.shapes[node.output[0]])
        self._set(node.output[0], self._channel_track(ids, out_rank, -1))
        self.needs_mask[node.output[0]] = self.tracks[node.output[0]].ids

    def _matmul_activations(self, node: onnx.NodeProto) -> None:
        """A MatMul of two activations (attention: Q·Kᵀ, then the attention weights times V).

        Output element [..., m, n] reads row [..., m, :] of A and column [..., :, n] of B. Like an Add, it
        ties every neuron that meets in one element into one group: there is no weight whose slice could be
        cut, so the neurons can only go together. After the reshape to heads, Q·Kᵀ ties the Q and K units of a
        head (they share its rows and columns), the Softmax passes the head along (not as zeros: a removed head
        attends uniformly), and ·V ties in the head's V units, which flow on, through the transpose and reshape
        back, to the output projection's input rows: one group per head. Zeros: an output element is exactly
        zero when its group is pruned if every term of its sum has a factor that is zero then.
        """
        a, b = node.input[0], node.input[1]
        out = node.output[0]
        if not any(name in self.tracks for name in (a, b)):
            return
        ranks = [len(self.shapes[a]), len(self.shapes[b])]
        if min(ranks) < 2:
            self._block_inputs(node, f"MatMul '{node.name}' multiplies a vector by a tensor")
            return
        rank = len(self.shapes[out])
        ids, zeros = [], []
        for name, r in zip((a, b), ranks):
            track = self.tracks.get(name)
            arr = track.ids if track is not None else np.full([1] * r, -1, dtype=np.int64)
            arr = arr.reshape((1,) * (rank - r) + arr.shape)
            ids.append(arr)
            zeros.append((arr >= 0) & (track is not None and track.zero_ok))
        batch = np.broadcast_shapes(ids[0].shape[:-2], ids[1].shape[:-2])
        ids = [np.broadcast_to(x, batch + x.shape[-2:]) for x in ids]
        zeros = [np.broadcast_to(z, batch + z.shape[-2:]) for z in zeros]
        rows = self._tie_along(ids[0], -1)  # batch + (M,): one representative per row of A
        cols = self._tie_along(ids[1], -2)  # batch + (N,)
        left, right = np.broadcast_arrays(rows[..., :, None], cols[..., None, :])
        both = (left >= 0) & (right >= 0)
        if both.any():
            for x, y in np.unique(np.stack([left[both], right[both]], axis=1), axis=0).tolist():
                self._union(x, y)
        merged = np.where(left >= 0, left, right)
        # Zero iff no term has both factors non-zero: (not zero A) @ (not zero B) counts such terms.
        nonzero = np.matmul((~zeros[0]).astype(np.float32), (~zeros[1]).astype(np.float32)) > 0
        nonzero = np.broadcast_to(nonzero, merged.shape)
        zero_ok = not bool(nonzero[merged >= 0].any())
        why = "" if zero_ok else next((self.tracks[n].why_nonzero for n in (a, b)
                                      if n in self.tracks and not self.tracks[n].zero_ok),
                                      f"MatMul '{node.name}' with a tensor that no neuron produces")
        self._set(out, merged, zero_ok, why)

    def _tie_along(self, ids: np.ndarray, axis: int) -> np.ndarray:
        """Union all neuron ids along ``axis``; the array with that axis reduced to one representative (-1: none)."""
        moved = np.moveaxis(ids, axis, -1)
        flat = moved.reshape(-1, moved.shape[-1])
        reps = np.full(flat.shape[0], -1, dtype=np.int64)
        for row, values in enumerate(flat):
            found = np.unique(values[values >= 0])
            if found.size:
                for other in found[1:].tolist():
                    self._union(int(found[0]), other)
                reps[row] = found[0]
        return reps.reshape(moved.shape[:-1])

    def _softmax(self, node: onnx.NodeProto) -> None:
        """Softmax over an axis that carries no channel (attention over tokens) passes the channels along, but
        a removed one is not zero there (uniform weights); over a channel axis it mixes them (final classifier)."""
        op = node.op_type
        x = node.input[0]
        track = self.tracks[x]
        rank = track.ids.ndim
        axis = int(_attr(node, "axis", -1 if self._opset() >= 13 else 1)) % rank
        axes = [axis] if self._opset() >= 13 else list(range(axis, rank))  # before 13: flattened from axis on
        if any(a in _varying_axes(track.ids) for a in axes):
            self._block_inputs(node, f"feeds {op} '{node.name}', which mixes all channels (final classifier)")
            return
        self._set(node.output[0], track.ids, False, f"{op} '{node.name}' (a removed channel gets uniform weights)")

    def _layer_norm(self, node: onnx.NodeProto) -> None:
        """LayerNormalization over axes that carry no channel (each channel's row is normalised alone) passes
        the channels through; over a channel axis it mixes them (a transformer's residual stream)."""
        x = node.input[0]
        track = self.tracks[x]
        rank = track.ids.ndim
        axis = int(_attr(node, "axis", -1)) % rank
        if any(a >= axis for a in _varying_axes(track.ids)) or any(n and n not in self.inits for n in node.input[1:]):
            self._block_inputs(node, f"LayerNormalization '{node.name}' normalises across channels")
            return
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        keeps_zero = bias is None or not np.any(self._const(bias))
        zero_ok = track.zero_ok and keeps_zero
        why = track.why_nonzero if not track.zero_ok else f"LayerNormalization '{node.name}' (its shift)"
        self._set(node.output[0], track.ids, zero_ok, "" if zero_ok else why)

    def _attention(self, node: onnx.NodeProto) -> None:
        """ONNX Attention (opset 23, what torch's dynamo exporter makes of scaled_dot_product_attention at opset
        23) on [batch, heads, tokens, head_dim] inputs: like the separate MatMuls, each head's Q, K and V neurons
        form one group (a key/value head shared by several query heads ties them), and the output carries the
        heads' channels, exactly zero for a removed head when its V is (its attention becomes uniform)."""
        q, k, v = (node.input[i] if len(node.input) > i else "" for i in range(3))
        reason = None
        if any(name for name in node.output[1:]):
            reason = f"Attention '{node.name}' also returns its key/value cache or scores"
        elif any(name in self.tracks for name in node.input[3:]):
            reason = f"Attention '{node.name}' takes neuron channels as its mask or key/value cache"
        elif not (q and k and v) or any(len(self.shapes[n]) != 4 for n in (q, k, v)):
            reason = f"Attention '{node.name}' has 3-D inputs (heads inside the channels): not understood yet"
        if reason:
            self._block_inputs(node, reason)
            return
        hq, hkv = self.shapes[q][1], self.shapes[k][1]
        if hkv == 0 or hq % hkv or self.shapes[v][1] != hkv:
            self._block_inputs(node, f"Attention '{node.name}' has head counts that do not divide")
            return
        heads = [[] for _ in range(hq)]
        for name, count in ((q, hq), (k, hkv), (v, hkv)):
            full = self._full(name)
            for h in range(hq):
                values = full[:, h * count // hq]
                heads[h].extend(np.unique(values[values >= 0]).tolist())
        reps = np.full(hq, -1, dtype=np.int64)
        for h, found in enumerate(heads):
            if found:
                for other in found[1:]:
                    self._union(found[0], other)
                reps[h] = found[0]
        track = self.tracks.get(v)
        full_v = self._full(v)
        zero_ok = track is not None and track.zero_ok and all(
            (full_v[:, h * hkv // hq] >= 0).all() for h in range(hq) if reps[h] >= 0)
        why = "" if zero_ok else f"Attention '{node.name}' (a removed head's V is not all zero)"
        self._set(node.output[0], reps.reshape(1, hq, 1, 1), zero_ok, why)

    def _opset(self) -> int:
        return next((o.version for o in self.lm.model.opset_import if o.domain in ("", "ai.onnx")), 13)

    # -- channel-wise ops ------------------------------------------------------------------------------------

    def _unary(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        if x not in self.tracks:
            self._block_inputs(node, f"{node.op_type} '{node.name}' mixes a channel into its parameters")
            return
        track = self.tracks[x]
        zero_ok, why = track.zero_ok, track.why_nonzero
        if node.op_type in NOT_ZERO_PRESERVING or not self._keeps_zero(node):
            zero_ok, why = False, f"{node.op_type} '{node.name}'"
        if node.op_type == "PRelu":
            self._per_channel_constant(node, node.input[1], track.ids, zero=False)
        self._set(node.output[0], track.ids, zero_ok, why)

    def _keeps_zero(self, node: onnx.NodeProto) -> bool:
        if node.op_type == "Clip":
            low = _attr(node, "min", None)
            high = _attr(node, "max", None)
            if len(node.input) > 1 and node.input[1]:
                low = self._const(node.input[1])
            if len(node.input) > 2 and node.input[2]:
                high = self._const(node.input[2])
            return (low is None or float(np.max(low)) <= 0) and (high is None or float(np.min(high)) >= 0)
        if node.op_type == "Cast":
            to = _attr(node, "to")
            return onnx.helper.tensor_dtype_to_np_dtype(to).kind == "f"
        return True

    def _spatial(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        track = self.tracks[x]
        in_shape, out_shape = self.shapes[x], self.shapes[node.output[0]]
        for axis in _varying_axes(track.ids):
            if in_shape[axis] != out_shape[axis]:
                self._block(x, f"{node.op_type} '{node.name}' changes the size of a channel axis")
                return
        zero_ok, why = track.zero_ok, track.why_nonzero
        if node.op_type == "Pad":
            mode = _attr(node, "mode", b"constant")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            value = _attr(node, "value", 0.0)
            if len(node.input) > 2 and node.input[2]:
                const = self._const(node.input[2])
                value = 0.0 if const is None else float(np.asarray(const).reshape(-1)[0])
            if mode == "constant" and value != 0:
                zero_ok, why = False, f"Pad '{node.name}' (pads with {value})"
        self._set(node.output[0], track.ids, zero_ok, why)

    def _normalization(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        vec = self._channel_vector(x, 1)
        params = [p for p in node.input[1:] if p]
        if vec is None or any(p not in self.inits for p in params):
            self._block(x, f"{node.op_type} '{node.name}' normalises across channels or has dynamic parameters")
            return
        # Zeroing scale and shift makes the output exactly zero whatever the input: the mask goes after it.
        for position, name in enumerate(node.input[1:], start=1):
            if name:
                self.param_sites.append((name, 0, vec, position <= 2))
        out_rank = len(self.shapes[node.output[0]])
        self._set(node.output[0], self._channel_track(vec, out_rank, 1))
        self.needs_mask[node.output[0]] = self.tracks[node.output[0]].ids
        self.remasked.add(node.output[0])

    def _per_channel_constant(self, node, name, ids: np.ndarray, zero: bool) -> bool:
        """Register a constant operand that is aligned with the channels; False if it cannot be handled."""
        value = self._const(name)
        if value is None:
            return False
        out_rank = ids.ndim
        aligned = (1,) * (out_rank - value.ndim) + tuple(value.shape)
        varying = _varying_axes(ids)
        along = [a for a in varying if aligned[a] > 1]
        if not along:
            return True  # a scalar (or constant over channels) never needs a slice of its own
        if len(along) > 1 or len(varying) > 1:
            return False
        axis = along[0]
        if name not in self.inits:
            return False
        self.param_sites.append((name, axis - (out_rank - value.ndim), ids.reshape(-1).copy(), zero))
        return True

    def _elementwise(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        out = node.output[0]
        rank = len(self.shapes[out])
        tracked = [n for n in node.input if n in self.tracks]
        constants = [n for n in node.input if n and n not in self.tracks and self._const(n) is not None]
        dynamic = [n for n in node.input if n and n not in self.tracks and n not in constants]
        if op == "Div" and node.input[1] in self.tracks:
            self._block(node.input[1], f"Div '{node.name}' divides by the channel")
            return

        # Tie every pair of neurons that meet in one element.
        aligned = [self.tracks[n].ids.reshape((1,) * (rank - self.tracks[n].ids.ndim) + self.tracks[n].ids.shape)
                   for n in tracked]
        common = np.broadcast_shapes(*(a.shape for a in aligned))
        merged = np.broadcast_to(aligned[0], common).copy()
        for other in aligned[1:]:
            other = np.broadcast_to(other, common)
            both = (merged >= 0) & (other >= 0)
            for a, b in np.unique(np.stack([merged[both], other[both]], axis=1), axis=0).tolist():
                self._union(a, b)
            merged = np.where(merged >= 0, merged, other)

        if op in ("Mul", "Div"):
            for name in constants:
                if not self._per_channel_constant(node, name, compact_ids(merged), zero=False):
                    self._block_inputs(node, f"{op} '{node.name}' scales channels by a constant spread over "
                                             "several channel axes")
                    return
            covering = [self.tracks[n] for n in tracked if (self.tracks[n].ids >= 0).all() and self.tracks[n].zero_ok]
            zero_ok = bool(covering) or all(self.tracks[n].zero_ok for n in tracked)
            why = "" if zero_ok else self.tracks[tracked[0]].why_nonzero
            self._set(out, merged, zero_ok, why)
            return

        if dynamic:
            self._block_inputs(node, f"{op} '{node.name}' combines channels with a tensor that no neuron produces")
            return
        for name in constants:
            value = self._const(name)
            if op in ("Max", "Min") and np.any(value != 0):
                self._block_inputs(node, f"{op} '{node.name}' with a non-zero constant does not keep zeros")
                return
            # Even an all-zero bias gets a site: shrinking must cut it with its channels.
            if not self._per_channel_constant(node, name, compact_ids(merged), zero=True):
                self._block_inputs(node, f"{op} '{node.name}' adds a constant that is not per channel")
                return
        zero_ok = all(self.tracks[n].zero_ok for n in tracked)
        why = next((self.tracks[n].why_nonzero for n in tracked if not self.tracks[n].zero_ok), "")
        self._set(out, merged, zero_ok, why)
        if any(np.any(self._const(n) != 0) for n in constants):
            self.needs_mask[out] = self.tracks[out].ids  # a bias re-introduces a value: mask after it
            self.remasked.add(out)

    # -- layout ops ------------------------------------------------------------------------------------------

    def _inputs_zero_ok(self, node) -> tuple[bool, str]:
        bad = [self.tracks[n] for n in node.input if n in self.tracks and not self.tracks[n].zero_ok]
        return (not bad, bad[0].why_nonzero if bad else "")

    def _concat(self, node: onnx.NodeProto) -> None:
        axis = int(_attr(node, "axis"))
        parts = [self._full(n) for n in node.input]
        zero_ok, why = self._inputs_zero_ok(node)
        self._set(node.output[0], np.concatenate(parts, axis=axis), zero_ok, why)

    def _reshape(self, node: onnx.NodeProto) -> None:
        x, out = node.input[0], node.output[0]
        full = self._full(x)
        ids = full.reshape(self.shapes[out])
        if node.op_type == "Reshape" and node.input[1] in self.inits:
            self.shape_sites.append((node.name, "reshape", [ids], ""))
        elif node.op_type == "Reshape":
            self.shape_sites.append((node.name, "dynamic-reshape", [ids], ""))
        track = self.tracks[x]
        self._set(out, ids, track.zero_ok, track.why_nonzero)

    def _transpose(self, node: onnx.NodeProto) -> None:
        track = self.tracks[node.input[0]]
        perm = _attr(node, "perm") or list(reversed(range(track.ids.ndim)))
        self._set(node.output[0], np.transpose(track.ids, perm), track.zero_ok, track.why_nonzero)

    def _select(self, node: onnx.NodeProto) -> None:
        """Split, Slice, Gather: pick positions of the track the same way the op picks elements."""
        x = node.input[0]
        if x not in self.tracks:
            self._block_inputs(node, f"{node.op_type} '{node.name}' selects with channel-dependent indices")
            return
        track = self.tracks[x]
        full = self._full(x)
        rank = full.ndim
        try:
            outputs = self._select_positions(node, full)
        except (TypeError, ValueError, IndexError, KeyError):
            outputs = None
        if outputs is None:
            self._block(x, f"{node.op_type} '{node.name}' has indices the neuron map cannot read")
            return
        axes = self._select_axes(node, rank)
        if any(a in _varying_axes(track.ids) for a in axes):
            kind = "split" if node.op_type == "Split" else "fixed"
            detail = f"{node.op_type} '{node.name}' picks channels by fixed indices"
            self.shape_sites.append((node.name, kind, [full] + outputs, detail))
            self.select_axes[node.name] = axes
        for name, ids in zip(node.output, outputs):
            if name:
                self._set(name, ids, track.zero_ok, track.why_nonzero)

    def _select_axes(self, node, rank) -> list[int]:
        if node.op_type == "Slice":
            axes = _attr(node, "axes")
            if len(node.input) > 3 and node.input[3]:
                axes = self._const(node.input[3]).tolist()
            if axes is None:
                starts = _attr(node, "starts") or self._const(node.input[1]).tolist()
                axes = list(range(len(starts)))
            return [a % rank for a in axes]
        return [int(_attr(node, "axis", 0)) % rank]

    def _select_positions(self, node, full: np.ndarray) -> list[np.ndarray] | None:
        rank = full.ndim
        if node.op_type == "Split":
            axis = int(_attr(node, "axis", 0)) % rank
            sizes = [self.shapes[o][axis] for o in node.output]
            return np.split(full, np.cumsum(sizes)[:-1], axis=axis)
        if node.op_type == "Gather":
            indices = self._const(node.input[1])
            if indices is None:
                return None
            return [np.take(full, indices, axis=int(_attr(node, "axis", 0)) % rank)]
        # Slice: attributes before opset 10, inputs after.
        if len(node.input) > 1:
            starts, ends = self._const(node.input[1]), self._const(node.input[2])
            if starts is None or ends is None:
                return None
            starts, ends = starts.tolist(), ends.tolist()
            steps = self._const(node.input[4]).tolist() if len(node.input) > 4 and node.input[4] else [1] * len(starts)
        else:
            starts, ends = _attr(node, "starts"), _attr(node, "ends")
            steps = [1] * len(starts)
        index = [slice(None)] * rank
        for axis, start, end, step in zip(self._select_axes(node, rank), starts, ends, steps):
            index[axis] = slice(*slice(start, end, step).indices(full.shape[axis]))
        return [full[tuple(index)]]

    def _reduce(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        track = self.tracks[x]
        rank = track.ids.ndim
        axes = _attr(node, "axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self._const(node.input[1]).tolist()
        axes = list(range(rank)) if axes is None else [a % rank for a in axes]
        if any(a in _varying_axes(track.ids) for a in axes):
            self._block(x, f"{node.op_type} '{node.name}' reduces over a channel axis")
            return
        ids = track.ids
        if not _attr(node, "keepdims", 1):
            ids = ids.reshape([s for a, s in enumerate(ids.shape) if a not in axes])
        zero_ok, why = track.zero_ok, track.why_nonzero
        if node.op_type in ("ReduceLogSumExp", "ReduceLogSum", "ReduceProd"):
            zero_ok, why = False, f"{node.op_type} '{node.name}'"
        self._set(node.output[0], ids, zero_ok, why)

    # -- result ----------------------------------------------------------------------------------------------

    @staticmethod
    def _picks_within_groups(site: ShapeSite, axes: list[int]) -> bool:
        groups = site.groups[0]
        if not all(_constant_along(groups, a) for a in axes):
            return False
        return any(not _constant_along(groups, a) for a in range(groups.ndim) if a not in axes)

    def _finish(self) -> NeuronMap:
        n = len(self.parent)
        roots = np.array([self._find(i) for i in range(n)], dtype=np.int64)
        # Groups are numbered by their first neuron, so the numbering is stable for a given model.
        unique_roots, neuron_group = np.unique(roots, return_inverse=True)
        members: list[list[int]] = [[] for _ in unique_roots]
        for neuron, group in enumerate(neuron_group.tolist()):
            members[group].append(neuron)
        groups = []
        for index, neurons in enumerate(members):
            reasons = sorted({r for neuron in neurons for r in self.reasons.get(neuron, ())})
            groups.append(Group(index=index, neurons=tuple(neurons), prunable=not reasons, reasons=tuple(reasons)))
        prunable = np.array([g.prunable for g in groups], dtype=bool)

        def to_groups(ids: np.ndarray, only_prunable: bool) -> np.ndarray:
            ids = np.asarray(ids)
            out = np.full(ids.shape, -1, dtype=np.int64)
            valid = ids >= 0
            out[valid] = neuron_group[ids[valid]]
            if only_prunable:
                out[valid & ~prunable[np.maximum(out, 0)]] = -1
            return out

        mask_sites = []
        for tensor, ids in self.needs_mask.items():
            users = self.consumers.get(tensor, [])
            # A tensor read only by a BatchNorm, bias Add or depthwise conv that is masked for the same
            # channels needs no mask of its own.
            if len(users) == 1 and users[0].output[0] in self.remasked and tensor not in self.graph_outputs:
                continue
            groups_here = to_groups(ids, only_prunable=True)
            if (groups_here >= 0).any():
                mask_sites.append(MaskSite(tensor, groups_here))
        param_sites = [ParamSite(name, axis, to_groups(ids, False), zero)
                       for name, axis, ids, zero in self.param_sites]
        shape_sites = [ShapeSite(node, kind, [to_groups(a, False) for a in arrays], detail)
                       for node, kind, arrays, detail in self.shape_sites]
        # A fixed-index pick along an axis on which the *groups* are constant (timm's fused QKV: Q, K and V
        # of a head are one group, picked along the axis of size 3) never sees that axis cut: shrinking cuts
        # along the axis where the groups vary (the heads), which the pick leaves alone.
        shape_sites = [site for site in shape_sites
                       if not (site.kind == "fixed" and self._picks_within_groups(site, self.select_axes[site.node]))]
        return NeuronMap(layers=self.layers, groups=groups, neuron_group=neuron_group.astype(np.int64),
                         mask_sites=mask_sites, param_sites=param_sites, shape_sites=shape_sites,
                         blocked_tensors=self.blocked_tensors)


def _constant_along(arr: np.ndarray, axis: int) -> bool:
    return arr.shape[axis] <= 1 or bool(np.all(arr == np.take(arr, [0], axis=axis)))


def _subgraph_references(node: onnx.NodeProto) -> set[str]:
    """Every name that a node's subgraphs (nested ones too) read or return: a superset of the outer-scope
    tensors they use, which is safe since it only blocks more."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            names.update(o.name for o in graph.output)
            for inner in graph.node:
                names.update(n for n in inner.input if n)
                names |= _subgraph_references(inner)
    return names


def build_neuron_map(lm: LoadedModel) -> NeuronMap:
    """Find every neuron of the model, tie them into groups, and record where each group lives."""
    return _Builder(lm).build()
