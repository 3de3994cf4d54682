"""The blend probe towards every class, not only the suspect: how often a whole-image pattern blended in at a
small alpha sends other classes' clean images to each class (analysis for the choice of alpha 0.05).

    python -m experiments.blend_probe_scan resnet18_blended_cifar10 --alphas 0.05,0.1

Per class: the share of up to 256 other-class defense images (of the bench's 500, seed 0) the optimised pattern sends
there, from the torch mirror. A backdoor's target is reached by far more of them than the others at an alpha where
the others are not; at a large alpha every class is (an adversarial perturbation, not a backdoor).
"""

from __future__ import annotations

import argparse
import time

import torch

from onnx_onp.bench import DataSplits, discover_cases
from onnx_onp.data import Spec
from onnx_onp.load import load_model
from onnx_onp.metrics import prepare
from onnx_onp.mirror import TorchMirror
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.signals.synthesis import SynthesisConfig, synthesize_blend


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", help="comma list of case names")
    parser.add_argument("--alphas", default="0.05,0.1")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for case in discover_cases(args.cases):
        spec = Spec.load(case.spec)
        lm = load_model(case.model)
        mirror = TorchMirror(lm, build_neuron_map(lm))
        defense_raw, _ = DataSplits().defense_and_test(case.dataset, 500, 0, None)
        defense = prepare(lm, defense_raw, spec.preprocess)
        layout = spec.preprocess.layout
        for alpha in (float(a) for a in args.alphas.split(",")):
            start = time.perf_counter()
            shares = [synthesize_blend(mirror, defense.x, defense.y, c, layout, alpha=alpha,
                                       config=SynthesisConfig(steps=args.steps)).success
                      for c in range(lm.num_classes)]
            print(f"{case.name} alpha {alpha}: " + " ".join(f"{100 * s:.0f}" for s in shares)
                  + f" (% per class; {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
