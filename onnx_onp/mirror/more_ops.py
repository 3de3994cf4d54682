"""The torch mirror's ops beyond convolutions and activations: shape arithmetic, comparisons, resizing,
normalisations, reductions and layout changes, as exporters (Keras/tf2onnx, torch.onnx, old caffe2 zoos) write
them. Each follows the ONNX spec at the model's opset and is checked against onnxruntime in tests/test_mirror.py.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError


def _ints(value) -> list[int]:
    return [int(v) for v in (value.reshape(-1).tolist() if isinstance(value, torch.Tensor) else value)]


def _text(value, default: str) -> str:
    value = default if value is None else value
    return value.decode() if isinstance(value, bytes) else value


def torch_dtype(onnx_type: int) -> torch.dtype:
    name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_type)).name
    return torch.bool if name == "bool" else getattr(torch, name)


def _coerce_2d(x: torch.Tensor, axis: int, fn) -> torch.Tensor:
    """Softmax-like ops before opset 13: the input is flattened to 2-D at ``axis`` and normalised per row."""
    axis %= max(x.dim(), 1)
    rows = int(np.prod(x.shape[:axis])) if axis else 1
    return fn(x.reshape(rows, -1), 1).reshape(x.shape)


def _resize_source(coords: torch.Tensor, in_size: int, out_size: int, scale: float, mode: str) -> torch.Tensor:
    """Output coordinates -> input coordinates (ONNX coordinate_transformation_mode)."""
    if mode == "half_pixel":
        return (coords + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (coords + 0.5) / scale - 0.5 if out_size > 1 else torch.zeros_like(coords)
    if mode == "align_corners":
        return coords * (in_size - 1) / (out_size - 1) if out_size > 1 else torch.zeros_like(coords)
    if mode == "asymmetric":
        return coords / scale
    if mode == "half_pixel_symmetric":
        adjust = out_size / (scale * in_size)
        center = in_size / 2
        return center * (1 - adjust) + (coords + 0.5) / scale - 0.5
    raise UnsupportedModelError(f"the torch mirror does not support Resize coordinate mode {mode}")


def _nearest(source: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "round_prefer_floor":
        return torch.ceil(source - 0.5)
    if mode == "round_prefer_ceil":
        return torch.floor(source + 0.5)
    if mode == "floor":
        return torch.floor(source)
    if mode == "ceil":
        return torch.ceil(source)
    raise UnsupportedModelError(f"the torch mirror does not support Resize nearest mode {mode}")


def _cubic_weights(t: torch.Tensor, a: float) -> list[torch.Tensor]:
    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _resize_axis(x: torch.Tensor, axis: int, out_size: int, scale: float, a: dict) -> torch.Tensor:
    """Resize one axis: ONNX's separable nearest/linear/cubic interpolation as gathers with weights."""
    in_size = x.shape[axis]
    mode = _text(a.get("mode"), "nearest")
    coords = torch.arange(out_size, dtype=torch.float64)
    source = _resize_source(coords, in_size, out_size, scale, _text(a.get("coordinate_transformation_mode"),
                                                                     "half_pixel"))
    if mode == "nearest":
        index = _nearest(source, _text(a.get("nearest_mode"), "round_prefer_floor")).long().clamp(0, in_size - 1)
        return torch.index_select(x, axis, index)
    if mode == "linear":
        source = source.clamp(0, in_size - 1)
        low = torch.floor(source).long()
        t = source - low
        taps, weights = [low, (low + 1).clamp(max=in_size - 1)], [1 - t, t]
    elif mode == "cubic":
        low = torch.floor(source).long()
        t = source - low
        taps = [low - 1, low, low + 1, low + 2]
        weights = _cubic_weights(t, float(a.get("cubic_coeff_a", -0.75)))
        if a.get("exclude_outside", 0):
            weights = [w * ((i >= 0) & (i < in_size)) for w, i in zip(weights, taps)]
            total = sum(weights)
            weights = [w / total for w in weights]
        taps = [i.clamp(0, in_size - 1) for i in taps]
    else:
        raise UnsupportedModelError(f"the torch mirror does not support Resize mode {mode}")
    shape = [1] * x.dim()
    shape[axis] = out_size
    out = 0
    for index, weight in zip(taps, weights):
        out = out + torch.index_select(x, axis, index) * weight.to(x.dtype).reshape(shape)
    return out


class MoreOps:
    """Mixin of TorchMirror: ``_op_<OpType>(node, attrs, *inputs)``; ``self.opset`` is the model's opset."""

    opset: int

    # -- shape arithmetic --------------------------------------------------------------------------------------

    def _op_Size(self, node, a, x):
        return torch.tensor(x.numel(), dtype=torch.int64)

    def _op_ConstantOfShape(self, node, a, shape):
        value = a.get("value")
        fill = torch.from_numpy(np.array(onnx.numpy_helper.to_array(value))).reshape(-1)[0] if value is not None \
            else torch.tensor(0.0)
        return torch.full(_ints(shape), fill.item(), dtype=fill.dtype)

    def _op_Range(self, node, a, start, limit, delta):
        return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)

    def _op_Expand(self, node, a, x, shape):
        return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))

    def _op_Tile(self, node, a, x, repeats):
        return x.repeat(_ints(repeats))

    def _op_Constant(self, node, a):
        for key, value in a.items():
            if key == "value":
                return torch.from_numpy(np.array(onnx.numpy_helper.to_array(value)))
            if key in ("value_float", "value_floats"):
                return torch.tensor(value, dtype=torch.float32)
            if key in ("value_int", "value_ints"):
                return torch.tensor(value, dtype=torch.int64)
        raise UnsupportedModelError(f"the torch mirror does not support this Constant ('{node.name}')")

    def _op_CastLike(self, node, a, x, like):
        return x.to(like.dtype)

    def _op_DepthToSpace(self, node, a, x):
        n, c, h, w = x.shape
        b = a["blocksize"]
        if _text(a.get("mode"), "DCR") == "DCR":
            y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // (b * b), h * b, w * b)

    def _op_SpaceToDepth(self, node, a, x):
        n, c, h, w = x.shape
        b = a["blocksize"]
        y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * b * b, h // b, w // b)

    def _op_GatherElements(self, node, a, x, index):
        axis = a.get("axis", 0) % x.dim()
        return torch.gather(x, axis, index.long() % x.shape[axis])

    def _op_CumSum(self, node, a, x, axis):
        dim = int(axis.reshape(-1)[0]) % x.dim()
        if a.get("reverse", 0):
            x = x.flip(dim)
        out = torch.cumsum(x, dim)
        if a.get("exclusive", 0):
            out = out - x
        return out.flip(dim) if a.get("reverse", 0) else out

    # -- logic and comparisons ---------------------------------------------------------------------------------

    def _op_Where(self, node, a, cond, x, y):
        return torch.where(cond.bool(), x, y)

    def _op_Equal(self, node, a, x, y):
        return x == y

    def _op_Less(self, node, a, x, y):
        return x < y

    def _op_LessOrEqual(self, node, a, x, y):
        return x <= y

    def _op_Greater(self, node, a, x, y):
        return x > y

    def _op_GreaterOrEqual(self, node, a, x, y):
        return x >= y

    def _op_Not(self, node, a, x):
        return torch.logical_not(x)

    def _op_And(self, node, a, x, y):
        return torch.logical_and(x, y)

    def _op_Or(self, node, a, x, y):
        return torch.logical_or(x, y)

    def _op_Xor(self, node, a, x, y):
        return torch.logical_xor(x, y)

    # -- elementwise -------------------------------------------------------------------------------------------

    def _op_Reciprocal(self, node, a, x):
        return torch.reciprocal(x)

    def _op_Floor(self, node, a, x):
        return torch.floor(x)

    def _op_Ceil(self, node, a, x):
        return torch.ceil(x)

    def _op_Round(self, node, a, x):
        return torch.round(x)  # half to even, as ONNX

    def _op_Sign(self, node, a, x):
        return torch.sign(x)

    def _op_Sin(self, node, a, x):
        return torch.sin(x)

    def _op_Cos(self, node, a, x):
        return torch.cos(x)

    def _op_Mod(self, node, a, x, y):
        return torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)

    def _op_Softsign(self, node, a, x):
        return x / (1 + x.abs())

    def _op_Celu(self, node, a, x):
        return F.celu(x, a.get("alpha", 1.0))

    def _op_ThresholdedRelu(self, node, a, x):
        return torch.where(x > a.get("alpha", 1.0), x, torch.zeros_like(x))

    def _op_Mish(self, node, a, x):
        return x * torch.tanh(F.softplus(x))

    # -- normalisation and softmax -----------------------------------------------------------------------------

    def _op_Softmax(self, node, a, x):
        if self.opset < 13:
            return _coerce_2d(x, a.get("axis", 1), torch.softmax)
        return torch.softmax(x, dim=a.get("axis", -1))

    def _op_LogSoftmax(self, node, a, x):
        if self.opset < 13:
            return _coerce_2d(x, a.get("axis", 1), torch.log_softmax)
        return torch.log_softmax(x, dim=a.get("axis", -1))

    def _op_LayerNormalization(self, node, a, x, scale, bias=None):
        axis = a.get("axis", -1) % x.dim()
        dims = tuple(range(axis, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        inv = torch.rsqrt(((x - mean) ** 2).mean(dim=dims, keepdim=True) + a.get("epsilon", 1e-5))
        y = (x - mean) * inv * scale
        return (y if bias is None else y + bias), mean, inv

    def _op_GroupNormalization(self, node, a, x, scale, bias):
        n, c = x.shape[:2]
        groups = a["num_groups"]
        g = x.reshape(n, groups, -1)
        mean = g.mean(dim=2, keepdim=True)
        g = (g - mean) * torch.rsqrt(((g - mean) ** 2).mean(dim=2, keepdim=True) + a.get("epsilon", 1e-5))
        shape = (1, c) + (1,) * (x.dim() - 2)
        if scale.numel() != c:  # opset 18: one scale and bias per group
            scale, bias = scale.repeat_interleave(c // groups), bias.repeat_interleave(c // groups)
        return g.reshape(x.shape) * scale.reshape(shape) + bias.reshape(shape)

    def _op_LRN(self, node, a, x):
        size = a["size"]
        square = x * x
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        padded = F.pad(square.transpose(1, -1), (before, after)).transpose(1, -1)
        total = sum(padded.narrow(1, k, x.shape[1]) for k in range(size))
        return x / (a.get("bias", 1.0) + a.get("alpha", 1e-4) / size * total) ** a.get("beta", 0.75)

    # -- reductions --------------------------------------------------------------------------------------------

    def _reduce_axes(self, a, x, axes):
        """The reduced dims, or None for an identity (empty axes with noop_with_empty_axes)."""
        axes = _ints(axes) if axes is not None else a.get("axes")
        if not axes:
            return None if a.get("noop_with_empty_axes", 0) else tuple(range(x.dim()))
        return tuple(int(v) % x.dim() for v in axes)

    def _reduced(self, a, x, axes, fn):
        dims = self._reduce_axes(a, x, axes)
        return x if dims is None else fn(x, dims, bool(a.get("keepdims", 1)))

    def _op_ReduceMin(self, node, a, x, axes=None):
        return self._reduced(a, x, axes, lambda v, d, k: torch.amin(v, dim=d, keepdim=k))

    def _op_ReduceProd(self, node, a, x, axes=None):
        def prod(v, dims, keep):
            for dim in sorted(dims, reverse=True):
                v = torch.prod(v, dim=dim, keepdim=keep)
            return v
        return self._reduced(a, x, axes, prod)

    def _op_ReduceL1(self, node, a, x, axes=None):
        return self._reduced(a, x, axes, lambda v, d, k: v.abs().sum(dim=d, keepdim=k))

    def _op_ReduceL2(self, node, a, x, axes=None):
        return self._reduced(a, x, axes, lambda v, d, k: torch.sqrt((v * v).sum(dim=d, keepdim=k)))

    def _op_ReduceSumSquare(self, node, a, x, axes=None):
        return self._reduced(a, x, axes, lambda v, d, k: (v * v).sum(dim=d, keepdim=k))

    def _op_ReduceLogSum(self, node, a, x, axes=None):
        return self._reduced(a, x, axes, lambda v, d, k: torch.log(v.sum(dim=d, keepdim=k)))

    def _op_ReduceLogSumExp(self, node, a, x, axes=None):
        return self._reduced(a, x, axes, lambda v, d, k: torch.logsumexp(v, dim=d, keepdim=k))

    def _arg(self, a, x, fn):
        axis = a.get("axis", 0) % x.dim()
        keep = bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):
            flipped = fn(x.flip(axis), dim=axis, keepdim=keep)
            return x.shape[axis] - 1 - flipped
        return fn(x, dim=axis, keepdim=keep)

    def _op_ArgMax(self, node, a, x):
        return self._arg(a, x, torch.argmax)

    def _op_ArgMin(self, node, a, x):
        return self._arg(a, x, torch.argmin)

    # -- resizing ----------------------------------------------------------------------------------------------

    def _op_Resize(self, node, a, x, *rest):
        if self.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates, floor for nearest
            a = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor", **a}
            return self._resize(x, rest[0], None, a)
        rest = list(rest) + [None] * (3 - len(rest))
        roi, scales, sizes = rest
        if _text(a.get("coordinate_transformation_mode"), "half_pixel") == "tf_crop_and_resize":
            raise UnsupportedModelError(f"the torch mirror does not support tf_crop_and_resize ('{node.name}')")
        if _text(a.get("keep_aspect_ratio_policy"), "stretch") != "stretch" or a.get("antialias", 0):
            raise UnsupportedModelError(f"the torch mirror does not support this Resize ('{node.name}')")
        scales = scales if scales is not None and scales.numel() else None
        sizes = sizes if sizes is not None and sizes.numel() else None
        if "axes" in a:  # opset 18: scales or sizes for these axes only
            axes = [int(v) % x.dim() for v in a["axes"]]
            given = scales if scales is not None else sizes
            full = torch.tensor([1.0] * x.dim() if scales is not None else list(x.shape), dtype=given.dtype)
            full[axes] = given
            scales, sizes = (full, None) if scales is not None else (None, full)
        return self._resize(x, scales, sizes, a)

    def _op_Upsample(self, node, a, x, scales=None):
        a = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor", **a}
        return self._resize(x, scales if scales is not None else torch.tensor(a["scales"]), None, a)

    def _resize(self, x, scales, sizes, a):
        for axis in range(x.dim()):
            if sizes is not None:
                out_size = int(sizes[axis])
                scale = out_size / x.shape[axis]
            else:
                scale = float(scales[axis])
                out_size = int(math.floor(x.shape[axis] * scale))
            if out_size != x.shape[axis] or scale != 1.0:
                x = _resize_axis(x, axis, out_size, scale, a)
        return x

    # -- attention heads, indexing and scatter (ViT-style heads, torch.onnx index assignments) --------------------

    def _op_Einsum(self, node, a, *xs):
        return torch.einsum(_text(a["equation"], ""), *xs)

    def _op_Trilu(self, node, a, x, k=None):
        k = int(k.reshape(-1)[0]) if k is not None else 0
        return torch.triu(x, k) if a.get("upper", 1) else torch.tril(x, k)

    def _op_TopK(self, node, a, x, k):
        values, indices = torch.topk(x, int(k.reshape(-1)[0]), dim=a.get("axis", -1),
                                     largest=bool(a.get("largest", 1)), sorted=bool(a.get("sorted", 1)))
        return values, indices

    def _op_Hardmax(self, node, a, x):
        if self.opset < 13:
            return _coerce_2d(x, a.get("axis", 1), lambda v, d: F.one_hot(v.argmax(d), v.shape[d]).to(v.dtype))
        axis = a.get("axis", -1) % x.dim()
        return F.one_hot(x.argmax(axis), x.shape[axis]).to(x.dtype).movedim(-1, axis)

    def _op_GatherND(self, node, a, x, index):
        if a.get("batch_dims", 0):
            raise UnsupportedModelError(f"the torch mirror does not support GatherND with batch_dims ('{node.name}')")
        index = index.long()
        index = torch.where(index < 0, index + torch.tensor(x.shape[:index.shape[-1]]), index)
        return x[tuple(index.unbind(-1))]

    def _op_ScatterND(self, node, a, x, index, updates):
        reduction = _text(a.get("reduction"), "none")
        if reduction not in ("none", "add"):
            raise UnsupportedModelError(f"the torch mirror does not support ScatterND {reduction} ('{node.name}')")
        index = index.long()
        index = torch.where(index < 0, index + torch.tensor(x.shape[:index.shape[-1]]), index)
        return x.index_put(tuple(index.unbind(-1)), updates, accumulate=reduction == "add")

    def _op_ScatterElements(self, node, a, x, index, updates):
        axis = a.get("axis", 0) % x.dim()
        index = index.long() % x.shape[axis]
        reduction = _text(a.get("reduction"), "none")
        if reduction == "none":
            return x.scatter(axis, index, updates)
        torch_reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[reduction]
        return x.scatter_reduce(axis, index, updates, torch_reduce, include_self=True)

    def _op_OneHot(self, node, a, index, depth, values):
        depth = int(depth.reshape(-1)[0])
        hot = F.one_hot(index.long() % depth, depth).bool()
        axis = a.get("axis", -1) % hot.dim()
        return torch.where(hot, values[1], values[0]).movedim(-1, axis)

    def _op_NonZero(self, node, a, x):
        return torch.nonzero(x).t()

    def _op_EyeLike(self, node, a, x):
        rows, cols = x.shape
        k = a.get("k", 0)
        i = torch.arange(rows)
        inside = (i + k >= 0) & (i + k < cols)
        out = torch.zeros(rows, cols, dtype=torch_dtype(a["dtype"]) if "dtype" in a else x.dtype)
        out[i[inside], i[inside] + k] = 1
        return out

    # -- more elementwise --------------------------------------------------------------------------------------

    def _op_Tan(self, node, a, x):
        return torch.tan(x)

    def _op_Asin(self, node, a, x):
        return torch.asin(x)

    def _op_Acos(self, node, a, x):
        return torch.acos(x)

    def _op_Atan(self, node, a, x):
        return torch.atan(x)

    def _op_Sinh(self, node, a, x):
        return torch.sinh(x)

    def _op_Cosh(self, node, a, x):
        return torch.cosh(x)

    def _op_Asinh(self, node, a, x):
        return torch.asinh(x)

    def _op_Acosh(self, node, a, x):
        return torch.acosh(x)

    def _op_Atanh(self, node, a, x):
        return torch.atanh(x)

    def _op_IsNaN(self, node, a, x):
        return torch.isnan(x)

    def _op_IsInf(self, node, a, x):
        positive, negative = a.get("detect_positive", 1), a.get("detect_negative", 1)
        return (torch.isposinf(x) & bool(positive)) | (torch.isneginf(x) & bool(negative))

    def _op_Shrink(self, node, a, x):
        lambd, bias = a.get("lambd", 0.5), a.get("bias", 0.0)
        return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))

    def _op_Swish(self, node, a, x):
        return x * torch.sigmoid(a.get("alpha", 1.0) * x)

    # -- more normalisation ------------------------------------------------------------------------------------

    def _op_LpNormalization(self, node, a, x):
        return F.normalize(x, p=a.get("p", 2), dim=a.get("axis", -1), eps=0.0)

    def _op_RMSNormalization(self, node, a, x, scale):
        axis = a.get("axis", -1) % x.dim()
        dims = tuple(range(axis, x.dim()))
        return x * torch.rsqrt((x * x).mean(dim=dims, keepdim=True) + a.get("epsilon", 1e-5)) * scale

    # -- quantize/dequantize pairs (QDQ models) ---------------------------------------------------------------

    def _per_axis(self, a, x, value):
        """A per-tensor or per-axis scale/zero point, shaped to broadcast against x."""
        if value.dim() == 0 or value.numel() == 1:
            return value.reshape(())
        if a.get("block_size", 0):
            raise UnsupportedModelError("the torch mirror does not support blocked quantization")
        shape = [1] * x.dim()
        shape[a.get("axis", 1) % x.dim()] = -1
        return value.reshape(shape)

    def _op_QuantizeLinear(self, node, a, x, scale, zero_point=None):
        """Quantized values kept as floats (exact integers) with a straight-through gradient: the forward
        value is onnxruntime's, and trigger synthesis still gets a gradient through the rounding."""
        info = torch.iinfo(_quant_dtype(zero_point, a))
        scale = self._per_axis(a, x, scale).to(x.dtype)
        zero = self._per_axis(a, x, zero_point).to(x.dtype) if zero_point is not None else 0.0
        scaled = x / scale
        rounded = scaled + (torch.round(scaled) - scaled).detach()  # half to even, as ONNX
        return torch.clamp(rounded + zero, info.min, info.max)

    def _op_DequantizeLinear(self, node, a, x, scale, zero_point=None):
        x = x.to(scale.dtype)
        zero = self._per_axis(a, x, zero_point).to(scale.dtype) if zero_point is not None else 0.0
        return (x - zero) * self._per_axis(a, x, scale)


def _quant_dtype(zero_point, a) -> torch.dtype:
    if zero_point is not None:
        return zero_point.dtype
    return torch_dtype(a["output_dtype"]) if a.get("output_dtype") else torch.uint8
