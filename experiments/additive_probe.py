"""A negative result kept runnable: can a universal additive perturbation per class detect SIG and WaNet?

    python -m experiments.additive_probe --cases resnet18_sig_cifar10,resnet18_clean_cifar10 --weight 8

For every class, Adam (100 steps, batches of 32 from 350 defense images) finds one perturbation delta, in units
of each channel's data range, minimising cross-entropy towards the class + weight * mean|delta|. A backdoor
target should need a smaller delta; the anomaly index is the same robust z-score as trigger synthesis uses.
Not part of ONP: on the width-8 ResNets every class is reached with 3-5% of the range, and the SIG model's
target does not stand out (BENCHMARKS.md, "What the numbers show").
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from onnx_onp.bench import DataSplits, discover_cases
from onnx_onp.data import Spec
from onnx_onp.load import load_model
from onnx_onp.metrics import prepare
from onnx_onp.mirror import TorchMirror
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.signals.synthesis import anomaly_indices, channel_range


def additive_norms(mirror, x, y, num_classes, *, weight, steps=100, batch=32, lr=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    low, high = map(torch.from_numpy, channel_range(x, "NCHW"))
    scale = (high - low)[0]
    norms, success = [], []
    for target in range(num_classes):
        others = np.flatnonzero(y != target)
        delta = torch.zeros(x.shape[1:], requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=lr)
        labels = torch.full((batch,), target)
        for _ in range(steps):
            pick = torch.from_numpy(others[torch.randint(len(others), (batch,), generator=generator).numpy()])
            logits = mirror(torch.clamp(xt[pick] + delta * scale, low, high), logits=True)
            loss = F.cross_entropy(logits, labels) + weight * delta.abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out = mirror(torch.clamp(xt[torch.from_numpy(others[:256])] + delta * scale, low, high))
            success.append(float((out.argmax(1) == target).float().mean()))
            norms.append(float(delta.abs().mean()))
    return np.array(norms), np.array(success)


def probe_inputs(cases: str):
    """Per benchmark case: the case, its spec, model, the benchmark's 500 defense images prepared for it, and its
    torch mirror (one thread: the probes' timings stay comparable)."""
    torch.set_num_threads(1)
    splits = DataSplits()
    for case in discover_cases(cases):
        spec = Spec.load(case.spec)
        lm = load_model(case.model)
        defense, _ = splits.defense_and_test(case.dataset, 500, 0)
        yield case, spec, lm, prepare(lm, defense, spec.preprocess), TorchMirror(lm, build_neuron_map(lm))


def print_case(case, spec, setting: str, what: str, norms, success, start: float) -> None:
    """One line per case and setting: the suspect, its anomaly index, the per-class norms and successes."""
    index = anomaly_indices(norms)
    attack = json.loads(case.spec.read_text()).get("attack", "?")
    print(f"{case.name:32s} ({attack}; spec target {spec.target}) {setting}: suspect {int(np.argmax(index))}, "
          f"anomaly index {index.max():.2f}; {what} per class {np.round(norms, 3).tolist()}; success "
          f"{np.round(success, 2).tolist()}; {time.perf_counter() - start:.0f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="resnet18_sig_cifar10,resnet18_wanet_cifar10,resnet18_blended_cifar10,"
                                           "resnet18_clean_cifar10")
    parser.add_argument("--weight", type=float, default=2.0)
    args = parser.parse_args(argv)
    for case, spec, lm, data, mirror in probe_inputs(args.cases):
        start = time.perf_counter()
        norms, success = additive_norms(mirror, data.x[:350], data.y[:350], lm.num_classes, weight=args.weight)
        print_case(case, spec, f"weight {args.weight:g}", "mean|delta|", norms, success, start)


if __name__ == "__main__":
    main()
