"""After ONP's pruning, is the target's maximum margin a faithful sign that the backdoor is still there?

    python -m experiments.margin_residual --cases dev --json experiments/results/margin_residual_dev.jsonl
    python -m experiments.margin_residual --summarize experiments/results/margin_residual_dev.jsonl

The final check's decisive evidence is the detected trigger's probes; on verazuo_badnet_mnist (draws 0 and 1 of
the real-model bench) they fell from 99-100% to 32% while the real trigger kept 42-44%, so only the
clean-accuracy bound kept those runs from `sanitized`. Maximum margin (MM-BD) assumes no trigger: a class whose
inputs can be driven to margins no clean class reaches. Per dev case (draw 0: the bench's 500 defense images),
ONP runs as in the bench (default configuration, whatever its detector), then on the same images:

- every class's maximum margin in the unpruned model (MM-BD's statistic, 8 starts, 200 Adam steps, seed 0);
- the spec's target class's maximum margin in the pruned model: whether it still exceeds every other class's
  unpruned margin, and the share of its lead over the runner-up it keeps (the final check's rule of `gone` for
  maximum margin: under 0.15);
- the real trigger's ASR before and after on 2,000 test images (which `sanitize` never sees).

A residual signal is useful if "still the largest" goes with a working trigger and "not" with a removed one.
``--summarize`` prints, from the saved records, each case's share of the lead kept (recomputed from the margins,
so older records without ``lead_left`` count too) and the gap between removed (real ASR after < 10%) and kept
(>= 20%) backdoors that ``VerifyConfig.max_margin_lead_left`` must sit in.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from experiments.additive_probe import probe_inputs
from onnx_onp.baselines import DEFENSES
from onnx_onp.bench import DataSplits
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.metrics import attack_scores, prepare, prepare_triggered
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.signals.max_margin import MaxMarginConfig, lead_kept, max_margins, robust_z_above


def lead_left(record: dict) -> float | None:
    """The share of the target's lead over the runner-up class it keeps after pruning (None: it did not lead)."""
    return lead_kept(record["target_margin_before"], record["target_margin_after"], record["others_largest"])


def summarize(path: str) -> None:
    from onnx_onp.verify import VerifyConfig

    records = [json.loads(line) for line in open(path) if line.strip()]
    print(f"# python -m experiments.margin_residual --summarize {path}  ({len(records)} cases, draw 0)")
    print("| case | split | outcome | real ASR before → after % | target margin before → after | runner-up | "
          "lead kept |\n|---|---|---|---|---|---:|---:|")
    for r in records:
        kept = lead_left(r)
        print(f"| {r['case']} | {r['split']} | {r['status'] or '–'} | {100 * r['asr_before']:.1f} → "
              f"{100 * r['asr_after']:.1f} | {r['target_margin_before']:.1f} → {r['target_margin_after']:.1f} | "
              f"{r['others_largest']:.1f} | {'no lead' if kept is None else f'{kept:.3f}'} |")
    led = [(lead_left(r), r["asr_after"]) for r in records if lead_left(r) is not None]
    removed = [k for k, asr in led if asr < 0.10]
    kept = [k for k, asr in led if asr >= 0.20]
    cut = VerifyConfig().max_margin_lead_left
    print(f"\nremoved backdoors (real ASR after < 10%) that led: {len(removed)}, largest lead kept "
          f"{max(removed):.3f}" if removed else "\nno removed backdoor led")
    print(f"kept backdoors (real ASR after >= 20%) that led: {len(kept)}, smallest lead kept {min(kept):.3f}"
          if kept else "no kept backdoor led")
    print(f"kept backdoors that did not lead (this check cannot see them): "
          f"{sum(lead_left(r) is None and r['asr_after'] >= 0.20 for r in records)}")
    print(f"VerifyConfig.max_margin_lead_left = {cut}: removed above it {sum(k >= cut for k in removed)}, "
          f"kept below it {sum(k < cut for k in kept)}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="dev")
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--json", help="append one JSON line per case here")
    parser.add_argument("--summarize", metavar="JSONL", help="print the table and the gap from saved records")
    args = parser.parse_args(argv)
    if args.summarize:
        return summarize(args.summarize)
    splits = DataSplits()
    config = MaxMarginConfig(seed=0)
    for case, spec, lm, defense, mirror in probe_inputs(args.cases):
        if spec.trigger is None or spec.target is None:
            continue
        start = time.perf_counter()
        nmap = build_neuron_map(lm)
        evaluator = MaskedEvaluator(lm, nmap)
        _, test_raw = splits.defense_and_test(case.dataset, 500, 0, args.test_limit)
        triggered = prepare_triggered(lm, test_raw, spec, spec.preprocess)
        test = prepare(lm, test_raw, spec.preprocess)
        onp = DEFENSES["onp"].run(lm, nmap, defense, evaluator=evaluator)
        mask = onp.mask
        torch.set_num_threads(2)
        margins = max_margins(mirror, defense.x, lm.num_classes, spec.preprocess.layout, config)
        keep = torch.from_numpy((~mask).astype(np.float32))
        after = float(max_margins(mirror, defense.x, lm.num_classes, spec.preprocess.layout, config,
                                  classes=[spec.target], keep=keep)[0])
        others = np.delete(margins, spec.target)
        z_after = float(robust_z_above(np.append(others, after))[-1])
        asr0 = attack_scores(evaluator, triggered, spec.target).asr
        asr1 = attack_scores(evaluator, triggered, spec.target, mask).asr
        ca0 = evaluator.score(test.x, test.y).accuracy
        ca1 = evaluator.score(test.x, test.y, mask).accuracy
        record = {"case": case.name, "split": case.split, "target": spec.target, "status": onp.info.get("status"),
                  "detector": onp.info.get("detector"), "pruned_groups": int(mask.sum()),
                  "margins": np.round(margins, 2).tolist(), "target_margin_before": round(float(margins[spec.target]), 2),
                  "target_margin_after": round(after, 2), "others_largest": round(float(others.max()), 2),
                  "still_largest": bool(after > others.max()),
                  "lead_left": (None if (kept := lead_kept(float(margins[spec.target]), after, float(others.max())))
                                is None else round(kept, 3)), "z_before": round(float(robust_z_above(margins)[
                      spec.target]), 2), "z_after": round(z_after, 2), "asr_before": round(asr0, 4),
                  "asr_after": round(asr1, 4), "ca_drop": round(ca0 - ca1, 4),
                  "seconds": round(time.perf_counter() - start, 1)}
        print(f"{case.name:32s} {record['status'] or '-':48s} target margin {record['target_margin_before']:7.1f} -> "
              f"{after:7.1f} (others' largest {others.max():6.1f}; still largest: "
              f"{'yes' if record['still_largest'] else 'no '}; z {record['z_before']:.2f} -> {z_after:.2f}); real "
              f"ASR {100 * asr0:5.1f}% -> {100 * asr1:5.1f}%, CA drop {100 * (ca0 - ca1):.2f}; "
              f"{record['seconds']:.0f} s", flush=True)
        if args.json:
            with open(args.json, "a") as out:
                out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
