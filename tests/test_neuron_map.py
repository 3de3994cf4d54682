"""The neuron map on torch-exported architectures, checked three ways:

1. groups against what the architecture implies (derived from the torch module, not from the ONNX graph);
2. masked evaluation against the zeroed export, and the shrunk export against the zeroed one (onnxruntime);
3. the masked evaluation against a second implementation: torch with the same neurons zeroed.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from fixtures.zoo.architectures import (BottleneckResNet, DenseNetTiny, KerasStyleNet, MobileNetV2, ResNet18,
                                        VGGBN, InvertedResidual)
from fixtures.zoo.export import export_onnx, fold_conv_bn, randomize_bn, torch_logits
from onnx_onp.export import export_pruned
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model
from onnx_onp.neuron_map import build_neuron_map

from .conftest import cifar_images

TOL = 1e-4


def _build(name):
    torch.manual_seed(0)
    model = {
        "resnet18": lambda: ResNet18(width=8),
        "bottleneck": lambda: BottleneckResNet(width=4, blocks=(2, 1, 1)),
        "mobilenetv2": lambda: MobileNetV2(width_mult=0.25, last_channel=64),
        "densenet": lambda: DenseNetTiny(growth=4, layers=(2, 2)),
        "vggbn": lambda: VGGBN(cfg=(8, "M", 16, "M", 16, "M"), hidden=32),
        "keras": lambda: KerasStyleNet(width=8, hidden=32),
    }[name]()
    return randomize_bn(model, seed=1).eval()


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def expected_group_sizes(name: str, model: nn.Module) -> Counter:
    """Group sizes implied by the architecture: residual streams tie their convs, depthwise adds none."""
    sizes: Counter = Counter()
    streams: list[list[nn.Conv2d]] = []
    tied: set[int] = set()
    if name in ("resnet18", "bottleneck"):
        blocks = [m for m in model.modules() if hasattr(m, "shortcut")]
        stream = [_convs(model)[0]]  # the stem feeds the first identity shortcut
        for block in blocks:
            last = [c for c in _convs(block) if not any(c is s for s in _convs(block.shortcut))][-1]
            if len(block.shortcut) == 0:
                stream.append(last)
            else:
                streams.append(stream)
                stream = [_convs(block.shortcut)[0], last]
        streams.append(stream)
    elif name == "mobilenetv2":
        stream = [_convs(model)[0]]  # the stem, tied to the first block's output if that block is residual
        for block in (m for m in model.modules() if isinstance(m, InvertedResidual)):
            if not block.use_res:
                streams.append(stream)
                stream = []
            stream.append(_convs(block)[-1])
        streams.append(stream)
    for stream in streams:
        for conv in stream:
            tied.add(id(conv))
        if stream:
            sizes[len(stream)] += stream[0].out_channels
    for conv in _convs(model):
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels
        if id(conv) not in tied and not depthwise:
            sizes[1] += conv.out_channels
    linear_units = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    if name == "keras":
        linear_units = model.w1.shape[1] + model.w2.shape[1]
    sizes[1] += linear_units
    return sizes


def _export(name, tmp_path, *, dynamo=False, fold_bn=False):
    model = _build(name)
    shape = (1, 32, 32, 3) if name == "keras" else (1, 3, 32, 32)
    path = export_onnx(model, tmp_path / f"{name}.onnx", shape, dynamo=dynamo, fold_bn=fold_bn)
    return model, path


def _inputs(name, n=64):
    x = cifar_images(n).astype(np.float32) / 255.0
    return x if name == "keras" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _random_mask(nmap, share, seed):
    rng = np.random.default_rng(seed)
    prunable = np.flatnonzero(nmap.prunable)
    mask = nmap.empty_mask()
    mask[rng.choice(prunable, max(1, int(share * len(prunable))), replace=False)] = True
    return mask


CASES = [(name, False, False) for name in ("resnet18", "bottleneck", "mobilenetv2", "densenet", "vggbn", "keras")]
CASES += [(name, False, True) for name in ("resnet18", "mobilenetv2", "vggbn", "densenet")]
CASES += [(name, True, False) for name in ("resnet18", "mobilenetv2", "vggbn", "keras", "densenet")]


@pytest.mark.parametrize("name,dynamo,fold_bn", CASES,
                         ids=[f"{n}-{'dynamo' if d else 'torchscript'}{'-folded' if f else ''}" for n, d, f in CASES])
def test_groups_and_exports(name, dynamo, fold_bn, tmp_path):
    model, path = _export(name, tmp_path, dynamo=dynamo, fold_bn=fold_bn)
    lm = load_model(path)
    nmap = build_neuron_map(lm)

    sizes = Counter(len(g.neurons) for g in nmap.groups)
    assert sizes == expected_group_sizes(name, model)
    classifier_units = 10
    assert sum(len(g.neurons) for g in nmap.groups if not g.prunable) == classifier_units
    assert all("final classifier" in g.reasons[0] for g in nmap.groups if not g.prunable)

    x = _inputs(name)
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    np.testing.assert_allclose(evaluator.logits(x), torch_logits(model, x), atol=TOL)  # empty mask = original
    mask = _random_mask(nmap, 0.3, seed=3)
    zeroed = export_pruned(lm, nmap, mask, tmp_path / "zeroed.onnx", check_inputs=x, evaluator=evaluator)
    shrunk = export_pruned(lm, nmap, mask, tmp_path / "shrunk.onnx", shrink=True, check_inputs=x,
                           evaluator=evaluator)
    assert zeroed.max_abs_diff <= TOL and shrunk.max_abs_diff <= TOL
    assert shrunk.bytes_after < 0.9 * zeroed.bytes_after
    # The masked model must really differ from the original: the check above is not vacuous.
    assert np.abs(evaluator.logits(x, mask) - evaluator.logits(x)).max() > 1e-3


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "vggbn"])
def test_masked_evaluation_matches_torch_with_neurons_zeroed(name, tmp_path):
    """Second implementation: torch (BN folded into convs) with the pruned neurons' weights zeroed."""
    model, _ = _export(name, tmp_path)
    folded, _ = fold_conv_bn(model)
    path = export_onnx(folded, tmp_path / "folded.onnx", (1, 3, 32, 32))
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    mask = _random_mask(nmap, 0.25, seed=5)
    params = dict(folded.named_parameters())
    with torch.no_grad():
        for layer_name, units in nmap.pruned_neurons(mask).items():
            weight_name = nmap.layer(layer_name).weight
            assert weight_name in params, weight_name
            params[weight_name][units] = 0
            bias = params.get(weight_name.replace(".weight", ".bias"))
            if bias is not None:
                bias[units] = 0
        # A depthwise conv has no neurons of its own: its channel dies with the channel it reads.
        names = {id(p): n for n, p in folded.named_parameters()}
        pruned = {n: set(u) for n, u in nmap.pruned_neurons(mask).items()}
        for depthwise, source in _depthwise_sources(folded):
            units = sorted(pruned.get(nmap_layer_name(nmap, names[id(source.weight)]), ()))
            depthwise.weight[units] = 0
            depthwise.bias[units] = 0
    x = _inputs(name)
    got = MaskedEvaluator(lm, nmap, provider="cpu").logits(x, mask)
    np.testing.assert_allclose(got, torch_logits(folded, x), atol=TOL)


def _depthwise_sources(model):
    """(depthwise conv, the conv whose channels it reads) for MobileNetV2 blocks."""
    pairs, previous = [], _convs(model)[0]
    for block in (m for m in model.modules() if isinstance(m, InvertedResidual)):
        convs = _convs(block)
        pairs.append((convs[-2], convs[0] if len(convs) == 3 else previous))
        previous = convs[-1]
    return pairs


def nmap_layer_name(nmap, weight_name):
    return next(layer.name for layer in nmap.layers if layer.weight == weight_name)


def test_resnet18_groups_by_hand(tmp_path):
    """ResNet-18 at width w: 15w residual groups of 3 convs, 30w single convs, 10 classifier units."""
    w = 8
    _, path = _export("resnet18", tmp_path)
    nmap = build_neuron_map(load_model(path))
    sizes = Counter(len(g.neurons) for g in nmap.groups)
    assert sizes == Counter({3: 15 * w, 1: 30 * w + 10})
    assert len(nmap.layers) == 21
    stem = nmap.layers[0]
    group = nmap.group_of(stem.name, 0)
    assert [nmap.layer_of(n).name for n in group.neurons][0] == stem.name and len(group.neurons) == 3


def test_same_model_same_map(tmp_path):
    _, path = _export("mobilenetv2", tmp_path)
    a, b = build_neuron_map(load_model(path)), build_neuron_map(load_model(path))
    assert [g.neurons for g in a.groups] == [g.neurons for g in b.groups]
    assert [(s.tensor, s.groups.tolist()) for s in a.mask_sites] == [(s.tensor, s.groups.tolist()) for s in b.mask_sites]
