"""Fixture zoo: every architecture exports (TorchScript and dynamo, BN folded or
not) to an ONNX graph that matches torch numerically and has the expected ops."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from fixtures.zoo.architectures import (
    VGGBN,
    BottleneckResNet,
    DenseNetTiny,
    KerasStyleNet,
    LeNetFC,
    MobileNetV2,
    ResNet18,
)
from fixtures.zoo.export import export_onnx, fold_conv_bn, randomize_bn, torch_logits

ATOL = 1e-4
NCHW = (1, 3, 32, 32)

# name -> (factory with small widths, input shape, has BNs directly after convs)
ARCHS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool]] = {
    "resnet18": (lambda: ResNet18(width=8), NCHW, True),
    "bottleneck": (lambda: BottleneckResNet(width=4), NCHW, True),
    "mobilenetv2": (lambda: MobileNetV2(width_mult=0.25, last_channel=64), NCHW, True),
    "densenet": (lambda: DenseNetTiny(growth=4), NCHW, True),
    "vggbn": (lambda: VGGBN(cfg=(8, "M", 16, "M", 16, "M"), hidden=16), NCHW, True),
    # BNs follow ReLUs: folding must leave them alone, so export both ways too.
    "keras": (lambda: KerasStyleNet(width=4, hidden=16), (1, 32, 32, 3), True),
    "lenet": (lambda: LeNetFC(), NCHW, False),
    "lenet_mnist": (lambda: LeNetFC(in_channels=1, input_size=28), (1, 1, 28, 28), False),
}

CASES = [
    pytest.param(name, dynamo, fold, id=f"{name}-{'dynamo' if dynamo else 'ts'}{'-fold' if fold else ''}")
    for name, (_, _, has_bn) in ARCHS.items()
    for dynamo in (False, True)
    for fold in ((False, True) if has_bn else (False,))
]


def session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # tiny models; avoid spinning threads fighting torch
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    factory, shape, _ = ARCHS[name]
    torch.manual_seed(0)
    model = randomize_bn(factory(), seed=1).eval()
    return model, shape


# --------------------------------------------------------------------------- #
# graph helpers
# --------------------------------------------------------------------------- #
class Graph:
    def __init__(self, proto: onnx.ModelProto):
        self.proto = proto
        self.nodes = list(proto.graph.node)
        self.inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.ops = Counter(n.op_type for n in self.nodes)
        self.consumers = Counter(i for n in self.nodes for i in n.input)

    def of(self, op: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if n.op_type == op]

    def src_op(self, node: onnx.NodeProto, i: int = 0) -> str | None:
        p = self.producer.get(node.input[i])
        return p.op_type if p is not None else None

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def bn_after_conv(self) -> int:
        """BatchNormalizations that are the sole consumer of a Conv output (foldable).

        (DenseNetTiny's stem conv feeds both a BN and a Concat: not foldable.)
        """
        return sum(
            self.src_op(n) == "Conv" and self.consumers[n.input[0]] == 1
            for n in self.of("BatchNormalization")
        )

    def has_identity_add(self) -> bool:
        """An Add whose one operand is a block input (a Relu output), not a conv/BN branch."""
        return any(
            any(self.src_op(n, i) == "Relu" for i in range(2)) for n in self.of("Add")
        )


def check_structure(name: str, g: Graph, dynamo: bool) -> None:
    ops = g.ops
    flatten_op = "Reshape" if dynamo else "Flatten"
    gap_op = "ReduceMean" if dynamo else "GlobalAveragePool"
    if name == "resnet18":
        assert ops["Conv"] == 20 and ops["Add"] == 8 and ops["Gemm"] == 1
        assert ops[gap_op] == 1
        assert g.has_identity_add()
        shortcut = [n for n in g.of("Conv") if list(g.attr(n, "kernel_shape")) == [1, 1]]
        assert len(shortcut) == 3 and all(list(g.attr(n, "strides")) == [2, 2] for n in shortcut)
    elif name == "bottleneck":
        assert ops["Conv"] == 1 + 3 * 3 + 2 and ops["Add"] == 3 and ops["Gemm"] == 1
        assert g.has_identity_add()
    elif name == "mobilenetv2":
        dw = []
        for n in g.of("Conv"):
            w = g.inits[n.input[1]]
            if g.attr(n, "group", 1) > 1:
                assert g.attr(n, "group") == w.shape[0] and w.shape[1] == 1
                dw.append(n)
        assert len(dw) == 17
        pointwise = [n for n in g.of("Conv") if list(g.attr(n, "kernel_shape")) == [1, 1]]
        assert len(pointwise) == 2 * 17 - 1 + 1  # one block has no expansion conv
        assert ops["Clip"] == 35 and ops["Add"] >= 10 and ops["Relu"] == 0
        assert ops[gap_op] == 1 and ops["Gemm"] == 1
    elif name == "densenet":
        cats = g.of("Concat")
        assert len(cats) == 6 and all(g.attr(n, "axis") == 1 for n in cats)
        assert ops["AveragePool"] == 1 and ops["Conv"] == 1 + 6 * 2 + 1
    elif name == "vggbn":
        assert ops["MaxPool"] == 3 and ops["Gemm"] == 2 and ops["Conv"] == 3
        (flat,) = g.of(flatten_op)
        gemm = next(n for n in g.of("Gemm") if n.input[0] == flat.output[0])
        assert g.attr(gemm, "transB") == 1
        assert g.inits[gemm.input[1]].shape == (16, 16 * 4 * 4)  # conv channel -> 16 inputs
    elif name == "keras":
        perms = [list(g.attr(n, "perm")) for n in g.of("Transpose")]
        assert perms == [[0, 3, 1, 2], [0, 2, 3, 1]]
        assert ops["MatMul"] == 2 and ops["Gemm"] == 0 and ops[flatten_op] == 1
        for mm in g.of("MatMul"):
            assert mm.input[1] in g.inits
            (add,) = [n for n in g.of("Add") if mm.output[0] in n.input]
            assert any(i in g.inits for i in add.input)
        bns = g.of("BatchNormalization")
        assert len(bns) == 2 and all(g.src_op(n) == "Relu" for n in bns)
        assert g.inits[g.of("MatMul")[0].input[1]].shape == (16 * 16 * 8, 16)
    elif name.startswith("lenet"):
        assert ops["Conv"] == 2 and ops["Gemm"] == 3 and ops["MaxPool"] == 2
        assert ops["BatchNormalization"] == 0 and ops[flatten_op] == 1
    else:  # pragma: no cover
        raise AssertionError(name)


# --------------------------------------------------------------------------- #
# tests
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name,dynamo,fold", CASES)
def test_export_matches_torch(name, dynamo, fold, tmp_path):
    model, shape = build(name)
    _, n_conv_bn = fold_conv_bn(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())

    path = export_onnx(model, tmp_path / f"{name}.onnx", shape, dynamo=dynamo, fold_bn=fold)

    # one self-contained file, parameters as initializers, dynamic batch
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.onnx"]
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert len(proto.graph.initializer) > 0

    # numerics vs torch (batch of 4 != traced batch)
    x = np.random.default_rng(0).standard_normal((4, *shape[1:])).astype(np.float32)
    (onnx_out,) = session(path).run(None, {"input": x})
    ref = torch_logits(model, x)
    assert onnx_out.shape == (4, 10)
    assert np.abs(onnx_out - ref).max() <= ATOL

    g = Graph(proto)
    if fold:
        assert g.bn_after_conv() == 0
        assert g.ops["BatchNormalization"] == n_bn - n_conv_bn
    else:
        assert g.bn_after_conv() == n_conv_bn
        assert g.ops["BatchNormalization"] == n_bn
    check_structure(name, g, dynamo)


def test_fold_conv_bn_counts_and_copy():
    expected = {"resnet18": 20, "bottleneck": 12, "mobilenetv2": 52, "densenet": 6, "vggbn": 3,
                "keras": 0, "lenet": 0}
    for name, n in expected.items():
        model, shape = build(name)
        x = torch.randn(2, *shape[1:])
        folded, count = fold_conv_bn(model)
        assert count == n, name
        assert folded is not model
        # original untouched, folded equivalent
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == n_bn - n
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_randomize_bn_is_not_identity():
    model = randomize_bn(VGGBN(), seed=3)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert (bn.running_var > 0).all() and not torch.allclose(bn.bias, torch.zeros_like(bn.bias))


def test_static_batch_and_opset(tmp_path):
    model, shape = build("lenet")
    p = export_onnx(model, tmp_path / "ts.onnx", shape, opset=17, dynamic_batch=False)
    proto = onnx.load(str(p))
    assert proto.opset_import[0].version == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    p = export_onnx(model, tmp_path / "dyn.onnx", shape, dynamo=True, opset=18, dynamic_batch=False)
    proto = onnx.load(str(p))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = session(p).run(None, {"input": x})[0]
    assert np.abs(out - torch_logits(model, x)).max() <= ATOL


def test_architecture_details():
    # full-size defaults build and run on 32x32
    for model in (ResNet18(), BottleneckResNet(), MobileNetV2(), DenseNetTiny(), VGGBN(), LeNetFC()):
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert KerasStyleNet()(torch.randn(2, 32, 32, 3)).shape == (2, 10)
    assert LeNetFC(in_channels=1, input_size=28)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert ResNet18(num_classes=7, in_channels=1, width=4)(torch.randn(1, 1, 32, 32)).shape == (1, 7)

    # BottleneckResNet: identity and projection shortcuts, expansion 4
    blocks = [m for m in BottleneckResNet().modules() if type(m).__name__ == "Bottleneck"]
    kinds = [len(b.shortcut) == 0 for b in blocks]
    assert any(kinds) and not all(kinds)
    assert all(b.conv3.out_channels == 4 * b.conv1.out_channels for b in blocks)

    # MobileNetV2: an expand-ratio-1 block, several residual blocks, depthwise convs
    blocks = [m for m in MobileNetV2().modules() if type(m).__name__ == "InvertedResidual"]
    assert any(sum(isinstance(c, nn.Conv2d) for c in b.conv) == 2 for b in blocks)
    assert sum(b.use_res for b in blocks) >= 5
    dw = [c for c in MobileNetV2().modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert dw and all(c.groups == c.in_channels == c.out_channels for c in dw)
