"""A negative result kept runnable: does a 1-D stripe synthesized per class detect the SIG backdoor?

    python -m experiments.stripe_probe --cases resnet18_sig_cifar10,resnet18_clean_cifar10 --weights 2,8

SIG's trigger is a sinusoid over the image's columns, the same in every row and channel. For every class, Adam
(100 steps, batches of 32 from 350 defense images) finds one pattern over the columns (or rows), in units of
each channel's data range and shared by all rows and channels, minimising cross-entropy towards the class +
weight * mean|pattern|. The backdoor's target should need the smallest stripe; the anomaly index is the same
robust z-score trigger synthesis uses. Not part of ONP: on the SIG fixture the target does get the smallest
stripe, but the index stays near 1.3 while the clean twin scores 2.62 on a class at weight 2 (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from experiments.additive_probe import print_case, probe_inputs
from onnx_onp.signals.synthesis import channel_range


def stripe_norms(mirror, x, y, num_classes, *, weight, axis="cols", steps=100, batch=32, lr=0.05, seed=0):
    """Per class: mean |stripe| and the share of 256 other-class images it sends to the class (NCHW input)."""
    generator = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    low, high = map(torch.from_numpy, channel_range(x, "NCHW"))
    shape = [1, 1, x.shape[3]] if axis == "cols" else [1, x.shape[2], 1]
    norms, success = [], []
    for target in range(num_classes):
        others = np.flatnonzero(y != target)
        stripe = torch.zeros(shape, requires_grad=True)
        optimizer = torch.optim.Adam([stripe], lr=lr)
        labels = torch.full((batch,), target)
        for _ in range(steps):
            pick = torch.from_numpy(others[torch.randint(len(others), (batch,), generator=generator).numpy()])
            logits = mirror(torch.clamp(xt[pick] + stripe * (high - low), low, high), logits=True)
            loss = F.cross_entropy(logits, labels) + weight * stripe.abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out = mirror(torch.clamp(xt[torch.from_numpy(others[:256])] + stripe * (high - low), low, high))
            success.append(float((out.argmax(1) == target).float().mean()))
            norms.append(float(stripe.abs().mean()))
    return np.array(norms), np.array(success)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="resnet18_sig_cifar10,resnet18_clean_cifar10")
    parser.add_argument("--weights", default="2,8")
    parser.add_argument("--axis", choices=("cols", "rows"), default="cols")
    args = parser.parse_args(argv)
    for case, spec, lm, data, mirror in probe_inputs(args.cases):
        for weight in (float(w) for w in args.weights.split(",")):
            start = time.perf_counter()
            norms, success = stripe_norms(mirror, data.x[:350], data.y[:350], lm.num_classes, weight=weight,
                                          axis=args.axis)
            print_case(case, spec, f"{args.axis} weight {weight:g}", "mean|stripe|", norms, success, start)


if __name__ == "__main__":
    main()
