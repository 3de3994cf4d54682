"""The experiment behind the third detector (onnx_onp/signals/amplification.py), kept runnable with its knobs:
amplify one neuron group at a time and count, per class, the settings that send nearly all other images there.

    python -m experiments.amplify_probe --cases resnet18_sig_cifar10,resnet18_clean_cifar10 --factors 32,100

Uses the benchmark's 500 defense images (the first --images of them), every prunable group, and prints per case
the counts per class and the anomaly index of the busiest class. With factors 4,16 and share 0.8 hardly any
setting moves most images anywhere (SIG's target 14 of 720, index 1.46; clean twin 11, 1.25); with the defaults
32,100 and 0.9, SIG's target stands out (67, index 5.25; clean twin 36, 2.44). BENCHMARKS.md, "SIG".
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments.additive_probe import probe_inputs
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.signals.amplification import amplified_shares, count_indices


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="resnet18_sig_cifar10,resnet18_clean_cifar10,resnet18_blended_cifar10,"
                                           "resnet18_badnets_cifar10,resnet18_wanet_cifar10,vggbn_clean_cifar10")
    parser.add_argument("--factors", default="32,100")
    parser.add_argument("--share", type=float, default=0.9)
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args(argv)
    factors = [float(f) for f in args.factors.split(",")]
    for case, spec, lm, data, _ in probe_inputs(args.cases):
        start = time.perf_counter()
        evaluator = MaskedEvaluator(lm, build_neuron_map(lm), provider="cpu")
        groups = np.flatnonzero(evaluator.nmap.prunable)
        shares = amplified_shares(evaluator, data.x[:args.images], data.y[:args.images], lm.num_classes, groups,
                                  factors)
        counts = (shares >= args.share).sum(axis=0)
        index = count_indices(counts, len(shares))
        attack = json.loads(case.spec.read_text()).get("attack", "?")
        print(f"{case.name:32s} ({attack}; spec target {spec.target}): settings sending >= {args.share:.0%} per "
              f"class {counts.tolist()} of {len(shares)}, suspect {int(np.argmax(index))} index {index.max():.2f}; "
              f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
