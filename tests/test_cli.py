"""The command line: real-model numbers, every bad-input class with its exit code, no partial output."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from fixtures.zoo.architectures import LeNetFC
from fixtures.zoo.export import export_onnx
from onnx_onp.errors import (DataError, ExternalDataError, MaskError, ModelFileError, OutputError,
                             UnsupportedModelError)
from onnx_onp_cli.main import main

from .conftest import DATA, REAL_MODELS, cifar_images, cifar_labels, need


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    return export_onnx(LeNetFC().eval(), tmp_path_factory.mktemp("lenet") / "lenet.onnx", (1, 3, 32, 32))


@pytest.fixture(scope="module")
def clean_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "clean.npz"
    np.savez(path, x=cifar_images(200), y=cifar_labels(200))
    return path


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["sashank_badnet_cifar10_poisoned", "sashank_badnet_cifar10_clean",
                                  "verazuo_badnet_cifar10", "verazuo_badnet_mnist"])
def test_evaluate_reproduces_real_model_numbers(name):
    spec_path = need(REAL_MODELS / f"{name}.json")
    spec = json.loads(spec_path.read_text())
    data = need(DATA / ("mnist_test.npz" if "mnist" in name else "cifar10_test.npz"))
    result = run("evaluate", REAL_MODELS / f"{name}.onnx", "--data", data, "--spec", spec_path, "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert abs(got["clean_accuracy"] - spec["clean_accuracy"]) <= 0.005
    assert abs(got["attack_success_rate"] - spec["attack_success_rate"]) <= 0.005
    assert got["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")


def test_inspect_human_and_json(lenet):
    human = run("inspect", lenet)
    assert human.exit_code == 0 and "prunable" in human.output and "final classifier" in human.output
    data = json.loads(run("inspect", lenet, "--json").output)
    assert [layer["op"] for layer in data["layers"]] == ["Conv", "Conv", "Gemm", "Gemm", "Gemm"]
    assert data["prunable_neurons"] == 6 + 16 + 120 + 84


def test_prune_zeroed_and_shrunk(lenet, clean_npz, tmp_path):
    before = _sha(lenet)
    for extra in ([], ["--shrink"]):
        out = tmp_path / f"out{len(extra)}.onnx"
        result = run("prune", lenet, "--neurons", "#2:0,1,2;#3:5", "-o", out, "--data", clean_npz, "--json", *extra)
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["pruned_neurons"] == 4 and report["max_abs_diff"] <= 1e-4 and out.exists()
        assert report["check_samples"] == 200
    assert (tmp_path / "out1.onnx").stat().st_size < (tmp_path / "out0.onnx").stat().st_size
    assert _sha(lenet) == before


def test_prune_writes_the_bytes_onnx_save_model_would(lenet, tmp_path):
    """Export serializes once and writes those bytes itself: the file must be what onnx.save_model writes."""
    from onnx_onp.export import zeroed_model
    from onnx_onp.load import load_model
    from onnx_onp.neuron_map import build_neuron_map

    out = tmp_path / "p.onnx"
    assert run("prune", lenet, "--neurons", "#2:0,1,2;#3:5", "-o", out).exit_code == 0
    lm = load_model(str(lenet))
    nmap = build_neuron_map(lm)
    from onnx_onp_cli.main import parse_neurons

    mask = nmap.mask_from_neurons(parse_neurons("#2:0,1,2;#3:5"))
    onnx.save_model(zeroed_model(lm, nmap, mask), tmp_path / "reference.onnx")
    assert out.read_bytes() == (tmp_path / "reference.onnx").read_bytes()


def test_prune_mask_file_formats(lenet, tmp_path):
    layer = json.loads(run("inspect", lenet, "--json").output)["layers"][3]["name"]
    (tmp_path / "m.json").write_text(json.dumps({"pruned": {layer: [1, 2]}}))
    result = run("prune", lenet, "--mask-file", tmp_path / "m.json", "-o", tmp_path / "a.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pruned"] == {layer: [1, 2]}


# -- bad input: one line, documented exit code, no output file -----------------------------------------------


def _one_line_error(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output


def test_not_onnx(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 50)
    _one_line_error(run("inspect", bad), ModelFileError.exit_code)


def test_truncated_and_empty(lenet, tmp_path):
    raw = Path(lenet).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    _one_line_error(run("inspect", tmp_path / "cut.onnx"), ModelFileError.exit_code)
    _one_line_error(run("inspect", tmp_path / "empty.onnx"), ModelFileError.exit_code)
    _one_line_error(run("inspect", tmp_path / "missing.onnx"), ModelFileError.exit_code)


def test_external_data_outside_folder(lenet, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save_model(onnx.load(lenet), folder / "m.onnx", save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    proto = onnx.load(folder / "m.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    onnx.save_model(proto, folder / "m.onnx")
    _one_line_error(run("inspect", folder / "m.onnx"), ExternalDataError.exit_code)


def test_unsupported_operator(lenet, tmp_path):
    proto = onnx.load(lenet)
    proto.graph.node[1].op_type = "MysteryOp"
    proto.graph.node[1].domain = "com.example"
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(proto, tmp_path / "custom.onnx")
    _one_line_error(run("inspect", tmp_path / "custom.onnx"), UnsupportedModelError.exit_code)


def test_non_image_input(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 10])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "flat.onnx")
    _one_line_error(run("inspect", tmp_path / "flat.onnx"), UnsupportedModelError.exit_code)


def test_data_that_does_not_fit(lenet, tmp_path):
    mnist = tmp_path / "mnist.npz"
    np.savez(mnist, x=np.zeros((5, 28, 28), np.uint8), y=np.zeros(5, np.uint8))
    _one_line_error(run("evaluate", lenet, "--data", mnist), DataError.exit_code)


def test_labels_out_of_range(lenet, tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, x=cifar_images(5), y=np.array([0, 1, 2, 3, 12], np.uint8))
    result = run("evaluate", lenet, "--data", path)
    _one_line_error(result, DataError.exit_code)
    assert "12" in result.output


def test_empty_dataset(lenet, tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 32, 32, 3), np.uint8), y=np.zeros(0, np.uint8))
    _one_line_error(run("evaluate", lenet, "--data", path), DataError.exit_code)


def test_data_file_missing_or_not_npz(lenet, tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    _one_line_error(run("evaluate", lenet, "--data", tmp_path / "junk.npz"), DataError.exit_code)
    _one_line_error(run("evaluate", lenet, "--data", tmp_path / "nothere.npz"), DataError.exit_code)


def test_bad_neurons(lenet, tmp_path):
    out = tmp_path / "x.onnx"
    _one_line_error(run("prune", lenet, "--neurons", "#4:0", "-o", out), MaskError.exit_code)  # classifier
    _one_line_error(run("prune", lenet, "--neurons", "#2:999", "-o", out), MaskError.exit_code)
    _one_line_error(run("prune", lenet, "--neurons", "nolayer:1", "-o", out), MaskError.exit_code)
    assert not out.exists()


def test_output_folder_missing_leaves_nothing(lenet, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "x.onnx"
    _one_line_error(run("prune", lenet, "--neurons", "#2:0", "-o", out), OutputError.exit_code)
    assert not out.parent.exists()


def test_refuses_to_overwrite_input(lenet, tmp_path):
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(Path(lenet).read_bytes())
    before = _sha(copy)
    _one_line_error(run("prune", copy, "--neurons", "#2:0", "-o", copy), OutputError.exit_code)
    assert _sha(copy) == before


def test_failed_check_writes_nothing(lenet, tmp_path):
    from onnx_onp.export import export_pruned
    from onnx_onp.load import load_model
    from onnx_onp.neuron_map import build_neuron_map

    lm = load_model(lenet)
    nmap = build_neuron_map(lm)
    out = tmp_path / "never.onnx"
    with pytest.raises(OutputError, match="not written"):
        export_pruned(lm, nmap, nmap.mask_from_neurons({"#2": [0]}), out, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_console_script_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    script = Path(sys.executable).parent / "onnx-onp"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "onnx_onp_cli.main"]
    proc = subprocess.run(command + ["inspect", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == ModelFileError.exit_code
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
