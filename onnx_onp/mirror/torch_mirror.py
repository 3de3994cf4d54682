"""A differentiable torch mirror of the normalised ONNX graph, with the same mask sites.

onnxruntime scores masks; some signals need gradients (trigger synthesis, first-order loss changes, neuron
perturbation). The mirror interprets the graph node by node with torch functions, multiplies the neuron
map's mask sites by a keep-vector exactly as the instrumented model does, and is tested to match
onnxruntime. It covers the ops classifiers are made of (convolutions and activations here, shape arithmetic,
resizing, normalisations, attention and QDQ in more_ops.py); anything else raises UnsupportedModelError naming
the op when the mirror is built, and a dry run at the probe shape catches an op used in a way the mirror cannot
run, before any search starts. tests/test_mirror.py compares it with onnxruntime on every fixture, onnx's light
zoo and Keras/TF-style exports. A converter such as onnx2torch was not used: it needs torchvision (not a
dependency here) and gives an fx module with no hook for the mask sites, which the mirror multiplies by
keep-values exactly where the instrumented graph does.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ..errors import UnsupportedModelError
from ..load.loader import LoadedModel
from ..neuron_map import NeuronMap
from .more_ops import MoreOps, _ints, torch_dtype


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads_nd(pads: list[int]) -> list[int]:
    """ONNX [x1_begin, x2_begin, ..., x1_end, x2_end, ...] -> F.pad's last-axis-first pairs."""
    n = len(pads) // 2
    out = []
    for axis in reversed(range(n)):
        out += [pads[axis], pads[axis + n]]
    return out


def _auto_pad(node_attrs, x, kernel, strides, dilations):
    mode = node_attrs.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    spatial = x.shape[2:]
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            pads_begin.append(small if mode == "SAME_UPPER" else big)
            pads_end.append(big if mode == "SAME_UPPER" else small)
        return pads_begin + pads_end
    if mode == "VALID":
        return [0] * (2 * len(spatial))
    return list(node_attrs.get("pads", [0] * (2 * len(spatial))))


class _Clip(torch.autograd.Function):
    """clamp(x, low, high) with clamp's own gradient (1 inside [low, high], bounds included), computed by
    hardtanh's one-kernel backward on bounds moved out by one float step: clamp's backward (five kernels) took a
    third of a MobileNetV2 synthesis step. The results are bit for bit clamp's (tests/test_mirror.py)."""

    @staticmethod
    def forward(ctx, x, low: float, high: float):
        ctx.save_for_backward(x)
        ctx.bounds = low, high
        return torch.clamp(x, low, high)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        low, high = (torch.tensor(v, dtype=x.dtype) for v in ctx.bounds)
        # hardtanh passes the gradient where low < x < high; a float step outward makes that low <= x <= high.
        outer_low = float(torch.nextafter(low, torch.tensor(-float("inf"), dtype=x.dtype)))
        outer_high = float(torch.nextafter(high, torch.tensor(float("inf"), dtype=x.dtype)))
        return torch.ops.aten.hardtanh_backward(grad, x, outer_low, outer_high), None, None


class TorchMirror(MoreOps, torch.nn.Module):
    """forward(x, keep=None) -> model output; keep: [groups] or [N, groups] keep-values (1 keeps, 0 prunes)."""

    def __init__(self, lm: LoadedModel, nmap: NeuronMap | None = None):
        super().__init__()
        self.lm = lm
        self.graph = lm.model.graph
        self.opset = next((o.version for o in lm.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.params = {t.name: torch.from_numpy(np.array(numpy_helper.to_array(t))) for t in self.graph.initializer}
        self.sites = {}
        if nmap is not None:
            for site in nmap.mask_sites:
                self.sites[site.tensor] = torch.from_numpy(site.groups.astype(np.int64))
        self.num_groups = nmap.num_groups if nmap is not None else 0
        # A model that ends in Softmax gives probabilities; losses need the scores before it (cross-entropy on
        # probabilities has almost no gradient: trigger synthesis failed on every class of such a model).
        final = next((n for n in self.graph.node if self.lm.output_name in n.output), None)
        self.logit_tensor = final.input[0] if final is not None and final.op_type == "Softmax" else self.lm.output_name
        missing = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                          for n in self.graph.node
                          if n.domain not in ("", "ai.onnx") or not hasattr(self, f"_op_{n.op_type}")})
        if missing:
            raise UnsupportedModelError(f"the torch mirror does not support {', '.join(missing)}")
        self._dry_run()

    def _dry_run(self) -> None:
        """Run the graph once at the probe's batch-1 shape, so that an op the mirror cannot run as this model
        uses it stops the run here, with one line naming it, before any long work: every tensor must come out
        with the shape onnxruntime gave it."""
        x = torch.zeros(self.lm.probe_input_shape, dtype=torch_dtype(
            onnx.helper.np_dtype_to_tensor_dtype(self.lm.input_dtype)))
        with torch.no_grad():
            values = self._run(x, None, checked=True)
        for name, value in values.items():
            expected = self.lm.shapes.get(name)
            if expected is not None and tuple(value.shape) != tuple(expected) and name not in self.params:
                node = next(n for n in self.graph.node if name in n.output)
                raise UnsupportedModelError(f"the torch mirror computes {node.op_type} ('{node.name}') as shape "
                                            f"{list(value.shape)}, onnxruntime as {list(expected)}")

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, *, capture: tuple[str, ...] = (),
                logits: bool = False):
        """The model's output; with ``logits=True`` the scores before a final Softmax (for losses)."""
        fixed = self.lm.batch_fixed
        if fixed and x.shape[0] != fixed:
            # A graph written for one batch size (Reshape to [1, -1]) runs in pieces of that size, as onnxruntime.
            rows = [k for k in range(0, x.shape[0], fixed)]
            parts = [self.forward(x[k:k + fixed], keep[k:k + fixed] if keep is not None and keep.dim() == 2
                                  else keep, capture=capture, logits=logits) for k in rows]
            if not capture:
                return torch.cat(parts)
            return torch.cat([p[0] for p in parts]), {n: torch.cat([p[1][n] for p in parts]) for n in capture}
        values = self._run(x, keep)
        out = values[self.logit_tensor if logits else self.lm.output_name]
        out = out.reshape(out.shape[0], -1)
        return (out, {name: values[name] for name in capture}) if capture else out

    def _run(self, x, keep, *, checked: bool = False) -> dict[str, torch.Tensor]:
        """Every tensor's value; ``checked``: an op that fails raises UnsupportedModelError naming it."""
        values: dict[str, torch.Tensor] = dict(self.params)
        values[self.lm.input_name] = x
        for node in self.graph.node:
            inputs = [values[name] if name else None for name in node.input]
            op = getattr(self, f"_op_{node.op_type}")
            if checked:
                try:
                    outputs = op(node, _attrs(node), *inputs)
                except UnsupportedModelError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure here means: this op, used this way
                    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise UnsupportedModelError(f"the torch mirror cannot run {node.op_type} ('{node.name}') "
                                                f"as this model uses it: {detail}") from None
            else:
                outputs = op(node, _attrs(node), *inputs)
            if not isinstance(outputs, (tuple, list)):
                outputs = (outputs,)
            for name, value in zip(node.output, outputs):
                if not name:
                    continue
                if keep is not None and name in self.sites:
                    value = value * self._site_mask(name, keep, value)
                values[name] = value
        return values

    def _site_mask(self, name, keep, value):
        groups = self.sites[name]
        flat = groups.reshape(-1)
        ones = torch.ones((), dtype=keep.dtype)
        if keep.dim() == 1:
            gathered = torch.where(flat >= 0, keep[flat.clamp(min=0)], ones)
            return gathered.reshape(groups.shape).to(value.dtype)
        gathered = torch.where(flat >= 0, keep[:, flat.clamp(min=0)], ones)
        return gathered.reshape((keep.shape[0],) + tuple(groups.shape[1:])).to(value.dtype)

    # -- ops -------------------------------------------------------------------------------------------------

    def _op_Conv(self, node, a, x, w, b=None):
        group = a.get("group", 1)
        kernel = list(w.shape[2:])
        strides = a.get("strides", [1] * len(kernel))
        dilations = a.get("dilations", [1] * len(kernel))
        pads = _auto_pad(a, x, kernel, strides, dilations)
        n = len(kernel)
        if pads[:n] != pads[n:]:
            x = F.pad(x, _pads_nd(pads))
            pads = [0] * (2 * n)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
        return conv(x, w, b, stride=strides, padding=pads[:n], dilation=dilations, groups=group)

    def _op_ConvTranspose(self, node, a, x, w, b=None):
        kernel = list(w.shape[2:])
        n = len(kernel)
        strides, dilations = a.get("strides", [1] * n), a.get("dilations", [1] * n)
        output_padding = list(a.get("output_padding", [0] * n))
        pads = list(a.get("pads", [0] * (2 * n)))
        mode = a.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if "output_shape" in a or mode in ("SAME_UPPER", "SAME_LOWER"):
            # The spec's padding for a requested output size (SAME: input size times stride).
            wanted = list(a["output_shape"])[-n:] if "output_shape" in a else \
                [size * s for size, s in zip(x.shape[2:], strides)]
            total = [s * (size - 1) + p + (k - 1) * d + 1 - out for size, s, p, k, d, out in
                     zip(x.shape[2:], strides, output_padding, kernel, dilations, wanted)]
            if min(total) < 0:
                raise UnsupportedModelError(f"the torch mirror does not support this ConvTranspose ('{node.name}')")
            upper = mode != "SAME_LOWER"
            pads = [t // 2 if upper else t - t // 2 for t in total] + [t - t // 2 if upper else t // 2 for t in total]
        conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
        y = conv(x, w, b, stride=strides, padding=0, output_padding=output_padding, groups=a.get("group", 1),
                 dilation=dilations)
        for axis in range(n):  # pads crop the full result, begin and end separately
            y = y.narrow(axis + 2, pads[axis], y.shape[axis + 2] - pads[axis] - pads[axis + n])
        return y

    def _op_Gemm(self, node, a, x, w, c=None):
        x = x.t() if a.get("transA", 0) else x
        w = w.t() if a.get("transB", 0) else w
        y = a.get("alpha", 1.0) * (x @ w)
        return y if c is None else y + a.get("beta", 1.0) * c

    def _op_MatMul(self, node, a, x, w):
        return torch.matmul(x, w)

    def _op_BatchNormalization(self, node, a, x, scale, bias, mean, var):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        inv = scale / torch.sqrt(var + a.get("epsilon", 1e-5))
        return (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)

    def _op_InstanceNormalization(self, node, a, x, scale, bias):
        return F.instance_norm(x, weight=scale, bias=bias, eps=a.get("epsilon", 1e-5))

    def _op_LayerNormalization(self, node, a, x, scale, bias=None):
        axis = a.get("axis", -1) % x.dim()
        dims = tuple(range(axis, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        y = (x - mean) / torch.sqrt(var + a.get("epsilon", 1e-5)) * scale
        return y if bias is None else y + bias

    def _op_Attention(self, node, a, q, k, v, attn_mask=None, *cache):
        if any(c is not None for c in cache) or len(node.output) > 1 and any(node.output[1:]):
            raise UnsupportedModelError(f"the torch mirror does not support Attention with a cache ('{node.name}')")
        three_d = q.dim() == 3
        if three_d:  # [B, N, H*d] -> [B, H, N, d]
            q = q.reshape(q.shape[0], q.shape[1], a["q_num_heads"], -1).transpose(1, 2)
            k = k.reshape(k.shape[0], k.shape[1], a["kv_num_heads"], -1).transpose(1, 2)
            v = v.reshape(v.shape[0], v.shape[1], a["kv_num_heads"], -1).transpose(1, 2)
        if k.shape[1] != q.shape[1]:  # grouped-query attention: each key/value head serves several query heads
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        scale = a.get("scale") or q.shape[-1] ** -0.5
        scores = (q @ k.transpose(-2, -1)) * scale
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        if a.get("is_causal", 0):
            n, m = scores.shape[-2:]
            scores = scores.masked_fill(~torch.ones(n, m, dtype=torch.bool).tril(m - n), float("-inf"))
        if a.get("softcap", 0.0):
            scores = a["softcap"] * torch.tanh(scores / a["softcap"])
        y = torch.softmax(scores, dim=-1) @ v
        return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1) if three_d else y

    def _op_Relu(self, node, a, x):
        return F.relu(x)

    def _op_LeakyRelu(self, node, a, x):
        return F.leaky_relu(x, a.get("alpha", 0.01))

    def _op_PRelu(self, node, a, x, slope):
        return torch.where(x >= 0, x, x * slope)

    def _op_Clip(self, node, a, x, low=None, high=None):
        low = a.get("min") if low is None else low
        high = a.get("max") if high is None else high
        bounds = [float(v) if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in (low, high)]
        if x.is_floating_point() and all(isinstance(v, float) for v in bounds) and bounds[0] <= bounds[1]:
            return _Clip.apply(x, *bounds)
        return torch.clamp(x, min=low, max=high)

    def _op_Sigmoid(self, node, a, x):
        return torch.sigmoid(x)

    def _op_HardSigmoid(self, node, a, x):
        return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1)

    def _op_HardSwish(self, node, a, x):
        return F.hardswish(x)

    def _op_Tanh(self, node, a, x):
        return torch.tanh(x)

    def _op_Elu(self, node, a, x):
        return F.elu(x, a.get("alpha", 1.0))

    def _op_Selu(self, node, a, x):
        alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
        return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))

    def _op_Gelu(self, node, a, x):
        approximate = a.get("approximate", b"none")
        return F.gelu(x, approximate=approximate.decode() if isinstance(approximate, bytes) else approximate)

    def _op_Erf(self, node, a, x):
        return torch.erf(x)

    def _op_Sqrt(self, node, a, x):
        return torch.sqrt(x)

    def _op_Exp(self, node, a, x):
        return torch.exp(x)

    def _op_Log(self, node, a, x):
        return torch.log(x)

    def _op_Neg(self, node, a, x):
        return -x

    def _op_Abs(self, node, a, x):
        return torch.abs(x)

    def _op_Pow(self, node, a, x, y):
        return torch.pow(x, y)

    def _op_Softplus(self, node, a, x):
        return F.softplus(x)

    def _op_Identity(self, node, a, x):
        return x

    def _op_Dropout(self, node, a, x, *rest):
        return x, torch.ones(x.shape, dtype=torch.bool)  # inference: identity, and an all-true mask output

    def _op_Cast(self, node, a, x):
        return x.to(torch_dtype(a["to"]))

    def _op_Add(self, node, a, x, y):
        return x + y

    def _op_Sub(self, node, a, x, y):
        return x - y

    def _op_Mul(self, node, a, x, y):
        return x * y

    def _op_Div(self, node, a, x, y):
        if not x.is_floating_point() and not y.is_floating_point():
            return torch.div(x, y, rounding_mode="trunc")
        return x / y

    def _op_Sum(self, node, a, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def _op_Mean(self, node, a, *xs):
        return self._op_Sum(node, a, *xs) / len(xs)

    def _op_Max(self, node, a, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = torch.maximum(out, x)
        return out

    def _op_Min(self, node, a, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = torch.minimum(out, x)
        return out

    def _pool_args(self, a, x):
        kernel = list(a["kernel_shape"])
        strides = a.get("strides", [1] * len(kernel))
        pads = _auto_pad(a, x, kernel, strides, a.get("dilations", [1] * len(kernel)))
        return kernel, strides, pads

    def _op_MaxPool(self, node, a, x):
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedModelError(f"the torch mirror does not support MaxPool indices ('{node.name}')")
        kernel, strides, pads = self._pool_args(a, x)
        n = len(kernel)
        if pads[:n] != pads[n:]:
            x = F.pad(x, _pads_nd(pads), value=float("-inf"))
            pads = [0] * (2 * n)
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        return pool(x, kernel, strides, pads[:n], dilation=a.get("dilations", [1] * n),
                    ceil_mode=bool(a.get("ceil_mode", 0)))

    def _op_AveragePool(self, node, a, x):
        kernel, strides, pads = self._pool_args(a, x)
        n = len(kernel)
        include = bool(a.get("count_include_pad", 0))
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        ceil = bool(a.get("ceil_mode", 0))
        if pads[:n] == pads[n:]:
            return pool(x, kernel, strides, pads[:n], ceil_mode=ceil, count_include_pad=include)
        padded = F.pad(x, _pads_nd(pads))
        if include:
            return pool(padded, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
        # Asymmetric padding (TF's SAME) that is not counted: window sums over counts of real elements.
        counts = F.pad(torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype), _pads_nd(pads))
        return pool(padded, kernel, strides, 0, ceil_mode=ceil) / pool(counts, kernel, strides, 0, ceil_mode=ceil)

    def _op_GlobalAveragePool(self, node, a, x):
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)

    def _op_GlobalMaxPool(self, node, a, x):
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)

    def _op_Pad(self, node, a, x, pads=None, value=None, axes=None):
        pads = _ints(pads) if pads is not None else list(a["pads"])
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if axes is not None:
            full = [0] * (2 * x.dim())
            axes = [int(v) % x.dim() for v in _ints(axes)]
            for i, axis in enumerate(axes):
                full[axis], full[axis + x.dim()] = pads[i], pads[i + len(axes)]
            pads = full
        if mode == "constant":
            fill = float(value.reshape(-1)[0]) if value is not None and value.numel() else a.get("value", 0.0)
            return F.pad(x, _pads_nd(pads), value=fill)
        # reflect, edge, wrap: one gather per padded axis (F.pad's modes pad only the last one to three axes)
        n = x.dim()
        for axis in range(n):
            before, after = pads[axis], pads[axis + n]
            if before or after:
                size = x.shape[axis]
                index = torch.arange(-before, size + after)
                if mode == "edge":
                    index = index.clamp(0, size - 1)
                elif mode == "wrap":
                    index = index % size
                elif mode == "reflect":
                    index = (size - 1) - ((size - 1) - index.abs()).abs()
                else:
                    raise UnsupportedModelError(f"the torch mirror does not support Pad mode {mode} ('{node.name}')")
                x = torch.index_select(x, axis, index)
        return x

    def _op_Flatten(self, node, a, x):
        axis = a.get("axis", 1) % max(x.dim(), 1)
        return x.reshape(int(np.prod(x.shape[:axis])) if axis else 1, -1)

    def _op_Reshape(self, node, a, x, shape):
        target = _ints(shape)
        if not a.get("allowzero", 0):
            target = [x.shape[i] if t == 0 else t for i, t in enumerate(target)]
        return x.reshape(target)

    def _op_Transpose(self, node, a, x):
        return x.permute(a.get("perm", list(reversed(range(x.dim())))))

    def _op_Concat(self, node, a, *xs):
        return torch.cat(xs, dim=a["axis"])

    def _op_Squeeze(self, node, a, x, axes=None):
        axes = _ints(axes) if axes is not None else a.get("axes")
        if axes is None:
            return x.squeeze()
        for axis in sorted((int(v) % x.dim() for v in axes), reverse=True):
            x = x.squeeze(axis)
        return x

    def _op_Unsqueeze(self, node, a, x, axes=None):
        axes = _ints(axes) if axes is not None else a["axes"]
        rank = x.dim() + len(axes)
        for axis in sorted(int(v) % rank for v in axes):
            x = x.unsqueeze(axis)
        return x

    def _op_ConstantOfShape(self, node, a, shape):
        value = a.get("value")
        fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
        return torch.full(tuple(_ints(shape)), torch.from_numpy(np.array(fill)).item(),
                          dtype=torch.from_numpy(np.array(fill)).dtype)

    def _op_Equal(self, node, a, x, y):
        return torch.eq(x, y)

    def _op_Where(self, node, a, condition, x, y):
        return torch.where(condition.bool(), x, y)

    def _op_Expand(self, node, a, x, shape):
        target = list(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))
        return x.expand(target)

    def _op_Shape(self, node, a, x):
        shape = torch.tensor(x.shape, dtype=torch.int64)
        return shape[a.get("start", 0):a.get("end", None)]

    def _op_Gather(self, node, a, x, index):
        axis = a.get("axis", 0) % x.dim()
        index = index.long() % x.shape[axis]
        return torch.index_select(x, axis, index.reshape(-1)).reshape(
            x.shape[:axis] + index.shape + x.shape[axis + 1:])

    def _op_Slice(self, node, a, x, starts=None, ends=None, axes=None, steps=None):
        starts = _ints(starts) if starts is not None else a["starts"]
        ends = _ints(ends) if ends is not None else a["ends"]
        axes = _ints(axes) if axes is not None else a.get("axes", list(range(len(starts))))
        steps = _ints(steps) if steps is not None else [1] * len(starts)
        index = [slice(None)] * x.dim()
        flips = []
        for axis, start, end, step in zip(axes, starts, ends, steps):
            axis %= x.dim()
            start, end, step = slice(start, end, step).indices(x.shape[axis])
            if step < 0:  # torch has no negative steps: the same elements, taken from the flipped axis
                size = x.shape[axis]
                start, end, step = size - 1 - start, size - 1 - end, -step
                flips.append(axis)
            index[axis] = slice(start, end, step)
        return (x.flip(flips) if flips else x)[tuple(index)]

    def _op_Split(self, node, a, x, split=None):
        axis = a.get("axis", 0) % x.dim()
        sizes = _ints(split) if split is not None else a.get("split")
        if sizes is None:  # equal parts; since opset 18 the last one may be smaller
            parts = a.get("num_outputs", len(node.output))
            size = -(-x.shape[axis] // parts)
            sizes = [min(size, x.shape[axis] - k * size) for k in range(parts)]
        return torch.split(x, list(sizes), dim=axis)

    def _reduce(self, a, x, axes, fn):
        dims = self._reduce_axes(a, x, axes)
        return x if dims is None else fn(x, dim=dims, keepdim=bool(a.get("keepdims", 1)))

    def _op_ReduceMean(self, node, a, x, axes=None):
        return self._reduce(a, x, axes, torch.mean)

    def _op_ReduceSum(self, node, a, x, axes=None):
        return self._reduce(a, x, axes, torch.sum)

    def _op_ReduceMax(self, node, a, x, axes=None):
        return self._reduce(a, x, axes, torch.amax)
