"""Models per hour of a batch audit: --jobs 1, --jobs 2 and Ray on a local cluster, on the same models.

    python -m benchmarks.batch_throughput [--models tiny_badnet_cifar10,vggbn_badnets_cifar10,vggbn_clean_cifar10]
        [--detect-only] [--out /tmp/batch_throughput] [--json benchmarks/results/batch_throughput.json]

Each model with its fixture spec (preprocessing) and the shipped defense sample. The Ray run starts a local
cluster with as many CPUs as the machine has and asks 1 CPU per model. Prints one line per executor, and
whether the three runs gave the same verdicts and masks; ``--json`` saves the same for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path

from onnx_onp.batch import run_batch
from onnx_onp.options import RunOptions

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="tiny_badnet_cifar10,vggbn_badnets_cifar10,vggbn_clean_cifar10")
    parser.add_argument("--detect-only", action="store_true")
    parser.add_argument("--modes", default="jobs1,jobs2,ray")
    parser.add_argument("--out", type=Path, default=Path("/tmp/batch_throughput"))
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = args.out / "models.jsonl"
    models = REPO / "fixtures" / "models"
    manifest.write_text("".join(json.dumps({"model": str(models / f"{m}.onnx"), "spec": str(models / f"{m}.json")})
                                + "\n" for m in args.models.split(",")))
    options = RunOptions(command="audit", data_path=str(REPO / "fixtures" / "data" / "cifar10_defense_sample.npz"),
                         detect_only=args.detect_only, fail_on="never", quiet=True)
    outcomes, measured = {}, []
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for mode in args.modes.split(","):
        kwargs = {"jobs": int(mode[4:])} if mode.startswith("jobs") else {"ray_address": "local"}
        if mode == "ray":
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            summary = run_batch(manifest, args.out / mode, options, **kwargs)
        finally:
            if mode == "ray":
                ray.shutdown()
        n = summary["models"] - summary["failed"]
        measured.append({"mode": mode, "executor": summary["executor"], "models": n, "seconds": summary["seconds"],
                         "models_per_hour": round(3600 * n / summary["seconds"], 1),
                         "per_model_seconds": {r["name"]: r["seconds"] for r in summary["rows"]},
                         "load_after": [round(v, 1) for v in os.getloadavg()]})
        print(f"{mode:>5}: {n} models in {summary['seconds']:.1f} s = {3600 * n / summary['seconds']:.1f} models/hour"
              f"  ({summary['executor']}; per model: "
              + ", ".join(f"{r['name']} {r['seconds']} s" for r in summary["rows"]) + ")", flush=True)
        outcomes[mode] = {r["name"]: (r["verdict"], json.dumps(json.loads((args.out / mode / r["report"]).read_text())
                                                               ["pruned"]["per_layer"]) if r["report"] else None)
                          for r in summary["rows"]}
    same = all(o == next(iter(outcomes.values())) for o in outcomes.values())
    print(f"same verdicts and masks in every run: {same}; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end")
    if args.json:
        from onnx_onp.bench.report import machine_info

        args.json.write_text(json.dumps({
            "command": "python -m benchmarks.batch_throughput " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": started, "machine": machine_info(), "detect_only": args.detect_only,
            "models": args.models.split(","), "modes": measured, "same_verdicts_and_masks": same}, indent=1) + "\n")


if __name__ == "__main__":
    main()
