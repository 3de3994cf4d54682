"""Loading: opsets, onnx's own model zoo, Constant weights, external data, shared initializers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, version_converter

from fixtures.zoo.architectures import VGGBN, ResNet18
from fixtures.zoo.export import export_onnx, randomize_bn
from onnx_onp.errors import ExternalDataError, ModelFileError
from onnx_onp.export import export_pruned
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model, load_model_proto
from onnx_onp.neuron_map import build_neuron_map

from .conftest import cifar_images

ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _x(n=16):
    return np.ascontiguousarray(cifar_images(n).transpose(0, 3, 1, 2)).astype(np.float32) / 255


def _group_signature(nmap):
    return sorted(len(g.neurons) for g in nmap.groups), int(nmap.prunable.sum())


@pytest.fixture(scope="module")
def resnet_path(tmp_path_factory):
    model = randomize_bn(ResNet18(width=4), seed=0).eval()
    return export_onnx(model, tmp_path_factory.mktemp("resnet") / "resnet.onnx", (1, 3, 32, 32))


@pytest.mark.parametrize("opset", [11, 13, 17, 21, onnx.defs.onnx_opset_version()])
def test_opsets(opset, tmp_path, resnet_path):
    if opset <= 13:
        model = randomize_bn(ResNet18(width=4), seed=0).eval()
        path = export_onnx(model, tmp_path / "m.onnx", (1, 3, 32, 32), opset=opset)
        proto = onnx.load(path)
    else:
        proto = version_converter.convert_version(onnx.load(resnet_path), opset)
    assert proto.opset_import[0].version == opset
    lm = load_model_proto(proto)
    nmap = build_neuron_map(lm)
    reference = build_neuron_map(load_model(resnet_path))
    assert _group_signature(nmap) == _group_signature(reference)
    mask = nmap.empty_mask()
    mask[np.flatnonzero(nmap.prunable)[::3]] = True
    out = export_pruned(lm, nmap, mask, tmp_path / "shrunk.onnx", shrink=True, check_inputs=_x())
    assert out.max_abs_diff <= 1e-4


@pytest.mark.parametrize("path", sorted(ZOO.glob("*.onnx")), ids=lambda p: p.stem)
def test_onnx_zoo_models(path, tmp_path):
    """onnx's own zoo (ResNet-50 with Sum, DenseNet, ShuffleNet, Inception with LRN, ...): map + zeroed export."""
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    summary = nmap.summary()
    assert summary["neurons"] > 1000 and summary["groups"] > 0
    # Every unprunable neuron says why; the final classifier is never prunable.
    assert all(g.reasons for g in nmap.groups if not g.prunable)
    assert not nmap.prunable[nmap.neuron_group[nmap.layers[-1].first_neuron]]
    mask = nmap.empty_mask()
    mask[np.flatnonzero(nmap.prunable)[::7]] = True
    x = np.random.default_rng(0).standard_normal((1,) + lm.probe_input_shape[1:]).astype(np.float32)
    out = export_pruned(lm, nmap, mask, tmp_path / "zeroed.onnx", check_inputs=x)
    assert out.max_abs_diff <= 1e-4 and (tmp_path / "zeroed.onnx").exists()


def test_zoo_resnet50_sum_ties_residual_channels():
    nmap = build_neuron_map(load_model(ZOO / "light_resnet50.onnx"))
    sizes = [len(g.neurons) for g in nmap.groups]
    # ResNet-50's four stages have 3, 4, 6 and 3 blocks, each stream tied through Sum.
    assert sorted(set(sizes) - {1}) == [4, 5, 7]


def _constant_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every initializer turned into a Constant node (as some exporters write)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in proto.graph.initializer]
    del proto.graph.initializer[:]
    nodes = constants + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def test_constant_node_weights_give_the_same_map(tmp_path):
    torch_model = randomize_bn(VGGBN(cfg=(8, "M", 16, "M"), hidden=16), seed=0).eval()
    path = export_onnx(torch_model, tmp_path / "vgg.onnx", (1, 3, 32, 32))
    plain = build_neuron_map(load_model(path))
    lm = load_model_proto(_constant_weights(onnx.load(path)))
    nmap = build_neuron_map(lm)
    assert _group_signature(nmap) == _group_signature(plain)
    assert [layer.size for layer in nmap.layers] == [layer.size for layer in plain.layers]


def test_external_data_inside_folder_loads(tmp_path, resnet_path):
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(onnx.load(resnet_path), folder / "m.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    lm = load_model(folder / "m.onnx")
    assert _group_signature(build_neuron_map(lm)) == _group_signature(build_neuron_map(load_model(resnet_path)))


def _with_location(tmp_path, resnet_path, location):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    onnx.save_model(onnx.load(resnet_path), folder / "m.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    proto = onnx.load(folder / "m.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(proto, folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "sub/../../weights.bin"])
def test_external_data_outside_folder_is_refused(location, tmp_path, resnet_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 1_000_000)
    path = _with_location(tmp_path, resnet_path, location)
    with pytest.raises(ExternalDataError, match="outside the model's folder"):
        load_model(path)


def test_missing_external_data_is_refused(tmp_path, resnet_path):
    path = _with_location(tmp_path, resnet_path, "nowhere.bin")
    with pytest.raises(ExternalDataError, match="not found"):
        load_model(path)


def test_truncated_file_is_refused(tmp_path, resnet_path):
    raw = Path(resnet_path).read_bytes()
    for cut in (10, len(raw) // 3, len(raw) - 7):
        bad = tmp_path / f"cut{cut}.onnx"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ModelFileError):
            load_model(bad)


def _shared_weight_model() -> onnx.ModelProto:
    """x -> Conv(W) -> Relu -> Conv(W) -> Relu -> GAP -> Flatten -> Gemm: both convs read one initializer W."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), "W")
    fc = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "FC")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "W"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("GlobalAveragePool", ["br"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "FC"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                             ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], [w, fc])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shared_initializer_is_never_edited_for_both_layers(tmp_path):
    proto = _shared_weight_model()
    path = tmp_path / "shared.onnx"
    onnx.save(proto, path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    assert nmap.layers[0].weight != nmap.layers[1].weight  # un-shared copies
    mask = nmap.mask_from_neurons({"conv_a": [0]})
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    export_pruned(lm, nmap, mask, tmp_path / "out.onnx", check_inputs=x)
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "out.onnx").graph.initializer}
    original = numpy_helper.to_array(proto.graph.initializer[0])
    assert np.all(written[nmap.layers[0].weight][0] == 0)
    np.testing.assert_array_equal(written[nmap.layers[1].weight], original)  # conv_b keeps every weight
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # the input file is untouched


def test_masks_per_sample_score_many_masks_in_one_run(resnet_path):
    lm = load_model(resnet_path)
    nmap = build_neuron_map(lm)
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    x, y = _x(32), np.zeros(32, dtype=np.int64)
    rng = np.random.default_rng(0)
    masks = np.zeros((5, nmap.num_groups), dtype=bool)
    for mask in masks[1:]:
        mask[rng.choice(np.flatnonzero(nmap.prunable), 10, replace=False)] = True
    together = evaluator.score_many(x, y, masks)
    one_by_one = [evaluator.score(x, y, m) for m in masks]
    for a, b in zip(together, one_by_one):
        np.testing.assert_array_equal(a.predictions, b.predictions)
        assert abs(a.loss - b.loss) < 1e-5
