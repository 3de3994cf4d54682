"""How far the clean-data probe is from the real backdoor, round by round: runs ONP's mask search as the bench
does (500 seeded defense images, seed 0) and measures, with the attack's real trigger, which sanitize never
sees, the real ASR and test CA of every round's mask and of the prune-back's result.

    python -m experiments.probe_trace resnet18_blended_cifar10 experiments/results/probe_trace_blended.json
    python -m experiments.probe_trace resnet18_blended_cifar10 out.json --set probes.blend_probe_resynthesis=false

``--set name=value`` (JSON value) overrides a SanitizeConfig field by dotted path, to trace a variant. Analysis
only: the real trigger never reaches the search.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import onnx_onp.sanitize as sanitize_module
import onnx_onp.search as search_module
from onnx_onp.config import SanitizeConfig, override
from onnx_onp.bench import DataSplits, open_case
from onnx_onp.metrics import attack_scores, prepare, prepare_triggered


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--test-limit", type=int, default=3000, help="seeded test images (default 3000)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                        help="override a SanitizeConfig field by dotted path (search.rounds=4)")
    args = parser.parse_args(argv)
    overrides = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}
    case, spec, lm, nmap, evaluator = open_case(args.case)
    defense_raw, test_raw = DataSplits().defense_and_test(case.dataset, 500, 0, None)
    defense = prepare(lm, defense_raw, spec.preprocess)
    test_raw = test_raw.take(args.test_limit, seed=1)
    clean = prepare(lm, test_raw, spec.preprocess)
    triggered = prepare_triggered(lm, test_raw, spec, spec.preprocess)

    def real(mask):
        return {"asr": round(100 * attack_scores(evaluator, triggered, spec.target, mask).asr, 2),
                "ca": round(100 * evaluator.score(clean.x, clean.y, mask).accuracy, 2)}

    trace = []

    def log(entry):
        trace.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "groups_pruned"}), flush=True)

    # Wrap the decision and the prune-back to see each mask as the search produces it.
    # (the search stage calls choose_mask, the pipeline calls prune_back, each by the name it imported)
    choose, prune_back = search_module.choose_mask, sanitize_module.prune_back

    def traced_choose(*a, **k):
        decision = choose(*a, **k)
        log({"step": "round", "pruned_groups": int(decision.mask.sum()), "chosen_from": decision.source,
             "real": real(decision.mask), "groups_pruned": np.flatnonzero(decision.mask).tolist()})
        return decision

    def traced_prune_back(*a, **k):
        mask, info = prune_back(*a, **k)
        log({"step": "prune-back", "pruned_groups": int(mask.sum()), "restored": info["restored"],
             "real": real(mask), "groups_pruned": np.flatnonzero(mask).tolist()})
        return mask, info

    search_module.choose_mask, sanitize_module.prune_back = traced_choose, traced_prune_back
    config = override(SanitizeConfig(), overrides)
    start = time.perf_counter()
    mask, report = sanitize_module.find_backdoor_mask(lm, nmap, defense, evaluator, config)
    result = {"case": case.name, "overrides": overrides, "test_images": len(test_raw), "before": real(None),
              "final": real(mask), "pruned_groups": int(mask.sum()),
              "seconds": round(time.perf_counter() - start, 1), "trace": trace,
              "blend_probe": report.get("blend_probe"), "noise_probe": report.get("noise_probe"),
              "rounds": report.get("rounds")}
    print(json.dumps({k: result[k] for k in ("case", "overrides", "before", "final", "pruned_groups", "seconds")}))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
