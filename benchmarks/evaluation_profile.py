"""Where ONP's onnxruntime time goes, stage by stage: masked runs from the input and resumed ones
(instrument/resume.py), images through each, and their seconds; and the same search with resume off, for the
ratio. The masks must come out the same both ways (checked: the script fails otherwise).

    python -m benchmarks.evaluation_profile resnet18w32_badnets_cifar10 [--set NAME=JSON ...] [--no-compare]

Analysis only: sanitize does not use it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np

from onnx_onp import sanitize as sanitize_module
from onnx_onp.bench import DataSplits, open_case
from onnx_onp.config import override
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.instrument.resume import ResumeCache
from onnx_onp.metrics import prepare
from onnx_onp.progress import Silent


class StageRecorder(Silent):
    def __init__(self):
        self.current = "setup"

    def stage(self, name, total=None):
        # "round 2: training the pruning agent" -> "training the pruning agent"
        self.current = name.split(": ", 1)[-1]


def profile(case_name: str, overrides: dict, resume: bool):
    case, spec, lm, nmap, evaluator = open_case(case_name)
    defense_raw, _ = DataSplits().defense_and_test(case.dataset, 500, 0, None)
    defense = prepare(lm, defense_raw, spec.preprocess)
    recorder = StageRecorder()
    table = defaultdict(lambda: {"from_input": 0, "resumed": 0, "images": 0, "seconds": 0.0})
    logits, run = ResumeCache.logits, MaskedEvaluator.run

    def resumed_logits(cache, x, *a, **k):
        start = time.perf_counter()
        out = logits(cache, x, *a, **k)
        row = table[recorder.current]
        row["resumed" if cache.last_start is not None else "from_input"] += 1
        row["images"] += len(x)
        row["seconds"] += time.perf_counter() - start
        return out

    def plain_run(self, x, *a, **k):
        start = time.perf_counter()
        out = run(self, x, *a, **k)
        row = table[recorder.current]
        row["from_input"] += 1
        row["images"] += len(x)
        row["seconds"] += time.perf_counter() - start
        return out

    ResumeCache.logits, MaskedEvaluator.run = resumed_logits, plain_run
    try:
        config = override(sanitize_module.SanitizeConfig(), {**overrides, "runtime.resume_evaluation": resume})
        start = time.perf_counter()
        mask, report = sanitize_module.find_backdoor_mask(lm, nmap, defense, evaluator, config, progress=recorder)
        seconds = time.perf_counter() - start
    finally:
        ResumeCache.logits, MaskedEvaluator.run = logits, run
    return mask, report, seconds, dict(table)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                        help="override a SanitizeConfig field by dotted path (search.rounds=4)")
    parser.add_argument("--no-compare", action="store_true", help="skip the run with resume off")
    parser.add_argument("--json", help="write the tables here")
    args = parser.parse_args(argv)
    overrides = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}
    results = {}
    for resume in ([True] if args.no_compare else [True, False]):
        mask, report, seconds, table = profile(args.case, overrides, resume)
        label = "resume on" if resume else "resume off"
        results[label] = {"seconds": round(seconds, 1), "pruned_groups": np.flatnonzero(mask).tolist(),
                          "phases": report.get("seconds"), "stages": table, "resume": report.get("resume")}
        print(f"\n{args.case}, {label}: {seconds:.1f} s, {int(mask.sum())} groups pruned")
        print("| stage | runs from input | resumed runs | images | onnxruntime s |")
        print("|---|---:|---:|---:|---:|")
        for stage, row in table.items():
            print(f"| {stage} | {row['from_input']} | {row['resumed']} | {row['images']} | {row['seconds']:.1f} |")
        total = sum(row["seconds"] for row in table.values())
        print(f"| all | | | | {total:.1f} |")
        results[label]["runtime_seconds"] = round(total, 1)
    if not args.no_compare:
        on, off = results["resume on"], results["resume off"]
        same = on["pruned_groups"] == off["pruned_groups"]
        print(f"\nsame mask both ways: {same}; onnxruntime {off['runtime_seconds']} -> {on['runtime_seconds']} s "
              f"({off['runtime_seconds'] / max(on['runtime_seconds'], 1e-9):.2f}x), whole search {off['seconds']} -> "
              f"{on['seconds']} s ({off['seconds'] / max(on['seconds'], 1e-9):.2f}x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"case": args.case, "overrides": overrides, **results}, handle, indent=1)
    if not args.no_compare and not same:
        raise SystemExit("the masks differ with resume on and off")


if __name__ == "__main__":
    main()
