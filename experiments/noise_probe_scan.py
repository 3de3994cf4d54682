"""Where does random noise blended into clean images send them? The measurement behind the noise probe
(onnx_onp/signals/noise.py).

    python -m experiments.noise_probe_scan --cases resnet18_blended_cifar10,resnet18_clean_cifar10 --alphas 0.1,0.2,0.3

Per case and alpha, over the benchmark's 500 defense images and five noise seeds (each image its own pattern,
as the probe stamps them): the class that receives the most images and its share (mean over the seeds, and
the range), and for a backdoored case the share of other classes' images sent to its target. A noise-blend
backdoor shows as one class taking nearly everything; a clean model spreads noisy images over its classes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from experiments.additive_probe import probe_inputs
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.signals.noise import noise_blend_probe

DEFAULT_CASES = ("resnet18_blended_cifar10,resnet18_clean_cifar10,resnet18_badnets_cifar10,resnet18_wanet_cifar10,"
                 "resnet18_sig_cifar10,mobilenetv2_blended_cifar10,mobilenetv2_clean_cifar10")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--alphas", default="0.1,0.2,0.3")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    print("| case | target | alpha | top class | its share % (mean, range) | to the target % (others' images) |")
    print("|---|---:|---:|---:|---|---:|")
    for case, spec, lm, defense, _ in probe_inputs(args.cases):
        start = time.perf_counter()
        evaluator = MaskedEvaluator(lm, build_neuron_map(lm), provider="cpu")
        target = spec.target
        for alpha in (float(a) for a in args.alphas.split(",")):
            shares, to_target = [], []
            for seed in range(args.seeds):
                probe = noise_blend_probe(evaluator, defense.x, defense.y, 0 if target is None else target,
                                          spec.preprocess.layout, alpha=alpha, seed=seed, max_images=len(defense))
                predicted = evaluator.logits(probe.apply(defense.x)).argmax(axis=1)
                shares.append(np.bincount(predicted, minlength=lm.num_classes) / len(predicted))
                to_target.append(probe.success)
            mean = np.mean(shares, axis=0)
            top = int(mean.argmax())
            tops = [100 * s[top] for s in shares]
            target_text = "-" if target is None else f"{100 * np.mean(to_target):.1f}"
            print(f"| {case.name} | {'-' if target is None else target} | {alpha} | {top} | {100 * mean[top]:.1f} "
                  f"({min(tops):.0f}-{max(tops):.0f}) | {target_text} |", flush=True)
        print(f"<!-- {case.name}: {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
