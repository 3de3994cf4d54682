"""Does the agent matter, and which one? ONP with other graph layers, PPO instead of REINFORCE, and no learning at
all, on the same cases, defense data and test data in one run.

    python -m benchmarks.agent_ablation --json benchmarks/results/agent_ablation.json

Variants (each one `SanitizeConfig` change, everything else at the defaults):

- ``graphconv``: the default (GraphConv layers, REINFORCE);
- ``sage``, ``gat``: GraphSAGE or GAT layers instead of GraphConv;
- ``ppo``: PPO (4 clipped steps per batch of rewards) instead of REINFORCE;
- ``untrained``: no training steps: the decision gets only the warm-started policy's ranking and the signal
  masks, so what the other variants gain over it is what learning from onnxruntime's rewards adds.

Per variant and case: test ASR, test CA drop, pruned groups, ONP's seconds, and which candidate each round's
decision took (``rounds[].chosen_from``); then per variant the means over the cases.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from onnx_onp.agent import TrainConfig
from onnx_onp.bench import BenchConfig, discover_cases, machine_info, run_bench
from onnx_onp.bench.report import result_to_json
from onnx_onp.files import atomic_write_text
from onnx_onp.config import override
from onnx_onp.sanitize import SanitizeConfig

ATTACKS = "resnet18_badnets_cifar10,resnet18_blended_cifar10,resnet18_wanet_cifar10,resnet18_sig_cifar10"
VARIANTS = {
    "graphconv": SanitizeConfig(),
    "sage": override(SanitizeConfig(), {"search.gnn": "sage"}),
    "gat": override(SanitizeConfig(), {"search.gnn": "gat"}),
    "ppo": override(SanitizeConfig(), {"search.train": TrainConfig(algorithm="ppo")}),
    "untrained": override(SanitizeConfig(), {"search.train": TrainConfig(steps=0)}),
}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=ATTACKS)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", help="write every run's rows here")
    args = parser.parse_args(argv)
    cases = discover_cases(args.cases)
    machine = machine_info()
    runs, lines = {}, []
    print("| variant | case | test ASR % | test CA drop (points) | DER % | groups | seconds | chosen from, per round |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for variant in args.variants.split(","):
        config = BenchConfig(defenses=("none", "onp"), defense_configs={"onp": replace(VARIANTS[variant])})
        result = run_bench(cases, config)
        runs[variant] = result_to_json(result, machine, command=f"benchmarks.agent_ablation --variants {variant}")
        asr, drop, der = [], [], []
        for case in result.cases:
            if case.error:
                print(f"| {variant} | {case.case.name} | error: {case.error} |||||")
                continue
            row = next(r for r in case.rows if r.defense == "onp")
            chosen = ", ".join(str(r.get("chosen_from")) for r in row.info.get("rounds", [])) or "(nothing pruned)"
            asr.append(100 * row.asr)
            drop.append(100 * (case.before["ca"] - row.ca))
            der.append(100 * row.der)
            print(f"| {variant} | {case.case.name} | {asr[-1]:.2f} | {drop[-1]:.2f} | {der[-1]:.2f} | "
                  f"{row.pruned_groups} | {row.seconds:.0f} | {chosen} |", flush=True)
        if args.json:  # after every variant, so a run cut short keeps what it measured
            atomic_write_text(args.json, json.dumps({"machine": machine, "runs": runs}, indent=1) + "\n")
        if asr:
            lines.append(f"| {variant} | {sum(asr) / len(asr):.2f} | {max(asr):.2f} | {sum(drop) / len(drop):.2f} | "
                         f"{max(drop):.2f} | {sum(der) / len(der):.2f} |")
    print("\n| variant | mean ASR % | worst ASR % | mean CA drop | worst CA drop | mean DER % |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
