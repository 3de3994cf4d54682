"""The report of a run, assembled in one place from the stages' results (the CLI adds the command, the gate's
exit code and the timings)."""

from __future__ import annotations

import numpy as np

from .. import __version__
from ..config import config_dict
from .schema import SCHEMA_NAME, SCHEMA_VERSION
from .verdict import layer_detail, verdict_of


def assemble_report(ctx, detection, built, search, pruned_back, verification) -> dict:
    lm, nmap, config = ctx.lm, ctx.nmap, ctx.config
    mask = verification.mask
    report = {
        "schema": {"name": SCHEMA_NAME, "version": SCHEMA_VERSION},
        "tool": {"name": "onnx-onp", "version": __version__},
        "model": lm.describe(), "provider": ctx.evaluator.provider, "seed": config.seed,
        "config": config_dict(config),
        "defense_data": {"samples": len(ctx.defense), "train": len(ctx.train), "holdout": len(ctx.holdout),
                         "check": 0 if ctx.check is None else len(ctx.check)},
        "neuron_map": {k: v for k, v in nmap.summary().items() if k != "layers"},
        "detector": detection.detector,
        "detector_key": detection.report_key,
        "backdoor_suspected": verification.suspected,
    }
    for ran in ctx.detections.values():
        report[ran.report_key] = ran.evidence
    for b in built or []:
        if b.family.report_key and b.section is not None:
            report[b.family.report_key] = b.section
    if pruned_back is not None:
        report["pruned_back"] = pruned_back
    if search is not None:
        probabilities, signals, graphs = search.first
        report["signals"] = {"names": list(signals.names), "graphs": len(graphs),
                             "nodes": int(sum(g.num_nodes for g in graphs)),
                             "edges": int(sum(g.edge_index.shape[1] for g in graphs))}
        if verification.suspected or not detection.suspected:
            report["pruned_signals"] = {nmap.label(nmap.groups[g].neurons[0]): signals.for_group(int(g))
                                        for g in np.flatnonzero(mask)}
        report["rounds"] = search.rounds
        report["policy_probabilities"] = [round(float(p), 4) for p in probabilities]
        unconfirmed = detection.suspected and not verification.suspected
        report["most_affected_layer"] = None if unconfirmed else layer_detail(lm, nmap, mask, probabilities,
                                                                              signals, graphs)
    if verification.confirmation is not None:
        report["confirmation"] = verification.confirmation
    ca_before, ca_after = verification.holdout_ca
    report["clean_accuracy_holdout"] = {"before": ca_before, "after": ca_after, "drop": round(ca_before - ca_after, 4)}
    asr_before, asr_after = verification.holdout_probe_asr
    report["synthesized_trigger_asr_holdout"] = {"before": asr_before, "after": asr_after}
    report["prediction_agreement_holdout"] = verification.agreement
    report["warnings"] = list(verification.warnings)
    report["within_budget"] = verification.within_budget
    if verification.check is not None:
        report["final_check"] = verification.check
        report["within_budget"] = verification.check["clean_accuracy"]["within_budget"]
    report["status"] = verification.status
    report["pruned"] = {"groups": int(mask.sum()),
                        "neurons": int(sum(len(nmap.groups[g].neurons) for g in np.flatnonzero(mask))),
                        "per_layer": nmap.pruned_neurons(mask),
                        "per_layer_counts": [{"layer": layer.name, "op": layer.op_type, "neurons": layer.size,
                                              "pruned": int(mask[nmap.layer_groups(layer)].sum())}
                                             for layer in nmap.layers]}
    if search is not None:
        report["reward_curve"] = search.reward_curve
        report["evaluations"] = search.train_env.evaluations + search.hold_env.evaluations
        report["decision"] = {"candidates_checked": search.decision.candidates_checked,
                              "within_budget": search.decision.within_budget}
    report["verdict"] = verdict_of(report)
    return report
