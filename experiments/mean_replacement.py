"""Would pruning cost less clean accuracy if a pruned neuron gave its clean mean instead of zero?

    python -m experiments.mean_replacement --cases dev

Zeroing a channel also shifts every layer after it: the next layer was trained on the channel's mean, not on 0.
Mean replacement (Evci et al. 2018, "Mean Replacement Pruning") keeps that mean: a pruned neuron outputs the
average it had on clean data (per channel, over the clean defense images and the positions). A backdoor neuron is
near-silent on clean images, so its mean should not bring the trigger back; the question is how much clean
accuracy it returns at the same mask.

For each case and each mask source (Fine-Pruning, CLP and random pruning of Fine-Pruning's size; all from the
clean defense data, draw 0, 500 images), the same mask is written two ways into an ONNX copy (one Mul and one Add
at each of the neuron map's mask sites, so the zeroed copy is a second implementation of the masked evaluator,
checked against it), then test CA and ASR are measured with onnxruntime on 2,000 test images. Means come from
the defense images only.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_onp.baselines import DEFENSES, RandomConfig
from onnx_onp.bench import BenchConfig, DataSplits, discover_cases
from onnx_onp.data import Spec
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model
from onnx_onp.metrics import prepare, prepare_triggered
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.runtime import make_session


def _run(model: onnx.ModelProto, input_name: str, x: np.ndarray, outputs: list[str], batch: int = 250) -> list:
    session, _ = make_session(model, "cpu", threads=1)
    parts = [session.run(outputs, {input_name: x[i:i + batch]}) for i in range(0, len(x), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(outputs))]


def site_means(lm, nmap, x: np.ndarray) -> list[np.ndarray]:
    """Per mask site, the tensor's mean over the clean images and every axis its groups broadcast over."""
    model = copy.deepcopy(lm.model)
    names = [site.tensor for site in nmap.mask_sites]
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    values = _run(model, lm.input_name, x, names)
    means = []
    for site, value in zip(nmap.mask_sites, values):
        axes = tuple(a for a, size in enumerate(site.groups.shape) if size == 1 and value.shape[a] != 1) + (0,)
        means.append(value.mean(axis=tuple(sorted(set(axes))), keepdims=True).astype(value.dtype))
    return means


def masked_copy(lm, nmap, mask: np.ndarray, means: list[np.ndarray] | None) -> onnx.ModelProto:
    """The model with ``mask`` written in: each pruned element gives 0 (means None) or its clean mean."""
    model = copy.deepcopy(lm.model)
    graph, renamed, after = model.graph, {}, {}
    for k, site in enumerate(nmap.mask_sites):
        pruned = np.where(site.groups >= 0, mask[np.maximum(site.groups, 0)], False)
        keep = (~pruned).astype(np.float32)
        fill = np.zeros_like(keep) if means is None else pruned * means[k].reshape(
            means[k].shape if means[k].ndim == keep.ndim else keep.shape)
        prefix = f"mr/site{k}"
        graph.initializer.extend([numpy_helper.from_array(keep, f"{prefix}/keep"),
                                  numpy_helper.from_array(fill.astype(np.float32), f"{prefix}/fill")])
        kept, out = f"{prefix}/kept", f"{prefix}/out"
        after[site.tensor] = [helper.make_node("Mul", [site.tensor, f"{prefix}/keep"], [kept]),
                              helper.make_node("Add", [kept, f"{prefix}/fill"], [out])]
        renamed[site.tensor] = out
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in renamed:
                node.input[slot] = renamed[name]
    ordered = []
    for node in graph.node:
        ordered.append(node)
        for name in node.output:
            ordered.extend(after.pop(name, []))
    for output in graph.output:  # a mask site that is a graph output keeps its name: rename back
        if output.name in renamed:
            output.name = renamed[output.name]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def scores(lm, model, test, triggered, target) -> tuple[float, float]:
    (logits,) = _run(model, lm.input_name, test.x, [model.graph.output[0].name])
    ca = float((logits.argmax(1) == test.y).mean())
    keep = triggered.y != target
    (logits,) = _run(model, lm.input_name, triggered.x[keep], [model.graph.output[0].name])
    return ca, float((logits.argmax(1) == target).mean())


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="dev")
    parser.add_argument("--test-limit", type=int, default=2000)
    args = parser.parse_args(argv)
    config = BenchConfig(test_limit=args.test_limit)
    splits = DataSplits()
    print("| case | mask | groups | CA before | ASR before | CA zeroed | ASR zeroed | CA mean | ASR mean | "
          "CA drop zeroed → mean | evaluator check |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for case in discover_cases(args.cases):
        spec = Spec.load(case.spec)
        if spec.trigger is None or spec.target is None:
            continue
        lm = load_model(case.model)
        nmap = build_neuron_map(lm)
        defense_raw, test_raw = splits.defense_and_test(case.dataset, 500, 0, config.test_limit)
        defense = prepare(lm, defense_raw, spec.preprocess)
        test = prepare(lm, test_raw, spec.preprocess)
        triggered = prepare_triggered(lm, test_raw, spec, spec.preprocess)
        means = site_means(lm, nmap, defense.x)
        evaluator = MaskedEvaluator(lm, nmap)
        ca0, asr0 = scores(lm, lm.model, test, triggered, spec.target)
        fp = DEFENSES["fp"].run(lm, nmap, defense, evaluator=evaluator, config=None).mask
        clp = DEFENSES["clp"].run(lm, nmap, defense, evaluator=evaluator, config=None).mask
        count = int(sum(len(nmap.groups[int(g)].neurons) for g in np.flatnonzero(fp)))
        rnd = DEFENSES["random"].run(lm, nmap, defense, evaluator=evaluator,
                                     config=RandomConfig(count=count, seed=0)).mask
        for label, mask in (("fine-pruning", fp), ("clp", clp), ("random (FP's count)", rnd)):
            if not mask.any():
                print(f"| {case.name} | {label} | 0 | nothing pruned |||||||||")
                continue
            zeroed = masked_copy(lm, nmap, mask, None)
            ca_z, asr_z = scores(lm, zeroed, test, triggered, spec.target)
            ca_m, asr_m = scores(lm, masked_copy(lm, nmap, mask, means), test, triggered, spec.target)
            # The zeroed copy is a second implementation of masked evaluation: the two must agree.
            check = abs(evaluator.score(test.x, test.y, mask).accuracy - ca_z)
            print(f"| {case.name} | {label} | {int(mask.sum())} | {100 * ca0:.2f} | {100 * asr0:.2f} | "
                  f"{100 * ca_z:.2f} | {100 * asr_z:.2f} | {100 * ca_m:.2f} | {100 * asr_m:.2f} | "
                  f"{100 * (ca0 - ca_z):.2f} → {100 * (ca0 - ca_m):.2f} | "
                  f"{'agrees' if check < 1e-9 else f'DIFFERS by {check:.4f}'} |", flush=True)


if __name__ == "__main__":
    main()
