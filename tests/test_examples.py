"""Examples that run from a clone: the shipped CIFAR-10 samples in fixtures/data stand in for ../shared."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from onnx_onp.data import load_dataset
from onnx_onp.options import DEFAULT_DATA_LIMIT

from .conftest import DATA, FIXTURES, REPO, need

README = REPO / "README.md"
SAMPLE = FIXTURES / "data" / "cifar10_defense_sample.npz"
TEST_SAMPLE = FIXTURES / "data" / "cifar10_test_sample.npz"


def test_defense_sample_is_the_cli_default_draw():
    """The sample holds exactly the images (same order, same labels) a run on the full training set uses."""
    full = load_dataset(need(DATA / "cifar10_train.npz"), limit=DEFAULT_DATA_LIMIT, seed=0)
    sample = load_dataset(SAMPLE, limit=DEFAULT_DATA_LIMIT, seed=0)
    assert len(sample) == DEFAULT_DATA_LIMIT
    assert np.array_equal(sample.x, full.x) and np.array_equal(sample.y, full.y)
    test = load_dataset(TEST_SAMPLE)
    assert len(test) == 2000 and test.x.shape[1:] == (32, 32, 3) and set(np.unique(test.y)) == set(range(10))


def test_readme_first_command_runs_from_a_clone(tiny_sanitized):
    """The README's first command: `onnx-onp sanitize` of the tiny fixture on the shipped 500-image sample.

    ``tiny_sanitized`` is that command (the same model, data and spec; its own output paths) plus --test-data,
    --report and --fail-on never, none of which changes the mask (test_verify); it saves a second minute-long run.
    The sample holds exactly the default draw of ../shared/data/cifar10_train.npz (the test above), so the run
    on the full set prunes the same neurons. The real target 0 is found and the outcome is the gate's answer.
    """
    from onnx_onp.report import gate_exit_code

    _, paths = tiny_sanitized
    line = next(row for row in README.read_text().splitlines() if "&& onnx-onp sanitize " in row)
    readme_args = shlex.split(line.split("&& onnx-onp ", 1)[1])
    args = paths["args"]
    assert len(args) > len(readme_args)
    for documented, ran in zip(readme_args, args):
        if documented.endswith((".onnx", ".json", ".npz")) and "/" in documented:  # an input the clone ships
            assert (REPO / documented).resolve() == Path(ran).resolve(), (documented, ran)
        elif documented not in ("clean.onnx", "report.html"):  # outputs go to the test's own folder
            assert documented == ran
    content = json.loads(paths["json"].read_text())
    assert content["defense_data"]["samples"] == DEFAULT_DATA_LIMIT
    assert content["pruned"]["per_layer"] and content["verdict"]["suspected_target"] == 0
    # The gate's honest answer on 500 images may be exit 11 (the final check could not confirm the CA budget, or
    # found the backdoor); without --fail-on never that run writes no model (test_report, test_verify).
    assert gate_exit_code(content, "unsanitizable") == (0 if content["status"] == "sanitized" else 11)
    assert paths["html"].read_text().lower().startswith("<!doctype html>")
