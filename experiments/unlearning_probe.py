"""Does the RNP finding (design.md §3, "Unlearning") rank a model's backdoor groups? An analysis with the
attack's real trigger, which sanitize never sees.

    python -m experiments.unlearning_probe resnet18_blended_cifar10 --sizes 2,4,6,8,10,12,16

On the benchmark's 350 training images of the 500 defense images (the split sanitize uses):

1. unlearn: gradient ascent on the clean loss of a copy of the torch mirror's weights (SGD with momentum)
   until its clean accuracy falls below --stop-accuracy;
2. recover: learn one keep-value in [0, 1] per group on the unlearned copy, minimizing the clean loss;
3. rank the groups by how far recovery closed them (lowest keep-value first) and prune the top-k of the
   original model: real ASR and test CA on --test-limit seeded test images, as experiments/signal_ranking.py.

It prints where the unlearned copy's predictions go (RNP's finding is that they collapse onto the target).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from experiments.additive_probe import probe_inputs
from onnx_onp.bench import DataSplits
from onnx_onp.decide.choose import layer_zscores
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.metrics import attack_scores, prepare, prepare_triggered
from onnx_onp.mirror import TorchMirror
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.config import SanitizeConfig
from onnx_onp.context import split_defense

WEIGHT_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2)}


def trainable_weights(mirror: TorchMirror) -> list[torch.Tensor]:
    """The mirror's weights and biases (not BatchNorm's running statistics), made trainable in place."""
    names = {node.input[i] for node in mirror.graph.node for i in WEIGHT_INPUTS.get(node.op_type, ())
             if i < len(node.input) and node.input[i] in mirror.params}
    out = []
    for name in sorted(names):
        mirror.params[name] = mirror.params[name].clone().float().requires_grad_(True)
        out.append(mirror.params[name])
    return out


def accuracy(mirror, x, y, keep=None) -> float:
    with torch.no_grad():
        return float((mirror(x, keep, logits=True).argmax(1) == y).float().mean())


def unlearn(mirror, x, y, *, lr: float, stop_accuracy: float, max_epochs: int, batch: int, seed: int):
    weights = trainable_weights(mirror)
    optimizer = torch.optim.SGD(weights, lr=lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(max_epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            pick = order[start:start + batch]
            loss = -F.cross_entropy(mirror(x[pick], logits=True), y[pick])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(weights, 20.0)  # ascent diverges without it
            optimizer.step()
        acc = accuracy(mirror, x, y)
        if acc <= stop_accuracy:
            return epoch + 1, acc
    return max_epochs, acc


def recover(mirror, num_groups, x, y, *, lr: float, epochs: int, batch: int, seed: int) -> np.ndarray:
    for p in mirror.params.values():
        p.requires_grad_(False)
    keep = torch.ones(num_groups, requires_grad=True)
    optimizer = torch.optim.SGD([keep], lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            pick = order[start:start + batch]
            loss = F.cross_entropy(mirror(x[pick], keep, logits=True), y[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                keep.clamp_(0.0, 1.0)
    return keep.detach().numpy()


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("--sizes", default="2,4,6,8,10,12,16")
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--unlearn-lr", type=float, default=0.01)
    parser.add_argument("--stop-accuracy", type=float, default=0.2)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--recover-lr", type=float, default=0.2)
    parser.add_argument("--recover-epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    ((case, spec, lm, defense, _),) = list(probe_inputs(args.case))
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    nmap = build_neuron_map(lm)
    config = SanitizeConfig()
    train, _ = split_defense(defense, config.decide.holdout, config.seed)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y.astype(np.int64))
    copy = TorchMirror(lm, nmap)
    epochs, acc = unlearn(copy, x, y, lr=args.unlearn_lr, stop_accuracy=args.stop_accuracy,
                          max_epochs=args.max_epochs, batch=args.batch, seed=config.seed)
    with torch.no_grad():
        predicted = copy(x, logits=True).argmax(1).numpy()
    shares = np.bincount(predicted, minlength=lm.num_classes) / len(predicted)
    print(f"{case.name}: unlearned in {epochs} epochs to clean accuracy {100 * acc:.1f}%; its predictions per "
          f"class (%): {' '.join(f'{100 * s:.0f}' for s in shares)}; target {spec.target}; "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    keep = recover(copy, nmap.num_groups, x, y, lr=args.recover_lr, epochs=args.recover_epochs, batch=args.batch,
                   seed=config.seed)
    print(f"recovered: clean accuracy {100 * accuracy(copy, x, y, torch.from_numpy(keep)):.1f}%; keep-values "
          f"< 0.2: {int((keep < 0.2).sum())} groups, < 0.5: {int((keep < 0.5).sum())}; "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    test = DataSplits().splits(case.dataset)[1].take(args.test_limit, seed=1)
    triggered, clean = prepare_triggered(lm, test, spec, spec.preprocess), prepare(lm, test, spec.preprocess)

    def measure(mask):
        return (100 * attack_scores(evaluator, triggered, spec.target, mask).asr,
                100 * evaluator.score(clean.x, clean.y, mask).accuracy)

    asr0, ca0 = measure(None)
    print(f"unpruned real ASR {asr0:.2f}%, test CA {ca0:.2f}%")
    print("| ranking | groups | real ASR % | test CA % | CA drop (points) | layers |")
    print("|---|---:|---:|---:|---:|---|")
    closed = np.where(nmap.prunable, 1.0 - keep, -np.inf)
    rankings = {"1 - keep (global)": np.argsort(-closed, kind="stable"),
                "1 - keep (in-layer z)": np.argsort(-np.where(nmap.prunable, layer_zscores(nmap, 1.0 - keep),
                                                               -np.inf), kind="stable")}
    for label, order in rankings.items():
        for k in (int(s) for s in args.sizes.split(",")):
            mask = nmap.empty_mask()
            mask[order[:k]] = True
            asr, ca = measure(mask)
            layers = sorted({"/".join(nmap.label(nmap.groups[g].neurons[0]).rsplit(":", 1)[0].split("/")[1:-1])
                             for g in order[:k]})
            print(f"| {label} | {k} | {asr:.2f} | {ca:.2f} | {ca0 - ca:.2f} | {' '.join(layers)} |", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
