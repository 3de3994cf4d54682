"""After ONP's pruning, is the target's maximum margin a faithful sign that the backdoor is still there?

    python -m experiments.margin_residual --cases dev --json experiments/results/margin_residual_dev.jsonl

The final check's decisive evidence is the detected trigger's probes; on verazuo_badnet_mnist (draws 0 and 1 of
the real-model bench) they fell from 99-100% to 32% while the real trigger kept 42-44%, so only the
clean-accuracy bound kept those runs from `sanitized`. Maximum margin (MM-BD) assumes no trigger: a class whose
inputs can be driven to margins no clean class reaches. Per dev case (draw 0: the bench's 500 defense images),
ONP runs as in the bench (default configuration, whatever its detector), then on the same images:

- every class's maximum margin in the unpruned model (MM-BD's statistic, 8 starts, 200 Adam steps, seed 0);
- the spec's target class's maximum margin in the pruned model: whether it still exceeds every other class's
  unpruned margin, and the share of its lead over the runner-up it keeps (the final check's rule of `gone` for
  maximum margin: under 0.15);
- the real trigger's ASR before and after on 2,000 test images (which `sanitize` never sees).

A residual signal is useful if "still the largest" goes with a working trigger and "not" with a removed one.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from experiments.additive_probe import probe_inputs
from onnx_onp.baselines import DEFENSES
from onnx_onp.bench import DataSplits
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.metrics import attack_scores, prepare, prepare_triggered
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.signals.max_margin import MaxMarginConfig, max_margins, robust_z_above


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="dev")
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--json", help="append one JSON line per case here")
    args = parser.parse_args(argv)
    splits = DataSplits()
    config = MaxMarginConfig(seed=0)
    for case, spec, lm, defense, mirror in probe_inputs(args.cases):
        if spec.trigger is None or spec.target is None:
            continue
        start = time.perf_counter()
        nmap = build_neuron_map(lm)
        evaluator = MaskedEvaluator(lm, nmap)
        _, test_raw = splits.defense_and_test(case.dataset, 500, 0, args.test_limit)
        triggered = prepare_triggered(lm, test_raw, spec, spec.preprocess)
        test = prepare(lm, test_raw, spec.preprocess)
        onp = DEFENSES["onp"].run(lm, nmap, defense, evaluator=evaluator)
        mask = onp.mask
        torch.set_num_threads(2)
        margins = max_margins(mirror, defense.x, lm.num_classes, spec.preprocess.layout, config)
        keep = torch.from_numpy((~mask).astype(np.float32))
        after = float(max_margins(mirror, defense.x, lm.num_classes, spec.preprocess.layout, config,
                                  classes=[spec.target], keep=keep)[0])
        others = np.delete(margins, spec.target)
        z_after = float(robust_z_above(np.append(others, after))[-1])
        asr0 = attack_scores(evaluator, triggered, spec.target).asr
        asr1 = attack_scores(evaluator, triggered, spec.target, mask).asr
        ca0 = evaluator.score(test.x, test.y).accuracy
        ca1 = evaluator.score(test.x, test.y, mask).accuracy
        record = {"case": case.name, "split": case.split, "target": spec.target, "status": onp.info.get("status"),
                  "detector": onp.info.get("detector"), "pruned_groups": int(mask.sum()),
                  "margins": np.round(margins, 2).tolist(), "target_margin_before": round(float(margins[spec.target]), 2),
                  "target_margin_after": round(after, 2), "others_largest": round(float(others.max()), 2),
                  "still_largest": bool(after > others.max()),
                  "lead_left": (round((after - others.max()) / (margins[spec.target] - others.max()), 3)
                                if margins[spec.target] > others.max() else None), "z_before": round(float(robust_z_above(margins)[
                      spec.target]), 2), "z_after": round(z_after, 2), "asr_before": round(asr0, 4),
                  "asr_after": round(asr1, 4), "ca_drop": round(ca0 - ca1, 4),
                  "seconds": round(time.perf_counter() - start, 1)}
        print(f"{case.name:32s} {record['status'] or '-':48s} target margin {record['target_margin_before']:7.1f} -> "
              f"{after:7.1f} (others' largest {others.max():6.1f}; still largest: "
              f"{'yes' if record['still_largest'] else 'no '}; z {record['z_before']:.2f} -> {z_after:.2f}); real "
              f"ASR {100 * asr0:5.1f}% -> {100 * asr1:5.1f}%, CA drop {100 * (ca0 - ca1):.2f}; "
              f"{record['seconds']:.0f} s", flush=True)
        if args.json:
            with open(args.json, "a") as out:
                out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
