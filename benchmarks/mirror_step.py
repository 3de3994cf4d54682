"""How long one trigger-synthesis step takes in the torch mirror, with its Clip op as written now (clamp's values
and gradient, by hardtanh's one-kernel backward) against plain clamp with tensor bounds, which it replaced,
interleaved step by step in one process so that a busy machine slows both alike.

    python -m benchmarks.mirror_step [MODEL.onnx ...] [--steps 12] [--batch 32]

A step is what synthesis and the perturbation scan repeat thousands of times per class: forward with a keep
vector, logits, a loss, backward to the input. Per model: the median seconds of each, their ratio, and the
largest difference of the logits and of the input gradient between the two: 0, since the change must not alter
a single search (a rounding change sends the search down another path and changes the pruned neurons).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from onnx_onp.bench.report import describe_machine, machine_info
from onnx_onp.load import load_model
from onnx_onp.mirror import TorchMirror
from onnx_onp.neuron_map import build_neuron_map

DEFAULT_MODELS = ["fixtures/test_models/mobilenetv2_clean_gtsrb.onnx", "fixtures/models/mobilenetv2_clean_cifar10.onnx",
                  "fixtures/models/resnet18_clean_cifar10.onnx"]


def clamp_clip(self, node, a, x, low=None, high=None):
    low = a.get("min") if low is None else low
    high = a.get("max") if high is None else high
    return torch.clamp(x, min=low, max=high)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as one search runs beside another on a 2-core machine
    print("command: python -m benchmarks.mirror_step " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"machine: {describe_machine(machine_info())}; torch threads 1, batch {args.batch}, {args.steps} steps each")
    print("| model | Clip nodes | clamp s/step | mirror s/step | ratio | logits max abs diff | input-grad max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    current = TorchMirror._op_Clip
    variants = {"clamp": clamp_clip, "mirror": current}
    try:
        for path in args.models:
            lm = load_model(path)
            nmap = build_neuron_map(lm)
            mirror = TorchMirror(lm, nmap)
            shape = [args.batch] + list(lm.probe_input_shape[1:])
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
            keep = torch.ones(nmap.num_groups)
            times: dict[str, list[float]] = {name: [] for name in variants}
            last = {}
            for step in range(args.steps + 2):  # the first two of each warm up
                for name, clip in variants.items():
                    TorchMirror._op_Clip = clip
                    x.grad = None
                    start = time.perf_counter()
                    logits = mirror(x, keep, logits=True)
                    torch.nn.functional.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long)).backward()
                    if step >= 2:
                        times[name].append(time.perf_counter() - start)
                    last[name] = (logits.detach(), x.grad.clone())
            old, new = (statistics.median(times[name]) for name in variants)
            (old_logits, old_grad), (new_logits, new_grad) = last["clamp"], last["mirror"]
            clips = sum(node.op_type == "Clip" for node in lm.model.graph.node)
            print(f"| {Path(path).stem} | {clips} | {old:.4f} | {new:.4f} | {old / new:.2f} | "
                  f"{float((old_logits - new_logits).abs().max()):.1e} | {float((old_grad - new_grad).abs().max()):.1e} |",
                  flush=True)
    finally:
        TorchMirror._op_Clip = current


if __name__ == "__main__":
    main()
