"""Batch audits: a folder or a manifest of models, local processes or a Ray cluster, one summary."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from fixtures.zoo.architectures import LeNetFC
from fixtures.zoo.export import export_onnx
from onnx_onp.errors import EXIT_CODES
from onnx_onp_cli.main import main

from .conftest import FIXTURES, TINY

SAMPLE = FIXTURES / "data" / "cifar10_defense_sample.npz"
# A short search: the tests compare runs with each other, not the search's quality.
SHORT = ["--rounds", "1", "--budget", "4", "--limit", "200", "--fail-on", "never"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny models (the BadNets fixture, a random LeNet) and a manifest giving each its preprocessing."""
    import torch

    folder = tmp_path_factory.mktemp("zoo")
    shutil.copy(TINY.with_suffix(".onnx"), folder / "tiny_badnet.onnx")
    torch.manual_seed(0)
    export_onnx(LeNetFC().eval(), folder / "lenet_random.onnx", (1, 3, 32, 32))
    manifest = folder / "models.jsonl"
    manifest.write_text(json.dumps({"model": "tiny_badnet.onnx", "spec": str(TINY.with_suffix(".json"))}) + "\n"
                        + json.dumps({"model": "lenet_random.onnx", "name": "lenet"}) + "\n")
    return folder, manifest


def audit(*args):
    return CliRunner().invoke(main, ["audit", *map(str, args)])


def outputs(outdir):
    summary = json.loads((outdir / "summary.json").read_text())
    reports = {r["name"]: json.loads((outdir / r["report"]).read_text()) for r in summary["rows"] if r["report"]}
    return summary, reports


def test_folder_goes_on_past_a_broken_model(models, tmp_path):
    folder, _ = models
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("tiny_badnet.onnx", "lenet_random.onnx"):
        shutil.copy(folder / name, zoo / name)
    (zoo / "broken.onnx").write_bytes(b"not a model")
    out = tmp_path / "out"
    result = audit(zoo, "--data", SAMPLE, "--detect-only", "--limit", "200", "-o", out, "--jobs", "1", "--sarif",
                   tmp_path / "r.sarif")
    assert result.exit_code == 12 and 12 in EXIT_CODES, result.output
    summary, reports = outputs(out)
    rows = {r["name"]: r for r in summary["rows"]}
    assert list(rows) == ["broken", "lenet_random", "tiny_badnet"]  # the folder's order
    assert rows["broken"]["error"].endswith("not an ONNX model, or truncated (protobuf parse failed)")
    assert rows["broken"]["exit_code"] == 3 and rows["broken"]["verdict"] is None
    assert rows["tiny_badnet"]["verdict"] == "backdoor suspected" and rows["tiny_badnet"]["error"] is None
    assert summary["failed"] == 1 and summary["models"] == 3 and set(reports) == {"lenet_random", "tiny_badnet"}
    for name in reports:
        assert (out / f"{name}.html").read_text().lower().startswith("<!doctype html>")
        assert reports[name]["model"]["path"] == str(zoo / f"{name}.onnx")
    index = (out / "index.html").read_text()
    assert "tiny_badnet.html" in index and "not a model" not in index and "protobuf parse failed" in index
    sarif = json.loads((tmp_path / "r.sarif").read_text())["runs"][0]
    assert len(sarif["artifacts"]) == 2 and not sarif["invocations"][0]["executionSuccessful"]


def test_manifest_errors_are_one_line(models, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model": "a.onnx", "dat": "x.npz"}\n')
    result = audit(bad, "--data", SAMPLE, "-o", tmp_path / "out")
    assert result.exit_code == 6 and result.output.strip().count("\n") == 0 and "unknown key(s) dat" in result.output
    result = audit(models[1], "-o", tmp_path / "out")
    assert result.exit_code == 2 and "no data" in result.output
    result = audit(models[1], "--data", SAMPLE)
    assert result.exit_code == 2 and "-o OUTDIR" in result.output


def test_ray_gives_the_local_verdicts_and_masks(models, tmp_path):
    """Each model a task on a local Ray cluster this test starts: the same reports' verdicts and masks as two
    local processes."""
    ray = pytest.importorskip("ray", reason="ray is the optional [ray] extra")
    _, manifest = models
    local, remote = tmp_path / "local", tmp_path / "ray"
    result = audit(manifest, "--data", SAMPLE, "-o", local, "--jobs", "2", *SHORT)
    assert result.exit_code == 0, result.output
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = audit(manifest, "--data", SAMPLE, "-o", remote, "--ray", context.address_info["address"], *SHORT)
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    (local_summary, local_reports), (ray_summary, ray_reports) = outputs(local), outputs(remote)
    assert ray_summary["executor"].startswith("ray") and local_summary["executor"] == "2 local processes"
    assert set(local_reports) == set(ray_reports) == {"tiny_badnet", "lenet"}
    for name, report in local_reports.items():
        assert ray_reports[name]["verdict"] == report["verdict"]
        assert ray_reports[name]["pruned"] == report["pruned"]
    assert local_reports["tiny_badnet"]["pruned"]["neurons"] > 0  # a mask to compare, not two empty ones
