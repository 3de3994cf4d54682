"""SARIF 2.1.0 (the OASIS Static Analysis Results Interchange Format) for code-scanning dashboards: GitHub code
scanning, Azure DevOps, DefectDojo, ...

One run per SARIF log (one `sanitize`/`audit`, or a whole batch), one result per model where a backdoor is
suspected: the rule is the detector that raised it, the location the model file, the level from the outcome
(``LEVELS``), and the model's sha256 as its partial fingerprint, so a dashboard tracks the same model across
runs. A model without backdoor evidence gives no result; a model the batch could not audit gives an error
notification in the run's invocation.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import quote

from .. import __version__
from .verdict import (AMPLIFICATION, MAX_MARGIN, PERTURBATION, STATUS_DETECT_ONLY, STATUS_SANITIZED,
                      STATUS_UNSANITIZABLE, SUSPECTED, SYNTHESIS)

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"

STATUS_BACKDOOR_REMAINS = "backdoor remains"  # the verification stage's outcome when pruning did not remove it

# A suspected backdoor's level, by outcome: "warning" where pruning within the budget removes it (the sanitized
# model, or the one `sanitize` would write), "error" where the model as it stands keeps it.
LEVELS = {STATUS_SANITIZED: "warning", STATUS_UNSANITIZABLE: "error", STATUS_BACKDOOR_REMAINS: "error",
          STATUS_DETECT_ONLY: "error"}
DEFAULT_LEVEL = "error"

_DESCRIPTIONS = {
    SYNTHESIS: ("A class has an abnormally small reverse-engineered trigger",
                "Neural-Cleanse style trigger synthesis: the smallest trigger that sends clean images of other "
                "classes to one class is an outlier (anomaly index of its mask's L1 norm at or above the threshold)."),
    PERTURBATION: ("A bounded neuron perturbation sends most images to one class",
                   "One bounded perturbation of every neuron group per class: the share of other classes' clean "
                   "images it sends to one class is an outlier (warping and whole-image triggers)."),
    AMPLIFICATION: ("Amplifying single neurons sends images to one class",
                    "One neuron group at a time multiplied by 32 and by 100: the number of settings that send at "
                    "least 90% of other classes' images to one class is an outlier (SIG-style triggers)."),
    MAX_MARGIN: ("One class reaches logit margins no other class does",
                 "MM-BD: per class, the largest logit margin that inputs optimised from noise reach; one class's is an "
                 "outlier (a backdoor's target, whatever its trigger looks like)."),
}


def rule_id(detector: str) -> str:
    return "onnx-onp/" + "-".join(detector.lower().split())


def _rule(detector: str) -> dict:
    short, full = _DESCRIPTIONS.get(detector, (f"Backdoor suspected by the {detector} detector",
                                               f"The {detector} detector found an outlier class."))
    return {"id": rule_id(detector), "name": "".join(w.capitalize() for w in detector.split()),
            "shortDescription": {"text": short}, "fullDescription": {"text": full},
            "help": {"text": "Sanitize the model (onnx-onp sanitize) or reject it; the HTML report shows the "
                             "evidence and the neurons that carry the backdoor."},
            "defaultConfiguration": {"level": DEFAULT_LEVEL},
            "properties": {"tags": ["security", "backdoor", "onnx"]}}


def artifact_uri(path) -> str:
    """A relative path stays relative (code scanning resolves it against the repository root); an absolute one
    becomes a file:// URI."""
    path = Path(path)
    if path.is_absolute():
        return path.as_uri()
    return quote(str(PurePosixPath(*path.parts)))


def _location(report: dict) -> tuple[str, dict]:
    model = report["model"]
    uri = artifact_uri(model["path"]) if model.get("path") else f"{model['sha256']}.onnx"
    return uri, {"physicalLocation": {"artifactLocation": {"uri": uri}}}


def result_of(report: dict, rule_index: int) -> dict:
    """The result for one report with a suspected backdoor."""
    verdict, status = report["verdict"], report["status"]
    _, location = _location(report)
    detector = verdict.get("detector") or report.get("detector") or SYNTHESIS
    text = (f"Backdoor suspected: inputs are steered to class {verdict['suspected_target']} ({detector}, anomaly "
            f"index {verdict['anomaly_index']:.2f}, threshold {verdict['threshold']}). Outcome: {status}; "
            f"{report['pruned']['neurons']} neurons pruned.")
    return {"ruleId": rule_id(detector), "ruleIndex": rule_index, "level": LEVELS.get(status, DEFAULT_LEVEL),
            "message": {"text": text}, "locations": [location],
            "partialFingerprints": {"modelSha256/v1": report["model"]["sha256"]},
            "properties": {"suspectedTarget": verdict["suspected_target"], "anomalyIndex": verdict["anomaly_index"],
                           "threshold": verdict["threshold"], "outcome": status, "command": report.get("command"),
                           "prunedNeurons": report["pruned"]["per_layer"],
                           "carrierNeurons": verdict.get("carrier_neurons", [])}}


def sarif_log(reports: list[dict], failures: list[dict] = ()) -> dict:
    """One SARIF run over ``reports`` (models audited) and ``failures`` ({"model": path, "error": text}: models
    that could not be audited)."""
    from ..detect import DETECTORS

    detectors = [d.name for d in DETECTORS]
    detectors += sorted({r["verdict"].get("detector") for r in reports} - set(detectors) - {None})
    results, artifacts = [], {}
    for report in reports:
        uri, _ = _location(report)
        artifacts.setdefault(uri, {"location": {"uri": uri}, "hashes": {"sha-256": report["model"]["sha256"]}})
        if report["verdict"]["verdict"] == SUSPECTED:
            detector = report["verdict"].get("detector") or SYNTHESIS
            results.append(result_of(report, detectors.index(detector)))
    notifications = [{"level": "error", "message": {"text": f"{f['model']}: {f['error']}"},
                      "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(f["model"])}}}]}
                     for f in failures]
    invocation = {"executionSuccessful": not failures, "toolExecutionNotifications": notifications}
    return {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION,
            "runs": [{"tool": {"driver": {"name": "onnx-onp", "version": __version__, "semanticVersion": __version__,
                                          "rules": [_rule(d) for d in detectors]}},
                      "invocations": [invocation], "artifacts": list(artifacts.values()), "results": results}]}


def sarif_text(reports: list[dict], failures: list[dict] = ()) -> str:
    import json

    from .finish import json_default

    return json.dumps(sarif_log(reports, failures), indent=2, default=json_default) + "\n"
