"""Shared test helpers: paths to the shared data and real models, read in place (never copied)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

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


@pytest.fixture(scope="session")
def tiny_sanitized(tmp_path_factory):
    """One `onnx-onp sanitize` of the committed tiny BadNets fixture, shared by the ONP and report tests.

    Clean training data only decides; --spec and --test-data only add the audit numbers. --fail-on never: the
    pruned model is written whatever the outcome, so the tests can measure what the mask does.
    """
    from click.testing import CliRunner

    from onnx_onp_cli.main import main

    folder = tmp_path_factory.mktemp("tiny_sanitized")
    paths = {"model": folder / "clean.onnx", "json": folder / "report.json", "html": folder / "report.html"}
    result = CliRunner().invoke(main, [
        "sanitize", str(need(TINY.with_suffix(".onnx"))), "--data", str(need(DATA / "cifar10_train.npz")),
        "--spec", str(TINY.with_suffix(".json")), "--test-data", str(need(DATA / "cifar10_test.npz")),
        "-o", str(paths["model"]), "--report", str(paths["json"]), "--html", str(paths["html"]), "--fail-on", "never"])
    return result, paths
