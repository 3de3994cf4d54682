"""Does the agent matter, and which one? ONP with other graph layers, PPO instead of REINFORCE, and no learning at
all, on the same cases, defense data and test data in one run.

    python -m benchmarks.agent_ablation --json benchmarks/results/agent_ablation.json
    python -m benchmarks.agent_ablation --cases NAME,... --variants graphconv,untrained --draws 3 --test-limit 2000
    python -m benchmarks.agent_ablation --cases NAME --draws 3 --json RUN.json --resume   # only the draws not in RUN.json
    python -m benchmarks.agent_ablation --summarize benchmarks/results/agent_ablation_test.json [MORE.json ...]
    python -m benchmarks.agent_ablation --json RUN.json --baselines   # CLP, FP, random beside RUN.json's ONP rows

With ``--draws 3`` every case runs on the three draws of the defense data (seeds 0, 1, 2), as the test split's
benchmark does, and the summary is over every (case, draw).

Variants (each one `SanitizeConfig` change, everything else at the defaults):

- ``graphconv``: the default (GraphConv layers, REINFORCE);
- ``sage``, ``gat``: GraphSAGE or GAT layers instead of GraphConv;
- ``ppo``: PPO (4 clipped steps per batch of rewards) instead of REINFORCE;
- ``until_probes_cut``: the search's rounds also go on while the chosen mask leaves the probes' held-out success
  at half or more of what it was (``SearchConfig.until_probes_cut``; the default since the dev comparison in
  ``benchmarks/results/until_probes_cut_dev.txt``, so now the same as ``graphconv``; not a learning variant). A
  round marked ``+`` in "chosen from" is one after which ``stop_when_cleared`` would have stopped: a draw without
  one ran exactly as that setting does (same seed, same machine);
- ``stop_when_cleared``: ``until_probes_cut`` off: the rounds stop at the first mask after which re-synthesis no
  longer finds the backdoor, whatever the probes' held-out success (the default before it was switched on);
- ``untrained``: no training steps: the decision gets only the warm-started policy's ranking and the signal
  masks, so what the other variants gain over it is what learning from onnxruntime's rewards adds.

Per variant, case and draw: ONP's outcome, test ASR, test CA drop, pruned groups, ONP's seconds, and which
candidate each round's decision took (``rounds[].chosen_from``); then per variant the means and worsts over the
(case, draw) pairs. ``--summarize`` prints the same tables from saved ``--json`` files (several files: their
rows together), so every number in a note or the README comes from a command.

``--baselines`` adds CLP, Fine-Pruning and random pruning of ONP's neuron count (``random@onp``) to every (case,
draw) of a saved file that lacks them, on the same defense draw and test data (the unpruned model's scores must
match the saved ones exactly), so the default's runs get the issue's DER comparison without running ONP again.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from dataclasses import replace

from onnx_onp.agent import TrainConfig
from onnx_onp.bench import BenchConfig, discover_cases, machine_info, run_bench
from onnx_onp.bench.harness import BenchResult, run_case
from onnx_onp.bench.report import _plain, onp_rows_from_json, result_to_json
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
    "until_probes_cut": override(SanitizeConfig(), {"search.until_probes_cut": True}),
    "stop_when_cleared": override(SanitizeConfig(), {"search.until_probes_cut": False}),
}


HEADER = ("| variant | case | draw | outcome | test ASR % | test CA drop (points) | DER % | groups | seconds | "
          "chosen from, per round |\n|---|---|---:|---|---:|---:|---:|---:|---:|---|")


def onp_rows(variant: str, payload: dict) -> list[dict]:
    """ONP's row per (case, draw) of one variant's saved bench payload."""
    return [{"variant": variant, **row} for row in onp_rows_from_json(payload)]


def row_line(row: dict) -> str:
    if "error" in row:
        return f"| {row['variant']} | {row['case']} | {row['draw']} | error: {row['error']} |||||||"
    return (f"| {row['variant']} | {row['case']} | {row['draw']} | {row['status'] or '–'} | {row['asr']:.2f} | "
            f"{row['drop']:.2f} | {row['der']:.2f} | {row['groups']} | {row['seconds']:.0f} | {row['chosen']} |")


def summary_lines(rows: list[dict]) -> list[str]:
    """Per variant, over its (case, draw) pairs: mean and worst ASR and CA drop, mean DER, outcomes."""
    lines = ["| variant | pairs | mean ASR % | worst ASR % | ASR ≤ 10% | mean CA drop | worst CA drop | CA drop ≤ 2 | "
             "mean DER % | sanitized |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        done = [r for r in rows if r["variant"] == variant and "error" not in r]
        if not done:
            continue
        asr, drop, der = ([r[k] for r in done] for k in ("asr", "drop", "der"))
        n = len(done)
        lines.append(f"| {variant} | {n} | {sum(asr) / n:.2f} | {max(asr):.2f} | {sum(a <= 10 for a in asr)} of {n} | "
                     f"{sum(drop) / n:.2f} | {max(drop):.2f} | {sum(d <= 2 for d in drop)} of {n} | "
                     f"{sum(der) / n:.2f} | {sum(r['status'] == 'sanitized' for r in done)} of {n} |")
    return lines


def summarize(paths: list[str]) -> None:
    rows = [row for path in paths for variant, payload in json.load(open(path))["runs"].items()
            for row in onp_rows(variant, payload)]
    order = list(dict.fromkeys(r["variant"] for r in rows))
    rows.sort(key=lambda r: (r["case"], order.index(r["variant"]), r["draw"]))
    print("\n".join([f"# python -m benchmarks.agent_ablation --summarize {' '.join(paths)}", HEADER, *map(row_line, rows), "", *summary_lines(rows)]))


def done_draws(runs: dict) -> set[tuple[str, str, int]]:
    """(variant, case, draw) of every error-free case entry in a saved --json file's runs."""
    return {(variant, case["name"], case["draw"]) for variant, payload in runs.items()
            for case in payload.get("cases", []) if not case.get("error")}


def merge_cases(earlier: dict | None, payload: dict) -> dict:
    """``payload`` (one variant's run on one case so far) added to that variant's earlier entry, a (case, draw)
    measured again replacing its earlier entry; cases in name and draw order."""
    if earlier is None:
        return payload
    fresh = {(c["name"], c["draw"]) for c in payload["cases"]}
    cases = [c for c in earlier["cases"] if (c["name"], c["draw"]) not in fresh] + payload["cases"]
    return {**earlier, "cases": sorted(cases, key=lambda c: (c["name"], c["draw"])),
            "seconds": earlier["seconds"] + payload["seconds"]}


BASELINE_DEFENSES = ("none", "clp", "fp", "random")


def same_cpu_or_exit(flag: str, path: str, saved: dict, machine: dict) -> None:
    """Results differ between CPUs (same code and seed): one file holds one machine's runs."""
    if saved.get("machine", {}).get("cpu") != machine.get("cpu"):
        sys.exit(f"{flag}: {path} was measured on {saved.get('machine', {}).get('cpu')}, this is {machine.get('cpu')}")


def add_baselines(path: str, variants: list[str] | None, machine: dict) -> list[str]:
    """The baselines beside each saved ONP row of ``path`` (the variants named, default all) that has none yet,
    saved after every (case, draw); the lines it printed. The unpruned model's test scores must equal the saved
    ones: otherwise the baselines would be measured on other data than ONP was."""
    saved = json.load(open(path))
    same_cpu_or_exit("--baselines", path, saved, machine)
    lines = ["| variant | case | draw | defense | test ASR % | test CA drop (points) | DER % | neurons | seconds |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for variant, payload in saved["runs"].items():
        if variants and variant not in variants:
            continue
        settings = payload["settings"]
        config = BenchConfig(defenses=BASELINE_DEFENSES, defense_size=settings["defense_size"],
                             seed=settings["seed"], test_limit=settings["test_limit"], provider=settings["provider"])
        for entry in payload["cases"]:
            if entry.get("error") or any(r["defense"] in ("clp", "fp") for r in entry["rows"]):
                continue
            (case,) = discover_cases(entry["name"])
            onp = next(r for r in entry["rows"] if r["defense"] == "onp")
            started, clock = datetime.datetime.now().astimezone().isoformat(timespec="seconds"), time.perf_counter()
            result = run_case(case, config, draw=entry["draw"], random_counts={"onp": onp["pruned_neurons"]})
            before, was = _plain(result.before), entry["before"]
            if (before["ca"], before["asr"]) != (was["ca"], was.get("asr")):
                sys.exit(f"--baselines: {entry['name']} draw {entry['draw']}: the unpruned model scores {before} on "
                         f"this run's test data, the saved run {was}: not the same data")
            rows = [_plain(dataclasses.asdict(r)) for r in result.rows if r.defense != "none"]
            entry["rows"] = [r for r in entry["rows"] if r["defense"] in ("none", "onp")] + rows
            entry["baselines"] = {"command": "benchmarks.agent_ablation --baselines", "date": started,
                                  "seconds": time.perf_counter() - clock}
            atomic_write_text(path, json.dumps(saved, indent=1) + "\n")
            for row in rows:
                drop = 100 * (was["ca"] - row["ca"])
                der = "–" if row["der"] is None else f"{100 * row['der']:.2f}"
                asr = "–" if row["asr"] is None else f"{100 * row['asr']:.2f}"
                lines.append(f"| {variant} | {entry['name']} | {entry['draw']} | {row['defense']} | {asr} | "
                             f"{drop:.2f} | {der} | {row['pruned_neurons']} | {row['seconds']:.1f} |")
                print(lines[-1], flush=True)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=ATTACKS)
    parser.add_argument("--variants", default=None, help=f"comma list (default: {','.join(VARIANTS)}; "
                        "with --baselines: every variant in the file)")
    parser.add_argument("--draws", type=int, default=1, help="defense-data draws per case (seeds 0 ..)")
    parser.add_argument("--test-limit", type=int, default=None, help="test images per case (default: all)")
    parser.add_argument("--json", help="write every run's rows here (again after every draw)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the (variant, case, draw)s already in --json and run only the others")
    parser.add_argument("--summarize", nargs="+", metavar="JSON", help="print the tables from saved --json files")
    parser.add_argument("--baselines", action="store_true",
                        help="add CLP, Fine-Pruning and random@onp to the saved runs in --json (same draws and data)")
    args = parser.parse_args(argv)
    if args.summarize:
        return summarize(args.summarize)
    if args.baselines:
        if not args.json or not os.path.exists(args.json):
            parser.error("--baselines needs --json with a saved run")
        add_baselines(args.json, args.variants.split(",") if args.variants else None, machine_info())
        return
    if args.resume and not args.json:
        parser.error("--resume needs --json")
    cases = discover_cases(args.cases)
    machine = machine_info()
    variants = (args.variants or ",".join(VARIANTS)).split(",")
    runs: dict[str, dict] = {}
    if args.resume and os.path.exists(args.json):
        saved = json.load(open(args.json))
        same_cpu_or_exit("--resume", args.json, saved, machine)
        runs = saved["runs"]
    done = done_draws(runs)
    measured: list[dict] = []
    print(HEADER)
    # Case by case, every variant on it before the next case: a run cut short still compares like with like.
    for one in cases:
        for variant in variants:
            config = BenchConfig(defenses=("none", "onp"), defense_configs={"onp": replace(VARIANTS[variant])},
                                 draws=args.draws, test_limit=args.test_limit)
            command = f"benchmarks.agent_ablation --variants {variant} --draws {args.draws} " \
                      f"--test-limit {args.test_limit}"
            earlier = runs.get(variant)
            so_far: list = []
            started, clock = datetime.datetime.now().astimezone().isoformat(timespec="seconds"), time.perf_counter()

            def save(case_result, variant=variant, earlier=earlier, so_far=so_far, started=started, clock=clock):
                """After every draw, so that a run cut short keeps each draw it finished."""
                so_far.append(case_result)
                partial = BenchResult(config=config, cases=list(so_far), seconds=time.perf_counter() - clock,
                                      started=started)
                runs[variant] = merge_cases(earlier, result_to_json(partial, machine, command=command))
                if args.json:
                    atomic_write_text(args.json, json.dumps({"machine": machine, "runs": runs}, indent=1) + "\n")

            # Each row to stderr as soon as it is measured: a run cut off between draws still shows what it found.
            result = run_bench([one], config, on_result=save,
                               skip=lambda case, draw, variant=variant: (variant, case.name, draw) in done,
                               on_row=lambda row, variant=variant: print(
                f"measured: {variant} {row.case} draw {row.draw} {row.defense} status={row.status} CA={row.ca:.2f} "
                f"ASR={row.asr} seconds={row.seconds:.0f}", file=sys.stderr, flush=True))
            for row in onp_rows(variant, result_to_json(result, machine, command=command)):
                measured.append(row)
                print(row_line(row), flush=True)
    print("\n" + "\n".join(summary_lines(measured)))


if __name__ == "__main__":
    main()
