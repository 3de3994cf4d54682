"""Shared test helpers: paths to the shared data and real models, read in place (never copied)."""

from __future__ import annotations

import fcntl
import json
import os
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
REAL_MODELS = SHARED / "real_models"
FIXTURES = REPO / "fixtures"


def need(path: Path) -> Path:
    """The shared data or model at path; skips the test where it is missing, fails it under ONP_REQUIRE_DATA=1
    (CI sets it: a suite that skipped every data test would otherwise pass)."""
    if not path.exists():
        if os.environ.get("ONP_REQUIRE_DATA") == "1":
            pytest.fail(f"{path} is missing and ONP_REQUIRE_DATA=1 (the tests need ../shared next to the checkout)")
        pytest.skip(f"{path} is not available on this machine")
    return path


@lru_cache(maxsize=1)
def _cifar_test():
    with np.load(need(DATA / "cifar10_test.npz")) as data:
        return data["x"][:2000].copy(), data["y"][:2000].astype(np.int64)


def cifar_images(n: int) -> np.ndarray:
    """The first n CIFAR-10 test images, uint8 N×32×32×3."""
    return _cifar_test()[0][:n]


def cifar_labels(n: int) -> np.ndarray:
    return _cifar_test()[1][:n]


TINY = FIXTURES / "models" / "tiny_badnet_cifar10"
DEFENSE_SAMPLE = FIXTURES / "data" / "cifar10_defense_sample.npz"  # the README's --data


@pytest.fixture(scope="session")
def tiny_sanitized(tmp_path_factory):
    """One `onnx-onp sanitize` of the committed tiny BadNets fixture, shared by the ONP, report and README tests.

    The README's first command (the shipped 500-image sample, which holds exactly the default draw of
    ../shared/data/cifar10_train.npz: test_examples checks that), plus what the tests read: --report, and
    --test-data, which only adds the audit numbers. --fail-on never: the pruned model is written whatever the
    outcome, so the tests can measure what the mask does. The run takes about a minute, so it happens once per
    test session: under pytest-xdist the first worker that needs it runs it and the others read its files.
    Returns (the run's exit_code and output, the paths and the arguments).
    """
    from click.testing import CliRunner

    from onnx_onp_cli.main import main

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the workers' base folders sit side by side in one session folder
    folder = shared / "tiny_sanitized"
    paths = {"model": folder / "clean.onnx", "json": folder / "report.json", "html": folder / "report.html"}
    args = [  # the README's first command, then what the tests read
        "sanitize", str(TINY.with_suffix(".onnx")), "--data", str(DEFENSE_SAMPLE),
        "--spec", str(TINY.with_suffix(".json")), "-o", str(paths["model"]), "--html", str(paths["html"]),
        "--test-data", str(need(DATA / "cifar10_test.npz")), "--report", str(paths["json"]), "--fail-on", "never"]
    outcome = folder / "outcome.json"
    with open(shared / "tiny_sanitized.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not outcome.exists():
            folder.mkdir(exist_ok=True)
            result = CliRunner().invoke(main, args)
            outcome.write_text(json.dumps({"exit_code": result.exit_code, "output": result.output}))
    return SimpleNamespace(**json.loads(outcome.read_text())), {**paths, "args": args}

