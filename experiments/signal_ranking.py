"""How many groups does each backdoor signal need? An analysis with the attack's real trigger, which sanitize
never sees: it says whether a model's backdoor can be pruned within the clean-accuracy budget by the signals ONP
starts from, or whether the search is what fails.

    python -m experiments.signal_ranking resnet18w32_badnets_cifar10 --sizes 2,4,8,12,16,24,32

Synthesizes the suspect's trigger as sanitize does (the spec's target; the large-model batch size from 1M
parameters), computes the per-group signals on the 350 training images of the benchmark's 500 defense images
(stamped with the trigger and its amplified copy), then for each signal prunes the top-k groups by their
within-layer z-score (decide/choose.py layer_zscores, as signal_masks ranks them) and prints the real ASR and test CA
on --test-limit seeded test images, and the probe's ASR on the stamped defense images.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from experiments.additive_probe import probe_inputs
from onnx_onp.bench import DataSplits
from onnx_onp.decide.choose import layer_zscores
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.metrics import attack_scores, prepare, prepare_triggered
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.config import LARGE_MODEL_PARAMETERS, SanitizeConfig, large_model_schedule
from onnx_onp.context import split_defense
from onnx_onp.detect import refinement
from onnx_onp.sanitize import parameter_count
from onnx_onp.signals.features import compute_signals
from onnx_onp.signals.synthesis import amplify, spatial_axes, synthesize, synthesize_blend


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("--signals", default="act_shift,blc,lipschitz")
    parser.add_argument("--sizes", default="2,4,8,12,16,24,32")
    parser.add_argument("--test-limit", type=int, default=2000, help="seeded test images (default 2000)")
    parser.add_argument("--blend", action="store_true",
                        help="stamp a third of the images with the blend probe too, as sanitize's reward does when "
                             "the probe reaches the suspect (ProbeConfig.blend_probe_alpha)")
    args = parser.parse_args(argv)
    ((case, spec, lm, defense, mirror),) = list(probe_inputs(args.case))
    start = time.perf_counter()
    nmap = build_neuron_map(lm)
    config = SanitizeConfig()
    if parameter_count(lm) >= LARGE_MODEL_PARAMETERS:
        config = large_model_schedule(config)
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    test = DataSplits().splits(case.dataset)[1].take(args.test_limit, seed=1)
    triggered, clean = prepare_triggered(lm, test, spec, spec.preprocess), prepare(lm, test, spec.preprocess)
    train, _ = split_defense(defense, config.decide.holdout, config.seed)
    layout = spec.preprocess.layout
    axes = spatial_axes(layout)
    trigger = synthesize(mirror, train.x, train.y, lm.num_classes, layout, config.detect.synthesis,
                         classes=[spec.target]).candidates[0]
    others = train.x[train.y != spec.target]
    probes = [trigger, amplify(trigger, train.x, layout)]
    if args.blend:
        probes.append(synthesize_blend(mirror, train.x, train.y, spec.target, layout,
                                       alpha=config.probes.blend_probe_alpha, config=refinement(config, config.seed + 50)))
    stamped = np.concatenate([p.apply(others[k::len(probes)], axes) for k, p in enumerate(probes)])
    signals = compute_signals(lm, nmap, mirror, train.x, train.y, stamped, spec.target)
    probe_y = np.full(len(stamped), spec.target)

    def measure(mask):
        return (100 * attack_scores(evaluator, triggered, spec.target, mask).asr,
                100 * evaluator.score(clean.x, clean.y, mask).accuracy,
                100 * evaluator.score(stamped, probe_y, mask).accuracy)

    asr0, ca0, probe0 = measure(None)
    print(f"{case.name}: synthesized mask L1 {trigger.mask_l1:.1f}; unpruned real ASR {asr0:.2f}%, test CA "
          f"{ca0:.2f}% ({len(test)} images), probe ASR {probe0:.1f}%")
    print("| signal | groups | neurons | real ASR % | test CA % | CA drop (points) | probe ASR % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.signals.split(","):
        order = np.argsort(-layer_zscores(nmap, signals[name]), kind="stable")
        for k in (int(s) for s in args.sizes.split(",")):
            mask = nmap.empty_mask()
            mask[order[:k]] = True
            asr, ca, probe = measure(mask)
            neurons = sum(len(nmap.groups[g].neurons) for g in order[:k])
            print(f"| {name} | {k} | {neurons} | {asr:.2f} | {ca:.2f} | {ca0 - ca:.2f} | {probe:.1f} |", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
