"""Transformers: a tiny ViT's attention heads are prunable groups, checked like every architecture.

Both torch exporters, both ways of writing the Q, K, V projections (separate Linears; timm's fused one), and
F.scaled_dot_product_attention (decomposed by the exporters; one ONNX Attention op at opset 23):

1. groups against the architecture: one group per head holding that head's Q, K and V units, every MLP hidden
   unit a neuron of its own, the residual stream (LayerNorm mixes its channels) and the classifier unprunable;
2. masked evaluation against the zeroed and the shrunk export (onnxruntime), <= 1e-4;
3. masked evaluation against torch with the same heads and units zeroed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures.zoo.architectures import ViT
from fixtures.zoo.export import export_onnx, torch_logits
from onnx_onp.export import export_pruned
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp_cli.main import main

from .conftest import cifar_images

TOL = 1e-4
DIM, HEADS, DEPTH, MLP = 32, 2, 2, 2
HEAD_DIM = DIM // HEADS

# (exporter, Q/K/V projections, attention): the explicit Q·Kᵀ/softmax/·V; F.scaled_dot_product_attention, which
# the exporters decompose into the same MatMuls, and which the dynamo exporter at opset 23 turns into one
# ONNX Attention op.
VARIANTS = {
    "torchscript-separate-qkv": dict(dynamo=False, fused=False),
    "torchscript-fused-qkv": dict(dynamo=False, fused=True),
    "dynamo-separate-qkv": dict(dynamo=True, fused=False),
    "dynamo-fused-qkv": dict(dynamo=True, fused=True),
    "torchscript-sdpa": dict(dynamo=False, fused=False, sdpa=True),
    "dynamo-sdpa-opset23-Attention-op": dict(dynamo=True, fused=False, sdpa=True, opset=23),
}
CASES = list(VARIANTS)


def _vit(fused: bool, sdpa: bool = False) -> ViT:
    torch.manual_seed(0)
    return ViT(patch=4, dim=DIM, heads=HEADS, depth=DEPTH, mlp_ratio=MLP, fused_qkv=fused, sdpa=sdpa).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    out = {}
    for name, v in VARIANTS.items():
        model = _vit(v["fused"], v.get("sdpa", False))
        path = export_onnx(model, folder / f"{name}.onnx", (1, 3, 32, 32), dynamo=v["dynamo"], opset=v.get("opset"))
        out[name] = (model, path)
    return out


def test_opset23_export_has_one_attention_op(exported):
    import onnx

    ops = [n.op_type for n in onnx.load(str(exported["dynamo-sdpa-opset23-Attention-op"][1])).graph.node]
    assert ops.count("Attention") == DEPTH and ops.count("Softmax") == 0


def _inputs(n=32):
    return np.ascontiguousarray(cifar_images(n).astype(np.float32).transpose(0, 3, 1, 2) / 255.0)


def _head_units(fused: bool, head: int) -> list[list[int]]:
    """Units of one head in the layers that make Q, K and V (three layers, or one fused layer)."""
    span = list(range(head * HEAD_DIM, (head + 1) * HEAD_DIM))
    if fused:
        return [[part * DIM + u for part in range(3) for u in span]]
    return [span, span, span]


def _heads_and_units(nmap):
    heads = [g for g in nmap.groups if len(g.neurons) == 3 * HEAD_DIM]
    singles = [g for g in nmap.groups if g.prunable and len(g.neurons) == 1]
    return heads, singles


@pytest.mark.parametrize("variant", CASES)
def test_heads_are_groups(exported, variant):
    fused = VARIANTS[variant]["fused"]
    _, path = exported[variant]
    nmap = build_neuron_map(load_model(path))
    heads, singles = _heads_and_units(nmap)
    assert len(heads) == DEPTH * HEADS and all(g.prunable for g in heads)
    # Every head group is one head's Q, K and V units, in the layers of one block.
    per_block = 1 if fused else 3  # layers making Q, K, V
    block_stride = per_block + 3  # + proj, fc1, fc2
    for index, group in enumerate(heads):
        block, head = divmod(index, HEADS)
        first = 1 + block * block_stride  # layer 0 is the patch embedding
        by_layer: dict[int, list[int]] = {}
        for neuron in group.neurons:
            layer = nmap.layer_of(neuron)
            by_layer.setdefault(layer.index, []).append(neuron - layer.first_neuron)
        assert sorted(by_layer) == list(range(first, first + per_block))
        assert [sorted(by_layer[k]) for k in sorted(by_layer)] == _head_units(fused, head)
    # MLP hidden units are neurons of their own; nothing else is prunable.
    assert len(singles) == DEPTH * DIM * MLP
    assert {nmap.layer_of(g.neurons[0]).index for g in singles} == \
        {1 + b * block_stride + per_block + 1 for b in range(DEPTH)}
    assert int(nmap.prunable.sum()) == len(heads) + len(singles)
    unprunable = [g for g in nmap.groups if not g.prunable]
    assert sum(len(g.neurons) for g in unprunable) == DIM * (1 + 2 * DEPTH) + 10  # residual stream + classifier


def test_inspect_lists_heads(exported):
    _, path = exported["torchscript-separate-qkv"]
    result = CliRunner().invoke(main, ["inspect", str(path), "--groups"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip().startswith("group ")]
    assert len(lines) == DEPTH * HEADS
    assert lines[0].split(": ", 1)[1] == ", ".join(
        f"/blocks/blocks.0/attn/{p}/MatMul:0-{HEAD_DIM - 1}" for p in "qkv")
    data = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json"]).output)
    assert data["multi_neuron_groups"] == DEPTH * HEADS and data["largest_group"] == 3 * HEAD_DIM


def _mask(nmap, heads_to_prune, units_share=0.3, seed=0):
    heads, singles = _heads_and_units(nmap)
    mask = nmap.empty_mask()
    mask[[heads[h].index for h in heads_to_prune]] = True
    rng = np.random.default_rng(seed)
    mask[rng.choice([g.index for g in singles], int(units_share * len(singles)), replace=False)] = True
    return mask


@pytest.mark.parametrize("variant", CASES)
def test_masked_evaluation_matches_zeroed_and_shrunk(exported, variant, tmp_path):
    model, path = exported[variant]
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    x = _inputs()
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    np.testing.assert_allclose(evaluator.logits(x), torch_logits(model, x), atol=TOL)  # empty mask = original
    mask = _mask(nmap, heads_to_prune=[0, 3])  # head 0 of block 0, head 1 of block 1
    zeroed = export_pruned(lm, nmap, mask, tmp_path / "zeroed.onnx", check_inputs=x, evaluator=evaluator)
    shrunk = export_pruned(lm, nmap, mask, tmp_path / "shrunk.onnx", shrink=True, check_inputs=x,
                           evaluator=evaluator)
    assert zeroed.max_abs_diff <= TOL and shrunk.max_abs_diff <= TOL
    assert shrunk.bytes_after < 0.85 * zeroed.bytes_after
    assert np.abs(evaluator.logits(x, mask) - evaluator.logits(x)).max() > 1e-2  # not vacuous


@pytest.mark.parametrize("variant", ["torchscript-separate-qkv", "torchscript-fused-qkv", "torchscript-sdpa"])
def test_masked_evaluation_matches_torch_with_heads_zeroed(exported, variant):
    """Second implementation: torch with the pruned heads' Q, K, V rows and the pruned MLP units zeroed."""
    fused, sdpa = VARIANTS[variant]["fused"], VARIANTS[variant].get("sdpa", False)
    model, path = exported[variant]
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    mask = _mask(nmap, heads_to_prune=[1, 2], seed=4)
    reference = _vit(fused, sdpa)
    reference.load_state_dict(model.state_dict())
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for layer_name, units in nmap.pruned_neurons(mask).items():
            # TorchScript names a Linear's MatMul '/blocks/blocks.0/attn/q/MatMul': the module path in between.
            linear = modules[".".join(layer_name.strip("/").split("/")[1:-1])]
            linear.weight[units] = 0
            linear.bias[units] = 0
    x = _inputs()
    got = MaskedEvaluator(lm, nmap, provider="cpu").logits(x, mask)
    expected = torch_logits(reference, x)
    np.testing.assert_allclose(got, expected, atol=TOL)
    assert np.abs(expected - torch_logits(model, x)).max() > 1e-2
    # Zeroing only the pruned heads' V rows gives the same: a removed head contributes nothing.
    only_v = _vit(fused, sdpa)
    only_v.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer_name, units in nmap.pruned_neurons(mask).items():
            path = ".".join(layer_name.strip("/").split("/")[1:-1])
            linear = dict(only_v.named_modules())[path]
            if path.endswith(".qkv"):
                units = [u for u in units if u >= 2 * DIM]  # V is the last third
            elif path.endswith((".q", ".k")):
                continue
            linear.weight[units] = 0
            linear.bias[units] = 0
    np.testing.assert_allclose(got, torch_logits(only_v, x), atol=TOL)


@pytest.mark.parametrize("variant", CASES)
def test_torch_mirror_matches_masked_evaluation(exported, variant):
    """The differentiable mirror (trigger synthesis, signals) runs the ViT's ops and masks like onnxruntime."""
    from onnx_onp.mirror import TorchMirror

    _, path = exported[variant]
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    mirror = TorchMirror(lm, nmap)
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    x = _inputs(8)
    masks = np.stack([_mask(nmap, heads_to_prune=heads, seed=s) for s, heads in enumerate([[], [0], [1, 2], [3]])])
    keep = torch.from_numpy(np.repeat(~masks, 2, axis=0).astype(np.float32))
    with torch.no_grad():
        got = mirror(torch.from_numpy(np.concatenate([x[:2]] * 4)), keep).numpy()
    expected = np.concatenate([evaluator.logits(x[:2], m) for m in masks])
    np.testing.assert_allclose(got, expected, atol=TOL)
