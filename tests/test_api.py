"""The Python API (onnx_onp.sanitize / audit): the README's snippet, in-memory inputs, the CLI's defaults and
results, schema-valid reports, torch's global state left alone."""

from __future__ import annotations

import json
import runpy

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import onnx_onp
from onnx_onp.api import Result
from onnx_onp.errors import OutputError, UsageError
from onnx_onp.report import STATUS_REMAINS, STATUS_UNSANITIZABLE, validate_report
from onnx_onp.report.html import render_html
from onnx_onp_cli.main import main

from .conftest import FIXTURES, REPO, TINY

EXAMPLE = REPO / "docs" / "api_example.py"
SAMPLE = FIXTURES / "data" / "cifar10_defense_sample.npz"


def test_readme_snippet_runs_from_a_clone(tmp_path, monkeypatch, capsys):
    """docs/api_example.py, exactly as the README shows it, from a folder holding only the repository's fixtures."""
    (tmp_path / "fixtures").symlink_to(FIXTURES)
    monkeypatch.chdir(tmp_path)
    print(EXAMPLE.read_text())  # for the README
    namespace = runpy.run_path(str(EXAMPLE))
    out = capsys.readouterr().out
    result = namespace["result"]
    assert "backdoor suspected 0" in out and result.target == 0 and result.pruned
    assert f"{result.outcome} {result.exit_code}" in out and result.exit_code == (0 if result.sanitized else 11)
    assert result.report["audit"]["attack_success_rate"]["after"] < result.report["audit"]["attack_success_rate"][
        "before"]
    validate_report(json.loads(json.dumps(result.report)))
    assert "backdoor suspected" in (tmp_path / "tiny_badnet_cifar10.html").read_text()
    saved = tmp_path / "tiny_badnet_cifar10.clean.onnx"
    assert saved.exists() == result.sanitized  # a model the final check did not pass is never saved
    if result.sanitized:
        assert onnx.load(str(saved)).SerializeToString() == result.pruned_model.SerializeToString()
    else:
        with pytest.raises(OutputError, match="not written"):
            result.save(saved)


def test_in_memory_inputs_give_the_cli_result_and_keep_torch_state(tmp_path, monkeypatch):
    """ModelProto and (x, y) arrays: the same draw, verdict and mask as `onnx-onp sanitize` on the files (200 of
    the sample's images each: the test compares two runs, not the search's quality); the written model is checked
    on the provider asked for; torch's threads and RNG are as they were."""
    import onnx_onp.export.export as export

    report = tmp_path / "cli.json"
    cli = CliRunner().invoke(main, ["sanitize", str(TINY.with_suffix(".onnx")), "--data", str(SAMPLE), "--report",
                                    str(report), "--provider", "cpu", "--fail-on", "never", "--limit", "200"])
    assert cli.exit_code == 0, cli.output
    expected = json.loads(report.read_text())

    providers = []
    real = export.make_session
    monkeypatch.setattr(export, "make_session", lambda *a, **k: providers.append(a[1]) or real(*a, **k))
    with np.load(SAMPLE) as archive:
        x, y = archive["x"], archive["y"]
    torch.set_num_threads(2)
    torch.manual_seed(1234)
    expected_draw = torch.rand(3)
    torch.manual_seed(1234)
    result = onnx_onp.sanitize(onnx.load(str(TINY.with_suffix(".onnx"))), (x, y), provider="cpu",
                               output=tmp_path / "clean.onnx", fail_on="never", limit=200)
    assert torch.get_num_threads() == 2 and torch.equal(torch.rand(3), expected_draw)
    assert providers == ["cpu"]
    assert result.verdict == expected["verdict"]["verdict"] and result.pruned == expected["pruned"]["per_layer"]
    assert result.report["model"]["sha256"] == expected["model"]["sha256"] and result.report["model"]["path"] is None
    assert result.report["command"] == "sanitize" and result.exit_code == expected["exit_code"] == 0
    assert int(result.mask.sum()) == expected["pruned"]["groups"] > 0
    validate_report(json.loads(json.dumps(result.report)))
    render_html(result.report)
    assert (tmp_path / "clean.onnx").read_bytes() == result.pruned_model.SerializeToString()


def test_audit_detect_only_matches_the_cli(tmp_path):
    report = tmp_path / "cli.json"
    cli = CliRunner().invoke(main, ["audit", str(TINY.with_suffix(".onnx")), "--data", str(SAMPLE), "--detect-only",
                                    "--spec", str(TINY.with_suffix(".json")), "--report", str(report)])
    expected = json.loads(report.read_text())
    result = onnx_onp.audit(str(TINY.with_suffix(".onnx")), str(SAMPLE), spec=str(TINY.with_suffix(".json")),
                            detect_only=True)
    assert cli.exit_code == result.exit_code == 10  # audit fails on a suspicion by default, as the CLI does
    assert result.report["verdict"] == expected["verdict"] and result.target == 0
    assert result.report["command"] == "audit" and result.report["fail_on"] == "suspected"
    result.write_json(tmp_path / "api.json")
    validate_report(json.loads((tmp_path / "api.json").read_text()))


def test_bad_calls():
    with pytest.raises(TypeError, match="unexpected keyword"):
        onnx_onp.sanitize(str(TINY.with_suffix(".onnx")), str(SAMPLE), max_ca_dorp=1.0)
    with pytest.raises(UsageError, match="--poisoned-data"):
        onnx_onp.audit(str(TINY.with_suffix(".onnx")), str(SAMPLE), target=0)
    for status in (STATUS_UNSANITIZABLE, STATUS_REMAINS):
        unsanitizable = Result(report={"status": status}, mask=np.zeros(1, bool), model=None, nmap=None,
                           evaluator=None, check_inputs=None)
        with pytest.raises(OutputError, match="not written"):
            unsanitizable.save("never.onnx")


def test_target_without_poisoned_data_is_a_one_line_usage_error():
    result = CliRunner().invoke(main, ["audit", str(TINY.with_suffix(".onnx")), "--data", str(SAMPLE),
                                       "--target", "0"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: --target")
