"""How time and memory grow with the model: `sanitize` on widths of one ResNet-18 recipe, side by side.

    python -m benchmarks.scale [--widths 8,16,32,64] [--images 500] [--test-limit 1000] [--set NAME=JSON ...]
                               [--masked-eval-images 500] [--repeats 3] [--no-masked-eval] [--json PATH [--resume]]

The models are the BadNets CIFAR-10 ResNet-18s of the fixture zoo (fixtures/models/resnet18_badnets_cifar10 is
width 8, resnet18w{W}_badnets_cifar10 width W; `--model W=PATH` names another); a width without a model is
listed as missing, not trained here. Each width runs in a fresh child process (its own peak memory), which:

1. runs `sanitize` (onnx_onp.sanitize.sanitize, the pipeline of `onnx-onp sanitize`, writing and checking the
   model) on `--images` seeded CIFAR-10 training images, and records its wall time, the process's peak resident
   memory (ru_maxrss: everything the process held, Python, torch and onnxruntime included), the time inside
   onnxruntime (the masked evaluator's own clock) and inside torch (outermost torch.nn.Module calls and autograd
   backward/grad calls: the mirror's forward and backward passes and the policy; torch arithmetic outside those
   counts as "other", so the torch share is a lower bound);
2. runs Fine-Pruning and CLP (onnx_onp.baselines, the bench's defenses) end to end the same way: load, map, masked
   evaluator, defense; the ratio ONP / baseline compares the two end-to-end times (the defense-only times are in
   the JSON too);
3. measures the masks on `--test-limit` CIFAR-10 test images (CA, ASR with the fixture's trigger);
4. times masked evaluation against plain onnxruntime at that width (benchmarks/masked_eval.py, random weights).

On a shared machine wall times stretch with the load: the JSON also has process CPU seconds (all threads) for
sanitize and the baselines, and the load average. The parent prints one table over all widths; `--json` keeps
everything, rewritten after each width, and `--resume` reruns the same command keeping the widths that file
already has (a long run in several sittings). `--set search.rounds=1` (any SanitizeConfig field by dotted path,
as in benchmarks/agent_ablation.py) makes a quick, smaller run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "fixtures" / "models"
DEFAULT_WIDTHS = (8, 16, 32, 64)
TARGETS = {"onp_over_fp": 3.0, "masked_over_plain": 1.10, "w64_seconds": 600, "w64_peak_mb": 4096}


def model_for(width: int) -> Path:
    name = "resnet18_badnets_cifar10" if width == 8 else f"resnet18w{width}_badnets_cifar10"
    return MODELS / f"{name}.onnx"


class TorchClock:
    """Wall time inside torch: outermost nn.Module calls and autograd backward/grad calls (nested ones once)."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        self._saved = []

    def _timed(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            if self._depth:
                return func(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
                self._depth -= 1
        return wrapper

    def __enter__(self):
        import torch

        for owner, name in ((torch.nn.Module, "__call__"), (torch.autograd, "backward"), (torch.autograd, "grad")):
            original = getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._timed(original))
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return round(kb / 1024, 1)


# ----------------------------------------------------------------------------------------------------------
# one width, in a child process


def run_width(width: int, model: Path, args) -> dict:
    import numpy as np
    import torch

    from onnx_onp.baselines import DEFENSES
    from onnx_onp.bench import DataSplits, PeakRss
    from onnx_onp.config import SanitizeConfig, override
    from onnx_onp.data import Spec
    from onnx_onp.instrument import MaskedEvaluator
    from onnx_onp.load import load_model
    from onnx_onp.metrics import attack_scores, clean_accuracy, prepare, prepare_triggered
    from onnx_onp.neuron_map import build_neuron_map
    from onnx_onp.sanitize import parameter_count, sanitize

    spec = Spec.load(model.with_suffix(".json"))
    defense_raw, test_raw = DataSplits().defense_and_test("cifar10", args.images, args.seed, args.test_limit)
    config = override(SanitizeConfig(seed=args.seed), dict(args.set))
    out: dict = {"width": width, "model": str(model.relative_to(REPO)), "images": len(defense_raw),
                 "test_images": len(test_raw), "overrides": dict(args.set)}

    # 1. sanitize, end to end (load, map, every stage, write and check the model)
    with tempfile.TemporaryDirectory() as tmp, TorchClock() as clock, PeakRss() as above:
        start, cpu = time.perf_counter(), time.process_time()
        result = sanitize(model, defense_raw, spec.preprocess, Path(tmp) / "sanitized.onnx", config=config)
        onp_seconds, onp_cpu = time.perf_counter() - start, time.process_time() - cpu
    seconds = result.report["seconds"]
    runtime = float(seconds["onnxruntime"])
    out["onp"] = {
        "seconds": round(onp_seconds, 2), "cpu_seconds": round(onp_cpu, 2), "peak_rss_mb": _peak_rss_mb(), "peak_rss_above_start_mb": round(above.mb, 1),
        "onnxruntime_seconds": round(runtime, 2), "torch_seconds": round(clock.seconds, 2),
        "onnxruntime_share": round(runtime / onp_seconds, 3), "torch_share": round(clock.seconds / onp_seconds, 3),
        "other_share": round(1 - (runtime + clock.seconds) / onp_seconds, 3),
        "phases": {k: v for k, v in seconds.items() if k not in ("total", "onnxruntime", "onnxruntime_share")},
        "status": result.report["status"], "schedule": result.report.get("schedule"),
        "pruned_groups": int(result.mask.sum()), "provider": result.evaluator.provider,
        "torch_threads_during_run": config.runtime.torch_threads or ("all" if parameter_count(result.evaluator.lm)
                                                                     >= 1_000_000 else 1),
    }
    lm, nmap, evaluator = result.evaluator.lm, result.nmap, result.evaluator
    out.update(parameters=parameter_count(lm), neurons=nmap.num_neurons, groups=nmap.num_groups,
               prunable_groups=int(nmap.prunable.sum()))
    masks = {"none": nmap.empty_mask(), "onp": result.mask}

    # 2. the baselines, end to end the same way
    for name in ("fp", "clp"):
        defense = DEFENSES[name]
        cfg = defense.config()
        with PeakRss() as memory:
            start, cpu = time.perf_counter(), time.process_time()
            lm_b = load_model(model)
            nmap_b = build_neuron_map(lm_b)
            data = prepare(lm_b, defense_raw, spec.preprocess, what="defense data")
            ev = MaskedEvaluator(lm_b, nmap_b, provider=config.runtime.provider,
                                 extra_outputs=defense.extra_outputs(lm_b, nmap_b, cfg))
            setup = time.perf_counter() - start
            res = defense(lm_b, nmap_b, data, evaluator=ev, config=cfg)
            total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
        masks[name] = res.mask
        out[name] = {"seconds": round(total, 2), "cpu_seconds": round(total_cpu, 2),
                     "defense_seconds": round(total - setup, 2),
                     "peak_rss_above_start_mb": round(memory.mb, 1), "pruned_groups": int(np.sum(res.mask))}
        out[f"onp_over_{name}"] = round(onp_seconds / total, 2)
        out[f"onp_over_{name}_cpu"] = round(onp_cpu / max(total_cpu, 1e-9), 2)

    # 3. the masks on test data (reported, never used to decide)
    test = prepare(lm, test_raw, spec.preprocess, what="test data")
    triggered = prepare_triggered(lm, test_raw, spec, spec.preprocess)
    out["test"] = {name: {"ca": round(clean_accuracy(evaluator, test, mask), 4),
                          "asr": round(attack_scores(evaluator, triggered, spec.target, mask).asr, 4)}
                   for name, mask in masks.items()}

    # 4. masked evaluation against plain onnxruntime at this width
    if args.masked_eval:
        from benchmarks import masked_eval

        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            timing = masked_eval.main(["--width", str(width), "--images", str(args.masked_eval_images),
                                       "--repeats", str(args.repeats), "--provider", config.runtime.provider])
        out["masked_eval"] = {"images": timing["images"], "ratio_to_plain": timing["ratio_to_plain"],
                              "seconds": timing["seconds"]}
    out["torch_threads"] = torch.get_num_threads()
    return out


# ----------------------------------------------------------------------------------------------------------
# the parent: one child per width, one table


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)),
                   help="comma-separated ResNet-18 widths (default: %(default)s)")
    p.add_argument("--model", action="append", default=[], metavar="W=PATH", help="the model for width W")
    p.add_argument("--images", type=int, default=500, help="clean defense images (default: %(default)s)")
    p.add_argument("--test-limit", type=int, default=1000, help="test images for CA/ASR (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                   help="override a SanitizeConfig field by dotted path, e.g. search.rounds=1")
    p.add_argument("--masked-eval-images", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3, help="masked-evaluation timing repeats")
    p.add_argument("--no-masked-eval", dest="masked_eval", action="store_false")
    p.add_argument("--json", type=Path, help="write every number here (rewritten after each width)")
    p.add_argument("--resume", action="store_true",
                   help="keep the widths already measured in --json with the same settings; run only the others")
    p.add_argument("--one-width", type=int, help=argparse.SUPPRESS)  # the child's entry
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sets = []
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            sets.append((name, json.loads(value)))
        except json.JSONDecodeError:
            sets.append((name, value))
    args.set = sets
    args.models = {int(w): Path(path) for w, _, path in (m.partition("=") for m in args.model)}
    return args


def _child_argv(args, width: int, model: Path, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.scale", "--one-width", str(width), "--child-out", str(out),
            "--images", str(args.images), "--test-limit", str(args.test_limit), "--seed", str(args.seed),
            "--masked-eval-images", str(args.masked_eval_images), "--repeats", str(args.repeats),
            "--model", f"{width}={model}"]
    for name, value in args.set:
        argv += ["--set", f"{name}={json.dumps(value)}"]
    if not args.masked_eval:
        argv.append("--no-masked-eval")
    return argv


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def table(rows: list[dict]) -> str:
    lines = ["| width | parameters | groups | sanitize s | CPU s | peak RSS MB | onnxruntime | torch | other | FP s | CLP s "
             "| ONP / FP | ONP / CLP | masked-0 / plain | masked-r / plain | outcome | test CA | test ASR |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['width']} | {r['error']} |" + " |" * 16)
            continue
        onp, me = r["onp"], r.get("masked_eval", {}).get("ratio_to_plain", {})
        before, after = r["test"]["none"], r["test"]["onp"]
        lines.append(
            f"| {r['width']} | {r['parameters'] / 1e6:.2f} M | {r['groups']} | {onp['seconds']:.0f} | "
            f"{onp.get('cpu_seconds', float('nan')):.0f} | "
            f"{onp['peak_rss_mb']:.0f} | {_pct(onp['onnxruntime_share'])} | {_pct(onp['torch_share'])} | "
            f"{_pct(onp['other_share'])} | {r['fp']['seconds']:.1f} | {r['clp']['seconds']:.1f} | "
            f"{r['onp_over_fp']:.1f}× | {r['onp_over_clp']:.1f}× | {me.get('masked-0', float('nan')):.2f} | "
            f"{me.get('masked-r', float('nan')):.2f} | {onp['status']} | "
            f"{100 * before['ca']:.1f} → {100 * after['ca']:.1f} | {100 * before['asr']:.1f} → {100 * after['asr']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    args = _parse(argv)
    if args.one_width is not None:  # the child
        model = args.models.get(args.one_width) or model_for(args.one_width)
        result = run_width(args.one_width, model, args)
        args.child_out.write_text(json.dumps(result, indent=1))
        return result

    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    rows, started = [], time.strftime("%Y-%m-%dT%H:%M:%S%z")
    settings = {"images": args.images, "test_limit": args.test_limit, "seed": args.seed, "set": args.set,
                "masked_eval": args.masked_eval, "masked_eval_images": args.masked_eval_images,
                "repeats": args.repeats}
    done: dict[int, dict] = {}
    if args.resume and args.json and args.json.is_file():
        previous = json.loads(args.json.read_text())
        if json.loads(json.dumps(previous.get("settings"))) == json.loads(json.dumps(settings)):
            done = {r["width"]: r for r in previous["widths"] if "error" not in r}
            started = previous.get("started", started)
            print(f"resuming {args.json}: widths {', '.join(map(str, sorted(done))) or 'none'} kept", flush=True)
        else:
            print(f"{args.json} has other settings: measuring every width again", flush=True)
    command = "python -m benchmarks.scale " + " ".join(a for a in (sys.argv[1:] if argv is None else argv)
                                                       if a != "--resume")

    def save(complete: bool):
        if not args.json:
            return None
        measured = [r for r in rows if "error" not in r]
        checks = {
            "onp_within_3x_fp": all(r["onp_over_fp"] <= TARGETS["onp_over_fp"] for r in measured) if measured else None,
            "masked_within_1.10x_plain": all(r["masked_eval"]["ratio_to_plain"]["masked-0"]
                                             <= TARGETS["masked_over_plain"]
                                             for r in measured if "masked_eval" in r) if measured else None,
        }
        result = {"command": command, "started": started, "complete": complete, "settings": settings,
                  "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "load_average": os.getloadavg()},
                  "targets": TARGETS, "checks": checks, "widths": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        return result

    for width in widths:
        if width in done:
            rows.append(done[width])
            continue
        model = args.models.get(width) or model_for(width)
        if not model.is_file():
            print(f"width {width}: no model at {model.relative_to(REPO) if model.is_relative_to(REPO) else model} "
                  "(missing: train one with fixtures/zoo/train.py --arch resnet18 --width W)", flush=True)
            rows.append({"width": width, "error": "no model"})
            continue
        print(f"width {width}: {model.name} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            log = Path(tmp) / "log.txt"
            with open(log, "w") as sink:
                code = subprocess.call(_child_argv(args, width, model, out), cwd=REPO, stdout=sink,
                                       stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if code != 0 or not out.is_file():
                tail = log.read_text().strip().splitlines()[-5:]
                print(f"width {width}: failed (exit {code}):\n  " + "\n  ".join(tail), flush=True)
                rows.append({"width": width, "error": f"failed (exit {code})"})
                continue
            row = json.loads(out.read_text())
        rows.append(row)
        print(f"width {width}: sanitize {row['onp']['seconds']:.0f} s, peak {row['onp']['peak_rss_mb']:.0f} MB, "
              f"{row['onp']['status']}", flush=True)
        save(complete=False)  # a run stopped part-way keeps what it measured (--resume goes on from there)
    print()
    print(table(rows))
    measured = [r for r in rows if "error" not in r]
    result = save(complete=True)
    if result is not None:
        checks = result["checks"]
        print("\ntargets (issue 25): ONP <= 3x Fine-Pruning on every width: "
              f"{checks['onp_within_3x_fp']}; masked evaluation <= 1.10x plain onnxruntime: "
              f"{checks['masked_within_1.10x_plain']}")
        print(f"wrote {args.json}")
    return result or {"widths": measured}


if __name__ == "__main__":
    main()
