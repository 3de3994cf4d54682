"""The pruning policy of one layer next to CLP's and Fine-Pruning's, in the style of the paper's Fig. 5.

    python -m benchmarks.policy_figure [--case tiny_badnet_cifar10] [--out docs/policy.png]

Runs ONP on the case with 500 clean training images, then draws, for the layer where ONP pruned most (ties:
the last such layer), each unit's ONP prune probability, CLP's channel Lipschitz bound (the rule prunes above
mean + 3 std) and the mean clean activation Fine-Pruning ranks by (it prunes the least active first), with
the units each method prunes marked. matplotlib is a dependency (the HTML report draws with it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from onnx_onp.baselines import DEFENSES  # noqa: E402
from onnx_onp.data import Spec, load_dataset  # noqa: E402
from onnx_onp.instrument import MaskedEvaluator  # noqa: E402
from onnx_onp.load import load_model  # noqa: E402
from onnx_onp.metrics import prepare  # noqa: E402
from onnx_onp.neuron_map import build_neuron_map  # noqa: E402
from onnx_onp.sanitize import find_backdoor_mask  # noqa: E402
from onnx_onp.signals.features import weight_signals  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="tiny_badnet_cifar10")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "policy.png")
    args = parser.parse_args(argv)
    base = REPO / "fixtures" / "models" / args.case
    spec = Spec.load(base.with_suffix(".json"))
    lm = load_model(base.with_suffix(".onnx"))
    nmap = build_neuron_map(lm)
    defense = prepare(lm, load_dataset(REPO.parent / "shared" / "data" / "cifar10_train.npz", limit=500, seed=0),
                      spec.preprocess)
    evaluator = MaskedEvaluator(lm, nmap)
    onp_mask, report = find_backdoor_mask(lm, nmap, defense, evaluator)
    probabilities = np.array(report["policy_probabilities"])  # the first round's policy
    clp_mask = DEFENSES["clp"](lm, nmap, defense).mask
    fp_mask = DEFENSES["fp"](lm, nmap, defense, evaluator=evaluator).mask

    per_layer = [(int(onp_mask[nmap.layer_groups(l)].sum()), l.index)
                 for l in nmap.layers]
    layer = nmap.layers[max(per_layer)[1]]
    groups = nmap.layer_groups(layer)
    _, lipschitz = weight_signals(lm, nmap)
    activation = evaluator_activation(lm, nmap, layer, defense)
    units = np.arange(layer.size)
    panels = [("ONP: prune probability (first round)", probabilities[groups], onp_mask[groups]),
              ("CLP: channel Lipschitz bound", lipschitz[groups], clp_mask[groups]),
              ("Fine-Pruning: mean clean activation", activation, fp_mask[groups])]
    fig, axes = plt.subplots(3, 1, figsize=(10, 6.5), sharex=True)
    for ax, (title, values, pruned) in zip(axes, panels):
        ax.bar(units, values, color=np.where(pruned, "#d62728", "#9ecae1"), width=0.85)
        ax.set_title(f"{title}  ({int(pruned.sum())} pruned, red)", fontsize=10, loc="left")
    axes[-1].set_xlabel(f"unit of {layer.name} ({layer.op_type}, {layer.size} units) in {args.case}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: layer {layer.name}; ONP pruned {int(onp_mask[groups].sum())}, "
          f"CLP {int(clp_mask[groups].sum())}, FP {int(fp_mask[groups].sum())} of its units")


def evaluator_activation(lm, nmap, layer, defense):
    """Mean post-ReLU activation of each unit of the layer on the clean defense data."""
    evaluator = MaskedEvaluator(lm, nmap, extra_outputs=[layer.output])
    out = np.maximum(evaluator.activations(defense.x)[layer.output], 0)
    axes = tuple(a for a in range(out.ndim) if a != (1 if layer.kind == "conv" else out.ndim - 1))
    return out.mean(axis=axes)


if __name__ == "__main__":
    main()
