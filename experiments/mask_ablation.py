"""Which of a sanitize run's pruned groups carry the backdoor's removal? An analysis with the attack's real
trigger, which sanitize never sees: it says how far the clean-data probe is from the real backdoor.

    onnx-onp sanitize fixtures/models/resnet18_blended_cifar10.onnx --data ../shared/data/cifar10_train.npz \\
        --limit 500 --rounds 6 --report /tmp/blended6.json
    python -m experiments.mask_ablation resnet18_blended_cifar10 /tmp/blended6.json

For every pruned group: the real ASR and test CA with that group alone pruned, and with every pruned group but
it. A group whose return leaves the ASR where it was cost clean accuracy for nothing.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from onnx_onp.bench import DataSplits, open_case
from onnx_onp.metrics import attack_scores, prepare, prepare_triggered


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("report", help="sanitize's --report JSON")
    parser.add_argument("--test-limit", type=int, default=3000, help="seeded test images (default 3000)")
    args = parser.parse_args(argv)
    case, spec, lm, nmap, evaluator = open_case(args.case)
    test = DataSplits().splits(case.dataset)[1].take(args.test_limit, seed=1)
    triggered = prepare_triggered(lm, test, spec, spec.preprocess)
    clean = prepare(lm, test, spec.preprocess)
    mask = nmap.mask_from_neurons(json.loads(open(args.report).read())["pruned"]["per_layer"])

    def measure(m):
        return (100 * attack_scores(evaluator, triggered, spec.target, m).asr,
                100 * evaluator.score(clean.x, clean.y, m).accuracy)

    (asr0, ca0), (asr, ca) = measure(None), measure(mask)
    print(f"{case.name}: {len(test)} test images; unpruned ASR {asr0:.2f}% CA {ca0:.2f}%; the report's "
          f"{int(mask.sum())} groups: ASR {asr:.2f}% CA {ca:.2f}%")
    print("| group (first neuron) | neurons | ASR, it alone pruned | CA, it alone | ASR, all but it | CA, all but it |")
    print("|---|---:|---:|---:|---:|---:|")
    for g in np.flatnonzero(mask):
        alone = nmap.empty_mask()
        alone[g] = True
        without = mask.copy()
        without[g] = False
        (a1, c1), (a2, c2) = measure(alone), measure(without)
        print(f"| {nmap.label(nmap.groups[g].neurons[0])} | {len(nmap.groups[g].neurons)} | {a1:.2f} | {c1:.2f} | "
              f"{a2:.2f} | {c2:.2f} |", flush=True)


if __name__ == "__main__":
    main()
