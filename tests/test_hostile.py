"""Hostile and broken model files (issue 24): every class found by fuzzing gets its documented exit code and
exactly one `error:` line, reads nothing it should not, allocates nothing big and writes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fixtures import hostile
from onnx_onp.errors import (EXIT_BROKEN_PIPE, DataError, ExternalDataError, MaskError, ModelFileError,
                             UnsupportedModelError)
from onnx_onp_cli.main import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(hostile.tiny_cnn(), path)
    return path


def save(model, path):
    onnx.save(model, path)
    return path


# -- external data -----------------------------------------------------------------------------------------


def _external(tmp_path, **edits):
    """tiny_cnn with its weights in w.bin; ``edits`` overwrite external-data keys of every tensor."""
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save_model(hostile.tiny_cnn(), folder / "m.onnx", save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    proto = onnx.load(folder / "m.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key in edits:
                entry.value = edits[entry.key]
    onnx.save_model(proto, folder / "m.onnx")
    return folder / "m.onnx"


def test_external_data_that_is_fine_still_loads(tmp_path):
    assert run("inspect", _external(tmp_path)).exit_code == 0


@pytest.mark.parametrize("key,value", [("offset", "abc"), ("offset", "576.5"), ("length", "-4"),
                                       ("length", "1e3"), ("location", "w\0.bin")])
def test_malformed_external_data_entries(tmp_path, key, value):
    line = one_line_error(run("inspect", _external(tmp_path, **{key: value})), ExternalDataError.exit_code)
    assert "tensor '" in line


def test_external_data_symlink_loop(tmp_path):
    model = _external(tmp_path, location="loop.bin")
    os.symlink("loop.bin", model.parent / "loop.bin")
    one_line_error(run("inspect", model), ExternalDataError.exit_code)


def test_external_data_that_is_a_device_is_not_read(tmp_path):
    model = _external(tmp_path, location="zero.bin")
    os.symlink("/dev/zero", model.parent / "zero.bin")
    # /dev/zero is outside the folder once resolved: refused either way, without reading.
    one_line_error(run("inspect", model), ExternalDataError.exit_code)


def test_sparse_initializer_external_data_outside_folder(tmp_path):
    model = hostile.tiny_cnn()
    values = numpy_helper.from_array(np.ones(2, np.float32), "sp")
    values.data_location = TensorProto.EXTERNAL
    values.ClearField("raw_data")
    values.external_data.add(key="location", value="../../etc/passwd")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 3], np.int64), "sp_i"), [8])
    model.graph.sparse_initializer.append(sparse)
    one_line_error(run("inspect", save(model, tmp_path / "sparse.onnx")), ExternalDataError.exit_code)


# -- the model path itself ---------------------------------------------------------------------------------


def test_symlink_to_a_device_is_refused_without_reading(tmp_path):
    link = tmp_path / "zero.onnx"
    os.symlink("/dev/zero", link)  # reading it would never end
    line = one_line_error(run("inspect", link), ModelFileError.exit_code)
    assert "not a regular file" in line


def test_fifo_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)  # opening it for reading would block forever
    one_line_error(run("inspect", fifo), ModelFileError.exit_code)


def test_directory_and_usage_errors_are_one_line(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    one_line_error(run("inspect", tmp_path / "dir.onnx"), 2)
    one_line_error(run("inspect"), 2)
    one_line_error(run("inspect", "--no-such-option", "x"), 2)
    one_line_error(run("no-such-command"), 2)
    one_line_error(run("--max-memory", "lots", "inspect", "x.onnx"), 2)


def test_model_file_size_cap(tiny):
    line = one_line_error(run("--max-model-size", "1K", "inspect", tiny), ModelFileError.exit_code)
    assert "--max-model-size" in line
    assert run("--max-model-size", "1M", "inspect", tiny).exit_code == 0


def test_node_count_cap(tmp_path):
    chain = save(hostile.conv_chain(40), tmp_path / "chain.onnx")
    line = one_line_error(run("--max-nodes", "30", "inspect", chain), UnsupportedModelError.exit_code)
    assert "42 nodes" in line and "--max-nodes" in line
    assert run("--max-nodes", "100", "inspect", chain).exit_code == 0


# -- memory bombs ------------------------------------------------------------------------------------------


def test_constant_of_shape_bomb_is_refused_from_the_declared_shapes(tmp_path):
    model = save(hostile.with_huge_constant_of_shape(hostile.tiny_cnn()), tmp_path / "cos.onnx")
    line = one_line_error(run("inspect", model), UnsupportedModelError.exit_code)
    assert "TiB" in line and "--max-memory" in line


def test_range_bomb_is_refused_from_the_inferred_shapes(tmp_path):
    model = save(hostile.with_huge_range(hostile.tiny_cnn()), tmp_path / "range.onnx")
    line = one_line_error(run("inspect", model), UnsupportedModelError.exit_code)
    assert "'r'" in line and "GiB" in line


def test_max_memory_option_moves_the_cap(tmp_path):
    # 2^20 x 3 x 8 x 8 floats: 768 MiB for the ConstantOfShape alone, under the default cap of most machines
    model = save(hostile.with_huge_constant_of_shape(hostile.tiny_cnn(), dims=(1 << 20, 3, 8, 8)),
                 tmp_path / "cos.onnx")
    line = one_line_error(run("--max-memory", "100M", "inspect", model), UnsupportedModelError.exit_code)
    assert "100.0 MiB" in line


def test_memory_error_is_one_line(tiny, monkeypatch):
    import onnx_onp.load.loader as loader

    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(loader, "normalise", exhausted)
    line = one_line_error(run("inspect", tiny), UnsupportedModelError.exit_code)
    assert "out of memory" in line


# -- subgraphs ---------------------------------------------------------------------------------------------


def _reasons(model_path):
    from onnx_onp.load import load_model
    from onnx_onp.neuron_map import build_neuron_map

    nmap = build_neuron_map(load_model(model_path))
    return {nmap.label(n): set(g.reasons) for g in nmap.groups for n in g.neurons}


def test_weight_used_inside_an_if_branch_makes_its_neurons_unprunable(tmp_path):
    model = save(hostile.with_conv_in_if(hostile.tiny_cnn()), tmp_path / "convif.onnx")
    reasons = _reasons(model)
    assert any("subgraph" in r for r in reasons["conv2:0"])  # its weight w2 is read by the hidden Conv
    assert any("subgraph" in r for r in reasons["conv1:0"])  # its output r1 is read by the hidden Conv
    out = tmp_path / "out.onnx"
    for neurons in ("#0:0", "#1:0"):
        one_line_error(run("prune", model, "--neurons", neurons, "-o", out, "--shrink"), MaskError.exit_code)
    assert not out.exists()


def test_relu_moved_into_a_subgraph(tmp_path):
    model = save(hostile.with_relu_in_if(hostile.tiny_cnn()), tmp_path / "reluif.onnx")
    assert any("subgraph" in r for r in _reasons(model)["conv1:0"])
    out = tmp_path / "out.onnx"
    one_line_error(run("prune", model, "--neurons", "#0:0", "-o", out, "--shrink"), MaskError.exit_code)
    # conv2 is untouched by the branch: pruning it still works and passes the export check.
    result = run("prune", model, "--neurons", "#1:0", "-o", out, "--shrink")
    assert result.exit_code == 0, result.output
    assert out.exists()


# -- outputs and weights -----------------------------------------------------------------------------------


def test_string_output_is_unsupported(tmp_path):
    model = save(hostile.with_string_output(hostile.tiny_cnn()), tmp_path / "string.onnx")
    line = one_line_error(run("prune", model, "--neurons", "#0:0", "-o", tmp_path / "out.onnx"),
                          UnsupportedModelError.exit_code)
    assert "string" in line
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_up_front(tmp_path, value):
    model = save(hostile.with_weight_values(hostile.tiny_cnn(), "w2", value), tmp_path / "bad.onnx")
    line = one_line_error(run("prune", model, "--neurons", "#0:0", "-o", tmp_path / "out.onnx"),
                          UnsupportedModelError.exit_code)
    assert "'w2'" in line and "NaN or infinite" in line
    assert not (tmp_path / "out.onnx").exists()


def test_nhwc_model_with_nchw_preprocessing_names_the_json_key(tmp_path):
    model = save(hostile.tiny_cnn(layout="NHWC"), tmp_path / "nhwc.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8), y=np.arange(12) % 3)
    (tmp_path / "pre.json").write_text('{"layout": "NCHW"}')
    line = one_line_error(run("evaluate", model, "--data", tmp_path / "d.npz", "--preprocess", tmp_path / "pre.json"),
                          DataError.exit_code)
    assert '"layout": "NHWC"' in line and "--layout" not in line


# -- stdout and stderr ------------------------------------------------------------------------------------


def _console(*args, **kwargs):
    import subprocess
    import sys

    script = Path(sys.executable).parent / "onnx-onp"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "onnx_onp_cli.main"]
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)


def test_onnxruntime_log_lines_never_reach_stderr(tmp_path):
    model = hostile.tiny_cnn()
    # Gathering channel 100 of a 4-channel tensor fails inside onnxruntime's run, which logs it itself.
    model.graph.initializer.append(numpy_helper.from_array(np.array([100], np.int64), "far"))
    model.graph.node.append(helper.make_node("Gather", ["c1", "far"], ["gathered"], name="gather", axis=1))
    proc = _console("inspect", save(model, tmp_path / "bad.onnx"))
    assert proc.returncode == UnsupportedModelError.exit_code, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert "onnxruntime:" not in proc.stderr.split("error: ", 1)[0]


def test_output_piped_into_a_reader_that_leaves(tmp_path):
    import subprocess
    import sys

    chain = save(hostile.conv_chain(1500), tmp_path / "chain.onnx")  # more than a pipe's 64 KiB of output
    script = Path(sys.executable).parent / "onnx-onp"
    proc = subprocess.Popen([str(script), "inspect", str(chain)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE
    assert stderr == "", stderr


# -- defense data the analysis cannot use ------------------------------------------------------------------


@pytest.mark.parametrize("labels,message", [([1] * 60, "images of 1 class (1)"),
                                            ([0] * 57 + [1, 2, 1], "images outside class 0")])
def test_defense_data_with_one_class_or_too_few_others(tiny, tmp_path, labels, message):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 255, (len(labels), 8, 8, 3), dtype=np.uint8), y=np.array(labels))
    out = tmp_path / "clean.onnx"
    line = one_line_error(run("sanitize", tiny, "--data", data, "-o", out, "--budget", "1", "--rounds", "1"),
                          DataError.exit_code)
    assert message in line
    assert not out.exists()


def test_fixed_batch_size_with_a_partial_last_batch(tmp_path):
    """A model declared for exactly 3 images still gets 40 (13 batches and a padded 14th), found by fuzzing."""
    model = hostile.tiny_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 3
    path = save(model, tmp_path / "fixed3.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8), y=np.arange(40) % 3)
    result = run("evaluate", path, "--data", tmp_path / "d.npz", "--json")
    assert result.exit_code == 0, result.output
    result = run("prune", path, "--neurons", "#1:0", "-o", tmp_path / "p.onnx", "--data", tmp_path / "d.npz",
                 "--limit", "40")
    assert result.exit_code == 0, result.output


# -- classes the 1,000-case fuzz run found after the first round of fixes ----------------------------------------

def test_undefined_input_element_type_is_unsupported(tmp_path):
    model = hostile.tiny_cnn()
    model.graph.input[0].type.tensor_type.elem_type = 99
    line = one_line_error(run("inspect", save(model, tmp_path / "dtype.onnx")), UnsupportedModelError.exit_code)
    assert "element type 99" in line


def test_an_output_batch_that_is_not_the_input_batch_is_unsupported(tmp_path):
    """A ConstantOfShape of batch 4096 added to the input broadcasts at batch size 1: 4096 rows of scores for one
    image. Refused at load (5), where it used to be scored image by image for minutes."""
    model = save(hostile.with_huge_constant_of_shape(hostile.tiny_cnn(), dims=(4096, 3, 8, 8)), tmp_path / "b.onnx")
    line = one_line_error(run("inspect", model), UnsupportedModelError.exit_code)
    assert "4096 rows for a batch of 1 image" in line


def test_a_graph_onnxruntime_refuses_at_run_time_is_one_line_exit_5(tiny, tmp_path, monkeypatch):
    """onnxruntime failing while it runs a model that loaded is an unsupported model (5), not an internal error."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from onnx_onp.instrument.masked import MaskedEvaluator

    def fail(*args, **kwargs):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Add node. "
                   "Name:'bomb_add' Status Message: /src/broadcast.h:50 Attempting to broadcast an axis")

    monkeypatch.setattr(MaskedEvaluator, "run", fail)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.arange(4) % 2)
    line = one_line_error(run("evaluate", tiny, "--data", data), UnsupportedModelError.exit_code)
    assert line == "error: onnxruntime cannot run this model: /src/broadcast.h:50 Attempting to broadcast an axis"


def test_large_range_is_not_folded_into_a_weight(tmp_path):
    """Folding would allocate the Range (and copy it into the model) before any cap applies: it stays a node."""
    from onnx_onp.load import load_model

    lm = load_model(save(hostile.with_huge_range(hostile.tiny_cnn(), limit=1e7), tmp_path / "r.onnx"))
    assert any(n.op_type == "Range" for n in lm.model.graph.node)
    assert all(t.name != "r" for t in lm.model.graph.initializer)


def test_huge_images_run_in_batches_that_fit_the_memory_cap(tmp_path, monkeypatch):
    from onnx_onp import limits
    from onnx_onp.load import load_model

    lm = load_model(save(hostile.tiny_cnn(), tmp_path / "t.onnx"))
    assert lm.bytes_per_image > 0 and lm.batch_within_memory(256) == 256
    limits.configure(max_memory=lm.bytes_per_image * 20)
    try:
        assert lm.batch_within_memory(256) == 10  # half the cap's worth of images
        limits.configure(max_memory=1)
        assert lm.batch_within_memory(256) == 1
    finally:
        limits.configure()  # the defaults again
