"""Resident memory and time of resumed evaluation with and without onnxruntime's memory arena in the level
sessions: a 40-step walk over random groups on 500 random images, the cache at --budget-mb.

    python -m experiments.resume_memory [--model fixtures/models/resnet18w32_badnets_cifar10.onnx] [--arena]

Run once with and once without --arena (each in its own process: the arena's memory is not given back).
Analysis only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import onnx_onp.instrument.resume as resume
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model
from onnx_onp.neuron_map import build_neuron_map


def _rss_mb() -> int:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) // 1024


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="fixtures/models/resnet18w32_badnets_cifar10.onnx")
    parser.add_argument("--arena", action="store_true", help="give the level sessions a memory arena")
    parser.add_argument("--budget-mb", type=int, default=3072)
    args = parser.parse_args(argv)
    resume.SUFFIX_ARENA = args.arena
    lm = load_model(args.model)
    nmap = build_neuron_map(lm)
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    rng = np.random.default_rng(0)
    x = rng.random((500, *lm.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, lm.num_classes, len(x))
    evaluator.score_many(x, y, nmap.empty_mask()[None])
    before = _rss_mb()
    evaluator.enable_resume(args.budget_mb << 20, x)
    mask = nmap.empty_mask()
    start = time.perf_counter()
    for group in rng.permutation(np.flatnonzero(nmap.prunable))[:40]:
        trial = mask.copy()
        trial[group] = True
        evaluator.score_many(x, y, trial[None])
        if rng.random() < 0.5:
            mask = trial
    cache = evaluator.resume
    print(f"arena {args.arena}: walk {time.perf_counter() - start:.1f} s, resident memory +{_rss_mb() - before} MB, "
          f"cache {cache.bytes >> 20} MB, {len(cache.levels)} levels, {len(cache.sessions)} sessions")


if __name__ == "__main__":
    main()
