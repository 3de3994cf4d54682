"""The JSON report's schema: versioned, published as docs/report-schema.json, checked in the tests.

Version rules: a field added is a minor bump (1.0 -> 1.1: old readers keep working); a field removed,
renamed or changed in meaning is a major bump. ``python -m onnx_onp.report.schema`` prints the schema.
"""

from __future__ import annotations

import json

SCHEMA_NAME = "onnx-onp-report"
SCHEMA_VERSION = "1.19"  # 1.14: max_margin (the fourth detector); 1.15: unconfirmed_suspicion;
# 1.16: final_check.cannot_show_gone, residual_evidence[].conclusive; 1.17: cannot_show_gone no longer written (its
# rule was prompted by test-split records and was undone; it was optional, so 1.x readers already handle it absent);
# 1.18: rounds[].holdout_probe_asr_unpruned, probes_cut, went_on_as_probes_not_cut (optional: 1.17 reports lack them)
# 1.19: final_check.clean_accuracy.images_needed and final_check.defense_images_needed (optional)

_number = {"type": "number"}
_share = {"type": "number", "minimum": 0, "maximum": 1}
_before_after = {"type": "object", "required": ["before", "after"],
                 "properties": {"before": _share, "after": _share}}

REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"https://onnx-onp.invalid/schema/report-{SCHEMA_VERSION}.json",
    "title": "onnx-onp sanitize/audit report",
    "type": "object",
    "required": ["schema", "tool", "command", "model", "provider", "seed", "started_at", "verdict", "status",
                 "backdoor_suspected", "trigger_synthesis", "defense_data", "clean_accuracy_holdout",
                 "prediction_agreement_holdout", "within_budget", "warnings", "pruned", "seconds", "exit_code"],
    "properties": {
        "schema": {"type": "object", "required": ["name", "version"],
                   "properties": {"name": {"const": SCHEMA_NAME},
                                  "version": {"type": "string", "pattern": r"^1\.\d+$"}}},
        "tool": {"type": "object", "required": ["name", "version"],
                 "properties": {"name": {"const": "onnx-onp"}, "version": {"type": "string"}}},
        "command": {"enum": ["sanitize", "audit"], "description": "which command wrote the report"},
        "model": {"type": "object", "required": ["path", "sha256", "producer", "opset", "input", "output"],
                  "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                 "producer": {"type": "string"}, "opset": {"type": ["integer", "null"]},
                                 "path": {"type": ["string", "null"]},
                                 "output": {"type": "object", "required": ["classes"],
                                            "properties": {"classes": {"type": "integer", "minimum": 2}}}}},
        "provider": {"type": "string", "description": "the onnxruntime provider that really ran"},
        "seed": {"type": "integer"},
        "started_at": {"type": "string", "description": "UTC, ISO 8601"},
        "verdict": {
            "type": "object",
            "required": ["verdict", "rule", "suspected_target", "anomaly_index", "threshold", "carrier_neurons",
                         "prediction_agreement_holdout"],
            "properties": {"verdict": {"enum": ["backdoor suspected", "no backdoor evidence"]},
                           "detector": {"type": "string",
                                        "description": "the detector whose numbers the verdict quotes"},
                           "target_perturbation_share": _share,
                           "others_median_perturbation_share": _share,
                           "target_amplification_count": {"type": "integer", "minimum": 0},
                           "others_median_amplification_count": _number,
                           "rule": {"type": "string"}, "suspected_target": {"type": "integer", "minimum": 0},
                           "anomaly_index": _number, "threshold": _number,
                           "target_trigger_l1": _number, "others_median_trigger_l1": {"type": ["number", "null"]},
                           "carrier_neurons": {"type": "array", "items": {"type": "string"}},
                           "prediction_agreement_holdout": {"type": ["number", "null"]}}},
        "status": {"enum": ["no backdoor evidence: nothing pruned", "sanitized",
                            "cannot sanitize within the clean-accuracy budget",
                            "detection only: nothing pruned", "backdoor remains"]},
        "final_check": {
            "type": "object", "description": "the verify stage's check on defense images the search never saw",
            "required": ["images", "backdoor_remains", "residual_evidence", "clean_accuracy"],
            "properties": {
                "images": {"type": "integer", "minimum": 0},
                "defense_images_needed": {"type": "integer", "minimum": 1, "description": "defense images "
                                          "(--limit) whose check share is clean_accuracy.images_needed"},
                "backdoor_remains": {"type": "boolean", "description": "found by a decisive source"},
                "residual_evidence": {"type": "array", "items": {
                    "type": "object", "required": ["source", "decisive", "found"],
                    "properties": {"source": {"type": "string"}, "decisive": {"type": "boolean"},
                                   "found": {"type": "boolean"},
                                   "conclusive": {"type": "boolean", "description": "false: too weak on the "
                                                  "unpruned model to show anything, so its 'not found' says "
                                                  "nothing (absent: true)"}}}},
                "clean_accuracy": {
                    "type": "object",
                    "required": ["images", "before", "after", "drop", "upper_bound", "confidence", "budget",
                                 "within_budget"],
                    "properties": {"before": _share, "after": _share, "drop": _number, "upper_bound": _number,
                                   "confidence": _share, "budget": _number, "within_budget": {"type": "boolean"},
                                   "images_needed": {"type": ["integer", "null"], "description": "check images "
                                                     "that would bound the drop within budget at the broken and "
                                                     "fixed shares seen (an estimate); null when within budget "
                                                     "or when the drop seen is itself over it"}}}}},
        "backdoor_suspected": {"type": "boolean"},
        "exit_code": {"type": "integer", "description": "what the command exited with (README, Exit codes)"},
        "fail_on": {"enum": ["suspected", "unsanitizable", "never"]},
        "trigger_synthesis": {
            "type": "object", "required": ["suspected_target", "anomaly_index", "threshold", "mask_l1_per_class"],
            "properties": {"mask_l1_per_class": {"type": "array", "items": _number, "minItems": 2},
                           "size_ratio": {"type": "number", "minimum": 0,
                                          "description": "the suspect's mask L1 over the other classes' median"},
                           "max_size_ratio": {"type": "number", "minimum": 0},
                           "success_per_class": {"type": "array", "items": _share}}},
        "detector": {"type": "string", "description": "the deciding detector: trigger synthesis, neuron "
                     "perturbation, neuron amplification, max margin, or one a caller added (detect.Detector)"},
        "detector_key": {"type": "string", "description": "the report field that holds the deciding detector's "
                         "evidence"},
        "schedule": {"enum": ["standard", "large model"],
                     "description": "large model: the lighter settings used from 1M parameters on (README)"},
        "neuron_perturbation": {
            "type": "object", "description": "run only when trigger synthesis finds nothing",
            "required": ["suspected_target", "anomaly_index", "threshold", "min_share", "epsilon",
                         "share_per_class"],
            "properties": {"share_per_class": {"type": "array", "items": _share, "minItems": 2},
                           "epsilon": _number, "min_share": _share}},
        "neuron_amplification": {
            "type": "object", "description": "run only when neither trigger synthesis nor neuron perturbation finds "
                                             "anything",
            "required": ["suspected_target", "anomaly_index", "threshold", "min_fraction", "factors", "settings",
                         "count_per_class"],
            "properties": {"count_per_class": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                               "minItems": 2},
                           "settings": {"type": "integer", "minimum": 0}, "min_fraction": _share,
                           "factors": {"type": "array", "items": _number}}},
        "max_margin": {
            "type": "object", "description": "run only when none of the other detectors finds anything (MM-BD)",
            "required": ["suspected_target", "anomaly_index", "threshold", "margin_per_class"],
            "properties": {"margin_per_class": {"type": "array", "items": _number, "minItems": 2},
                           "steps": {"type": "integer", "minimum": 1}, "starts": {"type": "integer", "minimum": 1}}},
        "defense_data": {"type": "object", "required": ["samples", "train", "holdout"],
                         "properties": {"samples": {"type": "integer", "minimum": 1}}},
        "clean_accuracy_holdout": {"type": "object", "required": ["before", "after", "drop"],
                                   "properties": {"before": _share, "after": _share, "drop": _number}},
        "synthesized_trigger_asr_holdout": _before_after,
        "prediction_agreement_holdout": _share,
        "within_budget": {"type": "boolean"},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "pruned": {
            "type": "object", "required": ["groups", "neurons", "per_layer", "per_layer_counts"],
            "properties": {
                "groups": {"type": "integer", "minimum": 0}, "neurons": {"type": "integer", "minimum": 0},
                "per_layer": {"type": "object",
                              "additionalProperties": {"type": "array", "items": {"type": "integer"}}},
                "per_layer_counts": {"type": "array", "items": {
                    "type": "object", "required": ["layer", "neurons", "pruned"],
                    "properties": {"layer": {"type": "string"}, "neurons": {"type": "integer"},
                                   "pruned": {"type": "integer"}}}}}},
        "rounds": {"type": "array", "items": {
            "type": "object", "required": ["round", "pruned_groups"],
            "properties": {"chosen_from": {"enum": ["agent sample", "policy ranking", "signal mask", "signal walk",
                                                    None],
                                           "description": "which candidate the round's decision took"},
                           "holdout_probe_asr_unpruned": {**_share, "description": "the round's probes' held-out "
                                                          "success on the unpruned model"},
                           "probes_cut": {"type": "boolean", "description": "the round's mask cut the probes' held-out "
                                          "success below the final check's residual ratio of it (or it was too weak "
                                          "to tell)"},
                           "went_on_as_probes_not_cut": {"type": "boolean", "description": "the search went on after "
                                                         "this round only because its mask did not cut the probes "
                                                         "(SearchConfig.until_probes_cut)"}}}},
        "blend_probe": {"type": "object", "required": ["alpha", "success", "used"],
                        "description": "a whole-image pattern blended in at alpha towards the suspect; used as a "
                                       "probe only when it sends enough other classes' images there",
                        "properties": {"alpha": _number, "success": _share, "used": {"type": "boolean"}}},
        "noise_probe": {"type": "object", "required": ["alpha", "success", "used"],
                        "description": "clean images blended with random noise at alpha, each its own pattern; used "
                                       "as a probe only when it sends enough other classes' images to the suspect",
                        "properties": {"alpha": _number, "success": _share, "used": {"type": "boolean"}}},
        "resume": {"type": "object", "required": ["levels", "runs_resumed", "runs_from_input"],
                   "description": "masked runs resumed part-way through the network from cached tensors (same "
                                  "outputs, fewer layers run), and those run from the input",
                   "properties": {"levels": {"type": "integer", "minimum": 0},
                                  "runs_resumed": {"type": "integer", "minimum": 0},
                                  "runs_from_input": {"type": "integer", "minimum": 0}}},
        "pruned_back": {"type": "object", "required": ["restored", "probe_asr", "defense_ca"],
                        "description": "groups the rounds pruned and the prune-back gave back, in that order",
                        "properties": {"restored": {"type": "array", "items": {"type": "string"}},
                                       "probe_asr": _before_after, "defense_ca": _before_after}},
        "confirmation": {
            "type": "object", "required": ["detector", "confirmed", "max_ratio", "probe_asr_holdout",
                                           "tentative_pruned"],
            "description": "weak evidence (the amplification detector, synthesis below config.confirm_below) stands "
                           "only when the pruning search cuts the probe's held-out ASR to at most max_ratio of what "
                           "it was",
            "properties": {"detector": {"type": "string"}, "confirmed": {"type": "boolean"}, "max_ratio": _share,
                           "probe_asr_holdout": _before_after, "tentative_pruned": {"type": "object"}}},
        "unconfirmed_suspicion": {
            "type": "object", "required": ["detector", "confirmed", "superseded_by"],
            "description": "a weak suspicion the pruning did not confirm, after which the last-resort detector "
                           "(superseded_by) suspected a backdoor and was acted on instead: the run's detector, "
                           "confirmation and rounds are the last-resort detector's",
            "properties": {"detector": {"type": "string"}, "confirmed": {"type": "boolean"},
                           "superseded_by": {"type": "string"}, "max_ratio": _share,
                           "probe_asr_holdout": _before_after, "tentative_pruned": {"type": "object"}}},
        "reward_curve": {"type": "array", "items": {
            "type": "object", "required": ["round", "step", "mean_reward", "best_reward"]}},
        "policy_probabilities": {"type": "array", "items": _share},
        "most_affected_layer": {"type": ["object", "null"], "required": ["layer", "units", "pruned",
                                                                        "prune_probability"]},
        "audit": {"type": ["object", "null"], "description": "measured on test data; never used to decide",
                  "properties": {"clean_accuracy": _before_after, "attack_success_rate": _before_after,
                                 "robust_accuracy": _before_after}},
        "output": {"type": "object", "required": ["path", "shrunk", "max_abs_diff"]},
        "seconds": {"type": "object", "required": ["total", "onnxruntime", "onnxruntime_share"],
                    "properties": {"total": _number, "onnxruntime_share": _share}},
    },
}


def validate_report(report: dict) -> None:
    """Raise jsonschema.ValidationError when the report does not follow the schema."""
    import jsonschema

    jsonschema.validate(report, REPORT_SCHEMA, cls=jsonschema.Draft202012Validator)


def schema_text() -> str:
    return json.dumps(REPORT_SCHEMA, indent=2) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
