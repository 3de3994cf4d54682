"""The torch mirror against onnxruntime on every graph `inspect` and `evaluate` accept (issue 23, item 6).

Equality (max |difference| <= 1e-4), unmasked and with neuron masks, on: every committed fixture; onnx's light
zoo (ImageNet classifiers from caffe2, given random weights scaled layer by layer so that scores are O(1) and the
comparison means something: the shipped ones are all constants); and Keras/TF-style exports built here with
onnx.helper (NHWC input and Transpose, Shape->Gather->Concat->Reshape flatten, ConstantOfShape, Range, Expand, Pad,
Resize, Where/Cast, LayerNorm + Gelu heads with Einsum attention, QDQ quantization). `audit --detect-only` runs
on such builds, and a graph with an op the mirror lacks stops at once with one line naming it (exit 5).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnx_onp.errors import UnsupportedModelError
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model
from onnx_onp.load.loader import load_model_proto
from onnx_onp.mirror import TorchMirror
from onnx_onp.mirror.torch_mirror import _attrs
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp_cli.main import main

from .conftest import FIXTURES

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# The three with 60-140M parameters in fully connected layers take minutes each on two cores (randomising,
# probing, mapping); they run with ONP_FULL_LIGHT_ZOO=1 (their results are in the commit that added this file).
LIGHT_LARGE = {"light_bvlc_alexnet", "light_vgg19", "light_zfnet512"}
SAMPLE = FIXTURES / "data" / "cifar10_defense_sample.npz"
TOLERANCE = 1e-4


def _masks(nmap, share=0.3):
    """No mask, two random masks over the prunable groups, and (as signals use) per-sample multipliers."""
    runs = [(nmap.empty_mask(), None)]
    prunable = np.flatnonzero(nmap.prunable)
    for seed in (0, 1):
        if len(prunable):
            rng = np.random.default_rng(seed)
            mask = nmap.empty_mask()
            mask[rng.choice(prunable, max(1, int(share * len(prunable))), replace=False)] = True
            runs.append((mask, None))
    return runs


def mirror_difference(lm, x: np.ndarray, *, multipliers: bool = True) -> float:
    """The largest |mirror - onnxruntime| over the unmasked model, random masks and per-sample multipliers."""
    nmap = build_neuron_map(lm)
    mirror = TorchMirror(lm, nmap)
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    worst = 0.0
    runs = _masks(nmap)
    if multipliers and nmap.num_groups:
        factors = np.random.default_rng(2).uniform(0.7, 1.3, (len(x), nmap.num_groups)).astype(np.float32)
        runs.append((runs[-1][0], factors))
    for mask, factors in runs:
        keep = (~mask).astype(np.float32) if factors is None else (~mask) * factors
        with torch.no_grad():
            got = mirror(torch.from_numpy(x), torch.from_numpy(keep)).numpy()
        expected = evaluator.logits(x, mask, factors)
        assert got.shape == expected.shape and np.isfinite(expected).all()
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def _images(lm, n: int, seed: int = 0) -> np.ndarray:
    """n image-like inputs at the model's shape: multiples of 1/255, as decoded 8-bit images are."""
    n = lm.batch_fixed or n
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n,) + tuple(lm.probe_input_shape[1:])) / 255.0).astype(lm.input_dtype)


# -- every fixture ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((FIXTURES / "models").glob("*.onnx")), ids=lambda p: p.stem)
def test_mirror_matches_onnxruntime_on_every_fixture(path):
    lm = load_model(path)
    assert mirror_difference(lm, _images(lm, 8)) <= TOLERANCE


# -- onnx's light zoo ------------------------------------------------------------------------------------------

def randomised_light_model(path: Path, seed: int = 0):
    """A light-zoo model with random weights, scaled so that every Conv/Gemm output has unit spread and every
    BatchNormalization normalises with its input's statistics (data-dependent initialisation), and without its
    final Softmax, so that scores (not saturated probabilities) are compared."""
    lm = load_model(path)  # folds the zoo's ConstantOfShape weights into initializers
    graph = lm.model.graph
    last = next(n for n in graph.node if lm.output_name in n.output)
    if last.op_type == "Softmax":
        graph.output[0].name = last.input[0]
        graph.node.remove(last)
    rng = np.random.default_rng(seed)
    mirror = TorchMirror(lm)
    params = mirror.params
    for name, value in params.items():
        if value.dtype == torch.float32:
            params[name] = torch.from_numpy((rng.standard_normal(value.shape) if value.dim() >= 2
                                             else rng.uniform(0.5, 1.5, value.shape)).astype(np.float32))
    values = dict(params)
    values[lm.input_name] = torch.from_numpy(
        rng.standard_normal((lm.batch_fixed or 4,) + tuple(lm.probe_input_shape[1:])).astype(np.float32))
    with torch.no_grad():
        for node in graph.node:
            inputs = [values[name] if name else None for name in node.input]
            if node.op_type == "BatchNormalization":
                dims = [0] + list(range(2, inputs[0].dim()))
                params[node.input[3]] = inputs[3] = inputs[0].mean(dims)
                params[node.input[4]] = inputs[4] = inputs[0].var(dims)
            outputs = getattr(mirror, f"_op_{node.op_type}")(node, _attrs(node), *inputs)
            outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            if node.op_type in ("Conv", "Gemm"):
                spread = outputs[0].std()
                for name in node.input[1:]:
                    params[name] = params[name] / spread
                outputs[0] = outputs[0] / spread
            values.update(zip(node.output, outputs))
    for tensor in graph.initializer:
        if params[tensor.name].dtype == torch.float32:
            tensor.CopyFrom(numpy_helper.from_array(params[tensor.name].numpy(), tensor.name))
    return load_model_proto(lm.model)


LIGHT_MODELS = sorted(LIGHT.glob("*.onnx"))


@pytest.mark.skipif(not LIGHT_MODELS, reason="this onnx package ships no light zoo")
@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_mirror_matches_onnxruntime_on_the_light_zoo(path):
    if path.stem in LIGHT_LARGE and os.environ.get("ONP_FULL_LIGHT_ZOO") != "1":
        pytest.skip("60-140M parameters: minutes on two cores; ONP_FULL_LIGHT_ZOO=1 runs it")
    lm = randomised_light_model(path)
    x = np.random.default_rng(1).standard_normal((lm.batch_fixed or 2,) + lm.probe_input_shape[1:])
    nmap = build_neuron_map(lm)
    difference = mirror_difference(lm, x.astype(np.float32), multipliers=False)
    print(f"{path.stem}: max |mirror - onnxruntime| {difference:.2e}, {int(nmap.prunable.sum())} prunable groups")
    assert difference <= TOLERANCE


def test_light_zoo_ships_with_onnx():
    """The equality test above must not pass by finding nothing: the installed onnx has the nine classifiers."""
    assert {p.stem for p in LIGHT_MODELS} >= {"light_resnet50", "light_densenet121", "light_squeezenet",
                                               "light_shufflenet", "light_inception_v1", "light_inception_v2"}


# -- Keras/TF-style exports built with onnx.helper -------------------------------------------------------------

_RNG = np.random.default_rng(0)


def _weight(name, *shape, fan_in=None):
    fan_in = fan_in or int(np.prod(shape[1:]))
    return numpy_helper.from_array((_RNG.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)


def _bias(name, *shape):
    return numpy_helper.from_array((_RNG.standard_normal(shape) * 0.1).astype(np.float32), name)


def _const(name, value, dtype=np.int64):
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _keras_model(nodes, initializers, opset, output="logits", name="keras"):
    x = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__0", 32, 32, 3])
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["unk__0", 10])
    graph = helper.make_graph(nodes, name, [x], [y], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tf2onnx",
                              producer_version="1.16.1")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def tf2onnx_cnn() -> onnx.ModelProto:
    """A Keras CNN as tf2onnx writes it: NHWC input, Transpose, explicit Pad, SAME convolutions and pooling (TF's
    asymmetric padding), a nearest Resize, back to NHWC and flattened by Shape->Gather->Unsqueeze->Concat->Reshape,
    a Dense layer as MatMul+Add and a final Softmax."""
    n = helper.make_node
    nodes = [
        n("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
        n("Pad", ["nchw", "pads"], ["padded"], mode="constant"),
        n("Conv", ["padded", "w1", "b1"], ["c1"], kernel_shape=[3, 3]),
        n("Relu", ["c1"], ["r1"]),
        n("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        n("Relu", ["c2"], ["r2"]),
        n("Resize", ["r2", "", "scales"], ["up"], mode="nearest", coordinate_transformation_mode="asymmetric",
          nearest_mode="floor"),
        n("Conv", ["up", "w3", "b3"], ["c3"], kernel_shape=[1, 1]),
        n("LeakyRelu", ["c3"], ["l3"], alpha=0.2),
        n("MaxPool", ["l3"], ["p3"], kernel_shape=[2, 2], strides=[2, 2]),
        n("AveragePool", ["p3"], ["p4"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        n("Transpose", ["p4"], ["nhwc"], perm=[0, 2, 3, 1]),
        n("Shape", ["nhwc"], ["shape"]),
        n("Gather", ["shape", "zero"], ["batch"], axis=0),
        n("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        n("Concat", ["batch1", "minus1"], ["flat_shape"], axis=0),
        n("Reshape", ["nhwc", "flat_shape"], ["flat"]),
        n("MatMul", ["flat", "wd"], ["mm"]),
        n("Add", ["mm", "bd"], ["scores"]),
        n("Softmax", ["scores"], ["probs"], axis=-1),
    ]
    inits = [_const("pads", [0, 0, 1, 1, 0, 0, 1, 1]), _weight("w1", 8, 3, 3, 3), _bias("b1", 8),
             _weight("w2", 16, 8, 3, 3), _bias("b2", 16), _const("scales", [1, 1, 2, 2], np.float32),
             _weight("w3", 8, 16, 1, 1), _bias("b3", 8), _const("zero", 0), _const("axes0", [0]),
             _const("minus1", [-1]), _weight("wd", 512, 10, fan_in=512), _bias("bd", 10)]
    return _keras_model(nodes, inits, 13, output="probs", name="tf2onnx_cnn")


def dynamic_shapes() -> onnx.ModelProto:
    """Shape arithmetic as exporters write it around a convolution: ConstantOfShape of a Shape, Slice/Squeeze to
    a channel count, Range -> Cast -> Reshape -> Expand to a per-channel offset, Where/Greater/Not/Cast instead of
    an activation, a negative-step Slice (channel reversal), a second Conv, ReduceMean pooling and a Gemm."""
    n = helper.make_node
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        n("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
        n("Conv", ["nchw", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Shape", ["c1"], ["s"]),
        n("ConstantOfShape", ["s"], ["ones"], value=one),
        n("Mul", ["c1", "ones"], ["c1b"]),
        n("Slice", ["s", "start1", "end2"], ["cdim"]),
        n("Squeeze", ["cdim", "axes0"], ["channels"]),
        n("Range", ["zero", "channels", "step"], ["r"]),
        n("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        n("Mul", ["rf", "tenth"], ["rs"]),
        n("Reshape", ["rs", "bias_shape"], ["rb"]),
        n("Expand", ["rb", "s"], ["rbe"]),
        n("Add", ["c1b", "rbe"], ["h"]),
        n("Greater", ["h", "fzero"], ["positive"]),
        n("Mul", ["h", "tenth"], ["leak"]),
        n("Where", ["positive", "h", "leak"], ["act"]),
        n("Not", ["positive"], ["negative"]),
        n("Cast", ["negative"], ["negf"], to=TensorProto.FLOAT),
        n("Mul", ["negf", "tenth"], ["nudge"]),
        n("Add", ["act", "nudge"], ["act2"]),
        n("Slice", ["act2", "minus1", "very_negative", "axes1", "minus1"], ["reversed"]),
        n("Add", ["act2", "reversed"], ["mixed"]),
        n("Conv", ["mixed", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Relu", ["c2"], ["r2"]),
        n("ReduceMean", ["r2"], ["pooled"], axes=[2, 3], keepdims=0),
        n("Gemm", ["pooled", "wg", "bg"], ["logits"], transB=1),
    ]
    inits = [_weight("w1", 8, 3, 3, 3), _bias("b1", 8), _const("start1", [1]), _const("end2", [2]),
             _const("axes0", [0]), _const("zero", 0), _const("step", 1), _const("tenth", 0.1, np.float32),
             _const("bias_shape", [1, -1, 1, 1]), _const("fzero", 0.0, np.float32), _const("minus1", [-1]),
             _const("very_negative", [np.iinfo(np.int64).min]), _const("axes1", [1]),
             _weight("w2", 16, 8, 3, 3), _bias("b2", 16), _weight("wg", 10, 16), _bias("bg", 10)]
    return _keras_model(nodes, inits, 13, name="dynamic_shapes")


def vit_head() -> onnx.ModelProto:
    """A small vision transformer: patchify Conv, dynamic Reshape to tokens, LayerNormalization, single-head
    attention written as Einsum, Softmax, a Gelu MLP (opset 20 Gelu), LayerNorm decomposed as torch.onnx writes it
    (ReduceMean, Sub, Pow, Sqrt, Div), tf2onnx's Erf Gelu, ReduceMean over tokens with axes as an input, and
    Unsqueeze/Squeeze with axes inputs."""
    n = helper.make_node
    nodes = [
        n("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
        n("Conv", ["nchw", "wp", "bp"], ["patches"], kernel_shape=[4, 4], strides=[4, 4]),
        n("Shape", ["patches"], ["s"]),
        n("Gather", ["s", "first_two"], ["nc"], axis=0),
        n("Concat", ["nc", "minus1"], ["token_shape"], axis=0),
        n("Reshape", ["patches", "token_shape"], ["t"]),
        n("Transpose", ["t"], ["tokens"], perm=[0, 2, 1]),
        n("LayerNormalization", ["tokens", "g1", "be1"], ["ln1"], axis=-1, epsilon=1e-5),
        n("Einsum", ["ln1", "wq"], ["q"], equation="bnd,de->bne"),
        n("Einsum", ["ln1", "wk"], ["k"], equation="bnd,de->bne"),
        n("MatMul", ["ln1", "wv"], ["v"]),
        n("Einsum", ["q", "k"], ["scores"], equation="bnd,bmd->bnm"),
        n("Mul", ["scores", "temperature"], ["scaled"]),
        n("Softmax", ["scaled"], ["attention"], axis=-1),
        n("Einsum", ["attention", "v"], ["o"], equation="bnm,bmd->bnd"),
        n("Add", ["tokens", "o"], ["r1"]),
        n("ReduceMean", ["r1", "last"], ["mean"], keepdims=1),
        n("Sub", ["r1", "mean"], ["centred"]),
        n("Pow", ["centred", "two"], ["squared"]),
        n("ReduceMean", ["squared", "last"], ["var"], keepdims=1),
        n("Add", ["var", "eps"], ["var_eps"]),
        n("Sqrt", ["var_eps"], ["std"]),
        n("Div", ["centred", "std"], ["ln2"]),
        n("MatMul", ["ln2", "w1"], ["h1"]),
        n("Add", ["h1", "b1"], ["h1b"]),
        n("Gelu", ["h1b"], ["g"]),
        n("MatMul", ["g", "w2"], ["h2"]),
        n("Add", ["h2", "b2"], ["h2b"]),
        n("Add", ["r1", "h2b"], ["r2"]),
        n("Div", ["r2", "sqrt2"], ["r2s"]),
        n("Erf", ["r2s"], ["erf"]),
        n("Add", ["erf", "fone"], ["erf1"]),
        n("Mul", ["r2", "erf1"], ["half_gelu"]),
        n("Mul", ["half_gelu", "half"], ["e"]),
        n("ReduceMean", ["e", "axes1"], ["pooled"], keepdims=0),
        n("Unsqueeze", ["pooled", "axes1"], ["pooled3"]),
        n("Squeeze", ["pooled3", "axes1"], ["pooled2"]),
        n("LayerNormalization", ["pooled2", "g3", "be3"], ["ln3"], axis=-1),
        n("Gemm", ["ln3", "wc", "bc"], ["logits"], transB=1),
    ]
    f = np.float32
    inits = [_weight("wp", 16, 3, 4, 4), _bias("bp", 16), _const("first_two", [0, 1]), _const("minus1", [-1]),
             _const("g1", np.ones(16), f), _const("be1", np.zeros(16), f), _weight("wq", 16, 16, fan_in=16),
             _weight("wk", 16, 16, fan_in=16), _weight("wv", 16, 16, fan_in=16), _const("temperature", 0.25, f),
             _const("last", [-1]), _const("two", 2.0, f), _const("eps", 1e-5, f), _weight("w1", 16, 32, fan_in=16),
             _bias("b1", 32), _weight("w2", 32, 16, fan_in=32), _bias("b2", 16), _const("sqrt2", np.sqrt(2), f),
             _const("fone", 1.0, f), _const("half", 0.5, f), _const("axes1", [1]), _const("g3", np.ones(16), f),
             _const("be3", np.zeros(16), f), _weight("wc", 10, 16), _bias("bc", 10)]
    return _keras_model(nodes, inits, 20, name="vit_head")


def opset11_cnn() -> onnx.ModelProto:
    """An older (opset 11) export: Pad with pads and value as inputs, Resize-11 with roi and sizes from
    Shape->Slice->Concat (linear, half_pixel, a non-integer 1.25 factor) and back down by scales (cubic),
    ReduceMean/Squeeze/Unsqueeze with axes as attributes, Flatten and Gemm."""
    n = helper.make_node
    nodes = [
        n("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
        n("Pad", ["nchw", "pads", "pad_value"], ["padded"], mode="constant"),
        n("Conv", ["padded", "w1", "b1"], ["c1"], kernel_shape=[3, 3]),
        n("Relu", ["c1"], ["r1"]),
        n("Shape", ["r1"], ["s"]),
        n("Slice", ["s", "start0", "end2"], ["nc"]),
        n("Concat", ["nc", "hw"], ["sizes"], axis=0),
        n("Resize", ["r1", "roi", "no_scales", "sizes"], ["up"], mode="linear",
          coordinate_transformation_mode="half_pixel"),
        n("Resize", ["up", "roi", "down_scales"], ["down"], mode="cubic", coordinate_transformation_mode="half_pixel",
          cubic_coeff_a=-0.75),
        n("Conv", ["down", "w2", "b2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Relu", ["c2"], ["r2"]),
        n("ReduceMean", ["r2"], ["pooled"], axes=[2, 3], keepdims=1),
        n("Squeeze", ["pooled"], ["squeezed"], axes=[2, 3]),
        n("Unsqueeze", ["squeezed"], ["unsqueezed"], axes=[1]),
        n("Flatten", ["unsqueezed"], ["flat"], axis=1),
        n("Gemm", ["flat", "wg", "bg"], ["logits"], transB=1),
    ]
    f = np.float32
    inits = [_const("pads", [0, 0, 1, 1, 0, 0, 1, 1]), _const("pad_value", 0.5, f), _weight("w1", 8, 3, 3, 3),
             _bias("b1", 8), _const("roi", [], f), _const("no_scales", [], f), _const("start0", [0]),
             _const("end2", [2]), _const("hw", [40, 40]), _const("down_scales", [1, 1, 0.8, 0.8], f),
             _weight("w2", 16, 8, 3, 3), _bias("b2", 16), _weight("wg", 10, 16), _bias("bg", 10)]
    return _keras_model(nodes, inits, 11, name="opset11_cnn")


def qdq_cnn() -> onnx.ModelProto:
    """A quantized (QDQ) classifier as onnxruntime's quantization tool writes it: the input quantized and
    dequantized, int8 weights with per-channel scales dequantized before the Conv (the neuron map does not take
    a dequantized weight for a layer's, so a float Conv follows: its channels are what the masks prune)."""
    n = helper.make_node
    nodes = [
        n("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
        n("QuantizeLinear", ["nchw", "x_scale", "x_zero"], ["xq"]),
        n("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        n("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["w"], axis=0),
        n("Conv", ["xd", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Relu", ["c"], ["r"]),
        n("Conv", ["r", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Relu", ["c2"], ["r2"]),
        n("GlobalAveragePool", ["r2"], ["g"]),
        n("Flatten", ["g"], ["flat"]),
        n("Gemm", ["flat", "wg", "bg"], ["logits"], transB=1),
    ]
    wq = _RNG.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8)
    inits = [_const("x_scale", 1 / 255, np.float32), _const("x_zero", 0, np.uint8), _const("wq", wq, np.int8),
             _const("w_scale", _RNG.uniform(0.002, 0.006, 8), np.float32), _const("w_zero", np.zeros(8), np.int8),
             _bias("b", 8), _weight("w2", 16, 8, 3, 3), _bias("b2", 16), _weight("wg", 10, 16), _bias("bg", 10)]
    return _keras_model(nodes, inits, 13, name="qdq_cnn")


def lp_pool_cnn() -> onnx.ModelProto:
    """A classifier with LpPool, which onnxruntime runs and the torch mirror does not."""
    n = helper.make_node
    nodes = [
        n("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
        n("Conv", ["nchw", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"]),
        n("LpPool", ["r1"], ["p"], kernel_shape=[32, 32], p=2),
        n("Flatten", ["p"], ["flat"]),
        n("Gemm", ["flat", "wg", "bg"], ["logits"], transB=1),
    ]
    return _keras_model(nodes, [_weight("w1", 8, 3, 3, 3), _bias("b1", 8), _weight("wg", 10, 8), _bias("bg", 10)],
                        13, name="lp_pool_cnn")


BUILT = {"tf2onnx_cnn": tf2onnx_cnn, "dynamic_shapes": dynamic_shapes, "vit_head": vit_head, "qdq_cnn": qdq_cnn,
         "opset11_cnn": opset11_cnn}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_mirror_matches_onnxruntime_on_keras_style_exports(name):
    lm = load_model_proto(BUILT[name]())
    assert build_neuron_map(lm).prunable.any()  # the masked comparisons below prune something
    assert mirror_difference(lm, _images(lm, 8)) <= TOLERANCE


def test_mirror_gradients_flow_through_shape_arithmetic_and_quantization():
    """Trigger synthesis needs input gradients: through the dynamic Reshape, Where, Einsum and the QDQ rounding."""
    for name in sorted(BUILT):
        lm = load_model_proto(BUILT[name]())
        mirror = TorchMirror(lm, build_neuron_map(lm))
        x = torch.from_numpy(_images(lm, 4)).requires_grad_(True)
        mirror(x, logits=True)[:, 3].sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name


def test_clip_keeps_clamps_values_and_gradient_bit_for_bit():
    """The mirror's fast Clip (hardtanh's backward on bounds one float step out) is clamp exactly, the bounds
    themselves included (clamp passes the gradient there, hardtanh does not): a search must not change with it."""
    from onnx_onp.mirror.torch_mirror import _Clip

    for dtype in (torch.float32, torch.float64):
        x = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=dtype) * 4
        x[:20], x[20:40] = 0.0, 6.0  # on the bounds
        x[40:60] = torch.nextafter(torch.tensor(6.0, dtype=dtype), torch.tensor(7.0, dtype=dtype))  # just outside
        x[60:80] = torch.nextafter(torch.tensor(0.0, dtype=dtype), torch.tensor(-1.0, dtype=dtype))
        grad = torch.randn(4000, generator=torch.Generator().manual_seed(1), dtype=dtype)
        results = []
        for clip in (lambda v: _Clip.apply(v, 0.0, 6.0),
                     lambda v: torch.clamp(v, min=torch.tensor(0.0, dtype=dtype), max=torch.tensor(6.0, dtype=dtype))):
            leaf = x.clone().requires_grad_(True)
            out = clip(leaf)
            out.backward(grad)
            results.append((out.detach(), leaf.grad))
        (fast, fast_grad), (clamp, clamp_grad) = results
        assert torch.equal(fast, clamp) and torch.equal(fast_grad, clamp_grad)
        assert fast_grad[:40].abs().sum() > 0 and fast_grad[40:80].abs().sum() == 0  # the bounds pass, outside not


def test_an_unsupported_op_is_named_in_one_line_before_any_work(tmp_path):
    lm = load_model_proto(lp_pool_cnn())
    with pytest.raises(UnsupportedModelError, match=r"^the torch mirror does not support LpPool$"):
        TorchMirror(lm, build_neuron_map(lm))
    path = tmp_path / "lp_pool.onnx"
    onnx.save(lp_pool_cnn(), path)
    for args in (["inspect", str(path)], ["evaluate", str(path), "--data", str(SAMPLE), "--limit", "50"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output  # inspect and evaluate accept the graph
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["audit", str(path), "--data", str(SAMPLE), "--detect-only"])
    assert result.exit_code == 5, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert errors == ["error: the torch mirror does not support LpPool"], result.output
    assert time.perf_counter() - started < 60


# Two of the built exports end to end (on 200 images: whether the pipeline runs on them, not how well it detects);
# the equality tests above cover all of them.
@pytest.mark.parametrize("name", ["tf2onnx_cnn", "vit_head"])
def test_audit_detect_only_runs_on_keras_style_exports(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    onnx.save(BUILT[name](), path)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["audit", str(path), "--data", str(SAMPLE), "--limit", "200",
                                       "--detect-only", "--report", str(report)])
    assert result.exit_code in (0, 10), result.output
    assert json.loads(report.read_text())["verdict"]["verdict"] in ("no backdoor detected", "backdoor suspected")


# -- op by op --------------------------------------------------------------------------------------------------

def _r(*shape, low=-2.0, high=2.0, seed=0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def _i(values):
    return np.array(values, np.int64)


# (op, inputs, attributes, opset): one node, checked output by output against onnxruntime.
OPS = [
    ("Einsum", [_r(2, 3, 4), _r(2, 5, 4, seed=1)], {"equation": "bnd,bmd->bnm"}, 13),
    ("Einsum", [_r(3, 4)], {"equation": "ij->ji"}, 13),
    ("Trilu", [_r(2, 4, 5), _i(1)], {"upper": 0}, 14),
    ("Trilu", [_r(4, 5)], {}, 14),
    ("TopK", [_r(3, 6), _i([2])], {"axis": 1}, 11),
    ("TopK", [_r(3, 6), _i([3])], {"axis": 0 - 1, "largest": 0}, 11),
    ("Hardmax", [_r(3, 5)], {}, 13),
    ("Hardmax", [_r(2, 3, 4)], {"axis": 1}, 11),
    ("GatherND", [_r(3, 4, 5), _i([[0, 1], [2, -1]])], {}, 13),
    ("ScatterND", [_r(4, 5), _i([[1], [3]]), _r(2, 5, seed=1)], {}, 13),
    ("ScatterND", [_r(4, 5), _i([[1, 2], [3, 0]]), _r(2, seed=1)], {"reduction": "add"}, 16),
    ("ScatterElements", [_r(3, 4), _i([[3, 1], [0, 2], [1, -1]]), _r(3, 2, seed=1)], {"axis": 1}, 13),
    ("ScatterElements", [_r(3, 4), _i([[3, 3], [0, 2], [1, 1]]), _r(3, 2, seed=1)], {"axis": 1,
                                                                                    "reduction": "add"}, 16),
    ("OneHot", [_i([[0, 2, -1], [4, 1, 3]]), _i([5]), np.array([0.0, 2.0], np.float32)], {}, 11),
    ("OneHot", [_i([0, 2, 4]), _i([5]), np.array([-1.0, 1.0], np.float32)], {"axis": 0}, 11),
    ("NonZero", [np.array([[0, 1.5, 0], [2, 0, 3]], np.float32)], {}, 13),
    ("EyeLike", [_r(4, 6)], {"k": 2}, 9),
    ("EyeLike", [_r(5, 3)], {"k": -1, "dtype": TensorProto.DOUBLE}, 9),
    ("Tan", [_r(3, 4, low=-1, high=1)], {}, 13), ("Atan", [_r(3, 4)], {}, 13),
    ("Asin", [_r(3, 4, low=-0.9, high=0.9)], {}, 13), ("Acos", [_r(3, 4, low=-0.9, high=0.9)], {}, 13),
    ("Sinh", [_r(3, 4)], {}, 13), ("Cosh", [_r(3, 4)], {}, 13), ("Asinh", [_r(3, 4)], {}, 13),
    ("Acosh", [_r(3, 4, low=1.1, high=3)], {}, 13), ("Atanh", [_r(3, 4, low=-0.9, high=0.9)], {}, 13),
    ("IsInf", [np.array([1.0, np.inf, -np.inf, np.nan], np.float32)], {"detect_negative": 0}, 13),
    ("IsNaN", [np.array([1.0, np.inf, np.nan], np.float32)], {}, 13),
    ("Shrink", [_r(3, 4)], {"lambd": 0.7, "bias": 0.2}, 13),
    ("Softsign", [_r(3, 4)], {}, 13), ("Celu", [_r(3, 4)], {"alpha": 0.5}, 13),
    ("ThresholdedRelu", [_r(3, 4)], {"alpha": 0.3}, 13), ("Mish", [_r(3, 4)], {}, 18),
    ("Selu", [_r(3, 4)], {"alpha": 1.5, "gamma": 1.1}, 13), ("HardSigmoid", [_r(3, 4)], {"alpha": 0.3}, 13),
    ("HardSwish", [_r(3, 4, low=-4, high=4)], {}, 14), ("Gelu", [_r(3, 4)], {"approximate": "tanh"}, 20),
    ("LpNormalization", [_r(3, 4)], {"p": 1, "axis": 1}, 13), ("LpNormalization", [_r(3, 4)], {"axis": 0}, 13),
    ("GroupNormalization", [_r(2, 4, 3, 3), _r(4, seed=1), _r(4, seed=2)], {"num_groups": 2}, 21),
    ("InstanceNormalization", [_r(2, 4, 3, 3), _r(4, seed=1), _r(4, seed=2)], {}, 13),
    ("LRN", [_r(2, 5, 3, 3)], {"size": 3, "alpha": 0.01, "beta": 0.7, "bias": 1.5}, 13),
    ("LayerNormalization", [_r(2, 3, 4), _r(3, 4, seed=1), _r(3, 4, seed=2)], {"axis": 1}, 17),
    ("DepthToSpace", [_r(1, 8, 2, 3)], {"blocksize": 2}, 13),
    ("DepthToSpace", [_r(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, 13),
    ("SpaceToDepth", [_r(1, 2, 4, 6)], {"blocksize": 2}, 13),
    ("CumSum", [_r(3, 4), _i(1)], {"exclusive": 1, "reverse": 1}, 14),
    ("ArgMax", [np.array([[1, 3, 3], [2, 2, 0]], np.float32)], {"axis": 1, "select_last_index": 1}, 13),
    ("ArgMin", [_r(3, 4)], {"axis": 0, "keepdims": 0}, 13),
    ("ReduceMin", [_r(3, 4, 5), _i([0, 2])], {}, 18), ("ReduceProd", [_r(3, 4, 5), _i([1])], {"keepdims": 0}, 18),
    ("ReduceL1", [_r(3, 4, 5), _i([-1])], {}, 18), ("ReduceL2", [_r(3, 4, 5)], {}, 18),
    ("ReduceSumSquare", [_r(3, 4, 5), _i([1, 2])], {}, 18),
    ("ReduceLogSum", [_r(3, 4, 5, low=0.1), _i([1])], {}, 18),
    ("ReduceLogSumExp", [_r(3, 4, 5), _i([2])], {"keepdims": 0}, 18),
    ("ReduceMax", [_r(3, 4, 5), np.zeros(0, np.int64)], {"noop_with_empty_axes": 1}, 18),
    ("ReduceSum", [_r(3, 4, 5), _i([1])], {}, 13), ("ReduceMean", [_r(3, 4, 5)], {"axes": [0, 2]}, 13),
    ("Mod", [_i([7, -7, 5]), _i([3, 3, -2])], {}, 13),
    ("Mod", [_r(3, 4), _r(3, 4, low=0.5, high=1.5, seed=1)], {"fmod": 1}, 13),
    ("Tile", [_r(2, 3), _i([2, 3])], {}, 13),
    ("Range", [np.array(0.5, np.float32), np.array(3.0, np.float32), np.array(0.75, np.float32)], {}, 11),
    ("Size", [_r(3, 4)], {}, 13), ("CastLike", [_r(3, 4), _i([1])], {}, 15),
    ("Expand", [_r(3, 1), _i([2, 3, 4])], {}, 13),
    ("Where", [np.array([[True], [False]]), _r(2, 3), _r(3, seed=1)], {}, 16),
    ("Xor", [np.array([True, False, True]), np.array([True, True, False])], {}, 7),
    ("Softmax", [_r(2, 3, 4)], {"axis": 1}, 11), ("LogSoftmax", [_r(2, 3, 4)], {"axis": 1}, 13),
    ("Split", [_r(7, 2)], {"axis": 0, "num_outputs": 3}, 18),
    ("Slice", [_r(5, 6), _i([-1, 4]), _i([-6, 0]), _i([0, 1]), _i([-2, -3])], {}, 13),
    ("Pad", [_r(1, 2, 4, 4), _i([0, 0, 2, 1, 0, 0, 1, 2])], {"mode": "reflect"}, 13),
    ("Pad", [_r(1, 2, 4, 4), _i([1, 0, 2, 1, 0, 1, 1, 2])], {"mode": "edge"}, 13),
    ("Pad", [_r(1, 2, 4, 4), _i([1, 2, 2, 1]), np.array(0.0, np.float32), _i([2, 3])], {"mode": "wrap"}, 19),
    ("Upsample", [_r(1, 2, 3, 3), np.array([1, 1, 2, 3], np.float32)], {"mode": "nearest"}, 9),
    ("Resize", [_r(1, 2, 5, 5), None, np.array([1, 1, 1.6, 0.6], np.float32)],
     {"mode": "nearest", "coordinate_transformation_mode": "pytorch_half_pixel", "nearest_mode": "round_prefer_ceil"},
     13),
    ("Resize", [_r(1, 2, 5, 5), None, None, _i([1, 2, 7, 3])],
     {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, 13),
    ("Resize", [_r(1, 2, 5, 5), None, None, _i([9, 4])],
     {"mode": "cubic", "axes": [2, 3], "exclude_outside": 1}, 18),
    ("AveragePool", [_r(1, 2, 7, 7)], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                        "pads": [1, 0, 0, 1]}, 19),
    ("MaxPool", [_r(1, 2, 7, 7)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1],
                                    "dilations": [1, 2]}, 13),
    ("ConvTranspose", [_r(1, 3, 4, 4), _r(3, 2, 3, 3, seed=1)], {"strides": [2, 2], "pads": [1, 0, 0, 1],
                                                                  "output_padding": [1, 1]}, 13),
    ("ConvTranspose", [_r(1, 3, 4, 4), _r(3, 2, 3, 3, seed=1)], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, 13),
    ("QuantizeLinear", [_r(2, 3, 4) * 10, np.array([0.05, 0.1, 0.2], np.float32), np.zeros(3, np.int8)],
     {"axis": 1}, 13),
    ("DequantizeLinear", [np.arange(-6, 6, dtype=np.int8).reshape(3, 4), np.array(0.5, np.float32),
                          np.array(2, np.int8)], {}, 13),
    ("Swish", [_r(3, 4)], {"alpha": 0.7}, 24), ("RMSNormalization", [_r(2, 3, 4), _r(4, low=0.5, seed=1)], {}, 23),
    ("Sign", [_r(3, 4)], {}, 13), ("Round", [np.array([0.5, 1.5, -2.5, 2.4], np.float32)], {}, 11),
    ("Floor", [_r(3, 4)], {}, 13), ("Ceil", [_r(3, 4)], {}, 13), ("Reciprocal", [_r(3, 4, low=0.5)], {}, 13),
    ("Sin", [_r(3, 4)], {}, 7), ("Cos", [_r(3, 4)], {}, 7), ("Erf", [_r(3, 4)], {}, 13),
    ("Equal", [_i([1, 2, 3]), _i([1, 0, 3])], {}, 13), ("LessOrEqual", [_r(3, 4), _r(3, 4, seed=1)], {}, 16),
    ("GreaterOrEqual", [_r(3, 4), _r(4, seed=1)], {}, 16),
    ("And", [np.array([True, False, True]), np.array([True, True, False])], {}, 7),
    ("Or", [np.array([True, False, False]), np.array([True, True, False])], {}, 7),
    ("Constant", [], {"value_floats": [1.0, 2.5]}, 13),
    ("ConstantOfShape", [_i([2, 3])], {"value": helper.make_tensor("v", TensorProto.INT64, [1], [7])}, 13),
]


def _op_id(case):
    op, inputs, attrs, opset = case
    return f"{op}-{opset}-" + "-".join(f"{k}" for k in sorted(attrs)) if attrs else f"{op}-{opset}"


@pytest.mark.parametrize("case", OPS, ids=[f"{k}-{_op_id(c)}" for k, c in enumerate(OPS)])
def test_each_op_matches_onnxruntime(case):
    import onnxruntime as ort

    op, arrays, attrs, opset = case
    names = ["" if a is None else f"in{k}" for k, a in enumerate(arrays)]  # None: an omitted optional input
    given = {n: a for n, a in zip(names, arrays) if a is not None}
    outputs = {"TopK": 2, "Split": 3, "LayerNormalization": 1}.get(op, 1)
    out_names = [f"out{k}" for k in range(outputs)]
    node = helper.make_node(op, names, out_names, **attrs)
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in given.items()]
    model = helper.make_model(helper.make_graph([node], op, inputs, [onnx.ValueInfoProto(name=n) for n in out_names]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9 if opset < 21 else 10
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    inferred = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    del model.graph.output[:]
    model.graph.output.extend(inferred[n] for n in out_names)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, given)
    mirror = TorchMirror.__new__(TorchMirror)  # the op methods need only the opset
    mirror.opset = opset
    got = getattr(mirror, f"_op_{op}")(node, _attrs(node), *[None if a is None else torch.from_numpy(np.array(a))
                                                                 for a in arrays])
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    for g, e in zip(got, expected):
        g = g.detach().numpy()
        assert g.shape == e.shape, (g.shape, e.shape)
        if e.dtype.kind in "fc":
            np.testing.assert_allclose(g.astype(e.dtype), e, atol=1e-5, rtol=1e-5, equal_nan=True)
        else:
            np.testing.assert_array_equal(g.astype(e.dtype), e)
