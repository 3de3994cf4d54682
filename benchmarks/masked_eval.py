"""What masked evaluation costs: the instrumented session against plain onnxruntime on the same model and data.

    python -m benchmarks.masked_eval [--width 64] [--images 500] [--repeats 5] [--provider auto]

Exports a CIFAR ResNet-18 (random weights: the cost does not depend on them), takes the first N images of
the CIFAR-10 training split, and times, in one run and on one provider:
  plain      onnxruntime on the original model (the baseline)
  masked-0   the instrumented model with nothing pruned
  masked-r   the instrumented model with a random 20% of the prunable groups pruned
  many-r     ten random masks scored with score_many (per mask)
  resumed-L  with resume on (instrument/resume.py), a mask that adds one group of layer L to a mask already
             scored (as the signal walk and the prune-back do): the run resumes at that group's site (per mask,
             a different group each time, so no run finds its own cut tensors)
  walk-r     with resume on, a walk over 20 random groups, each trial the accepted mask plus one (per mask)
Each line reports the median over --repeats and the ratio to plain. The two outputs are also compared
(masked-0 must equal plain).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fixtures.zoo.architectures import ResNet18
from fixtures.zoo.export import export_onnx, randomize_bn
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.runtime import make_session

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_train.npz"
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def _median_seconds(func, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)

    with np.load(DATA) as data:
        raw = data["x"][: args.images]
    x = np.ascontiguousarray(((raw.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2))

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(randomize_bn(ResNet18(width=args.width), seed=0).eval(), Path(tmp) / "r18.onnx",
                           (1, 3, 32, 32))
        start = time.perf_counter()
        lm = load_model(path)
        nmap = build_neuron_map(lm)
        map_seconds = time.perf_counter() - start
        start = time.perf_counter()
        evaluator = MaskedEvaluator(lm, nmap, provider=args.provider, batch_size=args.batch_size)
        instrument_seconds = time.perf_counter() - start
        plain, plain_provider = make_session(lm.model, args.provider)

    def run_plain():
        return np.concatenate([plain.run(None, {lm.input_name: x[i:i + args.batch_size]})[0]
                               for i in range(0, len(x), args.batch_size)])

    rng = np.random.default_rng(0)
    prunable = np.flatnonzero(nmap.prunable)
    masks = np.zeros((10, nmap.num_groups), dtype=bool)
    for mask in masks:
        mask[rng.choice(prunable, len(prunable) // 5, replace=False)] = True
    y = np.zeros(len(x), dtype=np.int64)

    diff = float(np.abs(run_plain() - evaluator.logits(x)).max())
    rows = {
        "plain": _median_seconds(run_plain, args.repeats),
        "masked-0": _median_seconds(lambda: evaluator.logits(x), args.repeats),
        "masked-r": _median_seconds(lambda: evaluator.logits(x, masks[0]), args.repeats),
        "many-r": _median_seconds(lambda: evaluator.score_many(x, y, masks), args.repeats) / len(masks),
    }
    resumed = MaskedEvaluator(lm, nmap, provider=args.provider, batch_size=args.batch_size)
    resumed.enable_resume(1 << 30, x)
    resumed.score_many(x, y, masks[:1])  # the mask the trials add to, and the sessions built
    resume_diff = 0.0
    for stage in ("layer2", "layer3", "layer4"):
        own = [g for g in prunable if not masks[0][g] and nmap.label(nmap.groups[g].neurons[0]).startswith(f"/{stage}/")]
        picks = iter(rng.permutation(own))

        def trial():
            mask = masks[0].copy()
            mask[next(picks)] = True
            return mask

        warm = trial()
        resumed.score_many(x, y, warm[None])
        rows[f"resumed-{stage}"] = _median_seconds(lambda: resumed.score_many(x, y, trial()[None]), args.repeats)
        check = trial()
        resume_diff = max(resume_diff, float(np.abs(resumed.resume.logits(x, check, resumed._keep(check, len(x)),
                                                                            resumed.resume.data_key(x, None))
                                                     - evaluator.logits(x, check)).max()))
    walk = rng.permutation(prunable)[:20]

    def run_walk():
        mask = nmap.empty_mask()
        for k, group in enumerate(walk):
            trial = mask.copy()
            trial[group] = True
            resumed.score_many(x, y, trial[None])
            if k % 2 == 0:
                mask = trial

    resumed.disable_resume()
    resumed.enable_resume(1 << 30, x)  # the walk starts with an empty cache
    rows["walk-r"] = _median_seconds(run_walk, 1) / len(walk)
    result = {
        "model": f"ResNet-18 width {args.width}", "images": len(x), "batch_size": args.batch_size,
        "groups": nmap.num_groups, "prunable_groups": int(nmap.prunable.sum()),
        "mask_sites": len(nmap.mask_sites), "provider": evaluator.provider, "plain_provider": plain_provider,
        "map_seconds": round(map_seconds, 3), "instrument_seconds": round(instrument_seconds, 3),
        "max_abs_diff_unmasked_vs_plain": diff, "max_abs_diff_resumed_vs_masked": resume_diff, "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        "seconds": {k: round(v, 4) for k, v in rows.items()},
        "ratio_to_plain": {k: round(v / rows["plain"], 3) for k, v in rows.items()},
    }
    print(f"{result['model']}, {len(x)} images, batch {args.batch_size}, provider {evaluator.provider} "
          f"(plain: {plain_provider}); {nmap.num_groups} groups, {len(nmap.mask_sites)} mask sites")
    print(f"neuron map {map_seconds:.2f} s, instrumented session {instrument_seconds:.2f} s; "
          f"max |masked-0 - plain| = {diff:.2e}; max |resumed - masked| = {resume_diff:.2e}")
    print("| run | seconds per pass over the data | ratio to plain |")
    print("|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.4f} | {seconds / rows['plain']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
