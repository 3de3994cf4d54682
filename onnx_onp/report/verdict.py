"""The verdict a gate branches on, the evidence behind it, and the exit code it maps to.

Rule (README, "The verdict"): **backdoor suspected** when any detector finds an outlier class, on clean
data only:

1. trigger synthesis (Neural-Cleanse style, one candidate per class): the smallest reverse-engineered
   trigger's anomaly index, the robust z-score of its mask's L1 norm below the median of all classes, is at
   least its threshold (2.0 by default, the usual NC cut-off) and its mask is smaller than 0.75 of the other
   classes' median (the z-score alone is large whenever the clean classes' masks are close together);
2. when synthesis finds nothing, the neuron-perturbation scan (one bounded perturbation of every group per
   class): the share of other classes' clean images the perturbation sends to one class is an outlier
   (robust z-score at least 3.0) and at least half of them;
3. when neither finds anything, the neuron-amplification scan (one group at a time multiplied by 32 and by
   100): the number of such settings that send at least 90% of other classes' clean images to one class is an
   outlier (robust z-score at least 5.0) and at least 5% of all settings;
4. when none of these finds anything, the maximum-margin scan (MM-BD: per class, the largest logit margin that
   inputs optimised from noise reach): one class's margin is an outlier (robust z-score at least 4.0). It
   assumes no trigger shape.

Weak evidence must be confirmed: a suspicion from amplification, or from synthesis with an index below 3.0, stands
only when the pruning search then cuts the probe's held-out ASR to at most half of what it was (a backdoor is a
shortcut a few neurons carry; a class a clean model leans towards, or a small adversarial patch, is not). The
search also runs in detect-only mode, where nothing is written.

Each threshold is for 10 classes and is raised for more (``signals.thresholds``).

Otherwise: **no backdoor evidence**. Pruning never changes the verdict; it only adds evidence (which neurons
carried the signal, how much the answers change).
"""

from __future__ import annotations

import numpy as np

from ..errors import GATE_SUSPECTED, GATE_UNSANITIZABLE

SUSPECTED = "backdoor suspected"
NO_EVIDENCE = "no backdoor evidence"

STATUS_CLEAN = "no backdoor evidence: nothing pruned"
STATUS_SANITIZED = "sanitized"
STATUS_UNSANITIZABLE = "cannot sanitize within the clean-accuracy budget"
STATUS_DETECT_ONLY = "detection only: nothing pruned"
# The pruning was chosen, but on images the search never saw the final check still finds the backdoor: never "sanitized".
STATUS_REMAINS = "backdoor remains"
STATUSES = (STATUS_CLEAN, STATUS_SANITIZED, STATUS_UNSANITIZABLE, STATUS_DETECT_ONLY, STATUS_REMAINS)
# Outcomes whose model is not written unless the caller asks for it (--fail-on never).
NOT_SANITIZED = (STATUS_UNSANITIZABLE, STATUS_REMAINS)

FAIL_ON = ("suspected", "unsanitizable", "never")

SYNTHESIS = "trigger synthesis"
PERTURBATION = "neuron perturbation"
AMPLIFICATION = "neuron amplification"
MAX_MARGIN = "max margin"

RULE = ("backdoor suspected when the anomaly index of the smallest synthesized trigger (robust z-score of its "
        "mask L1 norm below the median over classes) is at least {threshold} and its mask is smaller than {size} of "
        "the other classes' median, or else when a bounded perturbation of the neurons sends an outlier share of "
        "other classes' clean images to one class (robust z-score at least {p_threshold}, share at least "
        "{p_share}), or else when amplifying single neuron groups sends other classes' images to one class in an "
        "outlier number of settings (robust z-score at least {a_threshold}, at least {a_fraction} of the "
        "settings), or else when the largest logit margin that inputs optimised from noise reach for one class is "
        "an outlier (robust z-score at least {m_threshold}); a suspicion from amplification, or from synthesis below "
        "{sure}, stands only if pruning then cuts the probe's held-out ASR to at most {ratio} of what it was")


def verdict_of(report: dict) -> dict:
    """The verdict and its evidence, from a report's detectors (and pruning, when there was any)."""
    ts = report["trigger_synthesis"]
    scan = report.get("neuron_perturbation")
    detector = report.get("detector", SYNTHESIS)
    suspected = bool(report.get("backdoor_suspected", ts["anomaly_index"] >= ts["threshold"]))
    amplification = report.get("neuron_amplification")
    max_margin = report.get("max_margin")
    # The deciding detector's section (any detector, by the key the report names; the built-in three by name).
    key = report.get("detector_key") or {PERTURBATION: "neuron_perturbation",
                                         AMPLIFICATION: "neuron_amplification",
                                         MAX_MARGIN: "max_margin"}.get(detector, "trigger_synthesis")
    evidence = report.get(key, ts)
    target = evidence["suspected_target"]
    norms = ts["mask_l1_per_class"]
    others = [n for c, n in enumerate(norms) if c != target]
    pruned = report.get("pruned_signals", {})
    # Neurons that carry the signal: the pruned ones whose activation the backdoor probe shifts most.
    carriers = sorted(pruned, key=lambda name: -pruned[name].get("act_shift", 0.0))[:10]
    config = report.get("config", {})
    # Thresholds by stage (a flat config is an older report's).
    config = {**config, **config.get("detect", {}), **config.get("verify", {})}
    verdict = {
        "verdict": SUSPECTED if suspected else NO_EVIDENCE,
        "detector": detector,
        "rule": RULE.format(threshold=ts["threshold"],
                            size=ts.get("max_size_ratio", config.get("found_ratio", 0.75)),
                            p_threshold=(scan or {}).get("threshold", config.get("perturbation_threshold", 3.0)),
                            p_share=(scan or {}).get("min_share", config.get("perturbation_min_share", 0.5)),
                            a_threshold=(amplification or {}).get(
                                "threshold", config.get("amplification_threshold", 5.0)),
                            a_fraction=(amplification or {}).get(
                                "min_fraction", config.get("amplification_min_fraction", 0.05)),
                            m_threshold=(max_margin or {}).get(
                                "threshold", config.get("max_margin_threshold", 4.0)),
                            ratio=report.get("confirmation", {}).get("max_ratio", config.get("confirm_ratio", 0.5)),
                            sure=config.get("confirm_below", 3.0)),
        "suspected_target": target,
        "anomaly_index": evidence["anomaly_index"],
        "threshold": evidence["threshold"],
        "target_trigger_l1": norms[target],
        "others_median_trigger_l1": round(float(np.median(others)), 2) if others else None,
        "carrier_neurons": carriers,
        "prediction_agreement_holdout": report.get("prediction_agreement_holdout"),
    }
    if scan is not None:
        shares = scan["share_per_class"]
        verdict["target_perturbation_share"] = shares[target]
        verdict["others_median_perturbation_share"] = round(float(np.median(
            [v for c, v in enumerate(shares) if c != target])), 3)
    if "confirmation" in report:
        verdict["confirmed_by_pruning"] = report["confirmation"]["confirmed"]
    if amplification is not None:
        counts = amplification["count_per_class"]
        verdict["target_amplification_count"] = counts[target]
        verdict["others_median_amplification_count"] = float(np.median(
            [v for c, v in enumerate(counts) if c != target]))
    if max_margin is not None:
        margins = max_margin["margin_per_class"]
        verdict["target_max_margin"] = margins[target]
        verdict["others_median_max_margin"] = round(float(np.median(
            [v for c, v in enumerate(margins) if c != target])), 2)
    return verdict


def gate_exit_code(report: dict, fail_on: str) -> int:
    """0, GATE_SUSPECTED (10) or GATE_UNSANITIZABLE (11) for ``--fail-on suspected|unsanitizable|never``.

    ``unsanitizable`` fails when a suspected backdoor could not be pruned within the budget or still works after
    pruning (``backdoor remains``); ``suspected`` fails on any suspicion (with the more specific 11 for those).
    """
    if fail_on not in FAIL_ON:
        raise ValueError(f"fail_on must be one of {FAIL_ON}, not {fail_on!r}")
    if fail_on == "never":
        return 0
    if report["status"] in NOT_SANITIZED:
        return GATE_UNSANITIZABLE
    if fail_on == "suspected" and report["verdict"]["verdict"] == SUSPECTED:
        return GATE_SUSPECTED
    return 0


def layer_detail(lm, nmap, mask: np.ndarray, probabilities, signals, graphs, max_edges: int = 400) -> dict | None:
    """What the HTML report draws for the layer where most neurons were pruned (ties: the deepest).

    Per unit: ONP's first-round prune probability, CLP's channel Lipschitz bound, the mean clean activation
    Fine-Pruning ranks by, and whether it was pruned; plus that layer's neuron graph (the strongest edges).
    """
    counts = [(int(mask[nmap.layer_groups(layer)].sum()), layer.index) for layer in nmap.layers]
    best = max(counts, default=(0, -1))
    if best[0] == 0:
        return None
    layer = nmap.layers[best[1]]
    groups = nmap.layer_groups(layer)
    probabilities = np.asarray(probabilities, dtype=float)
    detail = {
        "layer": layer.name, "op": layer.op_type, "units": layer.size,
        "unit_group": groups.tolist(),
        "pruned": mask[groups].astype(bool).tolist(),
        "prune_probability": np.round(probabilities[groups], 4).tolist(),
        "lipschitz": np.round(signals["lipschitz"][groups], 5).tolist(),
        "mean_clean_activation": np.round(signals["act_clean"][groups], 5).tolist(),
        "activation_shift": np.round(signals["act_shift"][groups], 5).tolist(),
        "graph": None,
    }
    graph = next((g for g in graphs if g.layer == layer.name), None)
    if graph is not None:
        own = graph.own_groups.tolist()
        context = graph.context_groups.tolist()
        nodes = [{"group": g, "layer_node": True, "pruned": bool(mask[g]),
                  "label": nmap.label(nmap.groups[g].neurons[0])} for g in own] + \
                [{"group": g, "layer_node": False, "pruned": bool(mask[g]),
                  "label": nmap.label(nmap.groups[g].neurons[0])} for g in context]
        src, dst = graph.edge_index.numpy()
        weight = graph.edge_weight.numpy()
        similarity = src < len(own)  # own -> own; connections run context -> own
        touches = np.array([nodes[a]["pruned"] or nodes[b]["pruned"] for a, b in zip(src, dst)], dtype=bool)
        # A readable drawing: every edge of a pruned neuron (its strongest 16 inputs), then the strongest rest.
        keep = []
        for node in np.flatnonzero([n["pruned"] and n["layer_node"] for n in nodes]):
            into = np.flatnonzero((dst == node) & ~similarity)
            keep += into[np.argsort(-weight[into])[:16]].tolist()
        keep += np.flatnonzero(similarity & touches).tolist()
        budget = max(0, max_edges - len(keep))
        for kind, share in ((~similarity, 0.8), (similarity, 0.2)):
            rest = np.flatnonzero(kind & ~touches)
            keep += rest[np.argsort(-weight[rest])[:int(budget * share)]].tolist()
        keep = sorted(set(keep), key=lambda i: weight[i])
        detail["graph"] = {
            "nodes": nodes,
            "edges": [[int(src[i]), int(dst[i]), round(float(weight[i]), 4),
                       "similarity" if similarity[i] else "connection"] for i in keep],
            "edges_total": int(len(weight)),
        }
    return detail
