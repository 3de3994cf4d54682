"""`onnx-onp VERB model.onnx [options]`: a thin click front end over the onnx_onp library.

Every user error becomes one line on stderr (``error: ...``) and a documented exit code; a traceback only
with --debug. Human output by default, ``--json`` for machines.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import click
import numpy as np

from onnx_onp import interrupts
from onnx_onp.errors import (EXIT_BROKEN_PIPE, EXIT_CODES, EXIT_INTERRUPTED, EXIT_TERMINATED, MaskError, OnpError,
                             Terminated, UnsupportedModelError)

EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in sorted(EXIT_CODES.items()))


def _ort_message(exc: Exception) -> str:
    """onnxruntime's message without its source paths: 'Non-zero status code ... Status Message: <what>'."""
    text = str(exc)
    return text.split("Status Message:", 1)[-1].strip() if "Status Message:" in text else text


class _Cli(click.Group):
    """Turns every failure into one line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's own usage errors become one ``error:`` line too (exit 2), not four lines of usage text."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        previous = interrupts.install()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) is not None else ""
            click.echo(f"error: {_one_line(exc.format_message())}{hint}", err=True)
            code = exc.exit_code
        except click.Abort:  # Ctrl-C before a command started (while click parsed the arguments)
            click.echo("error: interrupted", err=True)
            code = 130
        finally:
            interrupts.restore(previous)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        from onnx_onp.files import forget_written

        debug = "--debug" in sys.argv
        forget_written()  # only what this invocation writes is removed on an interrupt
        try:
            result = super().invoke(ctx)
            interrupts.checkpoint()  # a signal swallowed on the way (see onnx_onp.interrupts) still stops the run
            return result
        except OnpError as exc:
            if interrupts.pending() is not None:  # the run failed because it was interrupted: say that
                ctx.exit(_interrupted(interrupts.pending()))
            if debug:
                raise
            click.echo(f"error: {_one_line(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            if interrupts.pending() is not None:  # e.g. a gate exit reached after a swallowed signal
                ctx.exit(_interrupted(interrupts.pending()))
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): remove what this run wrote
            ctx.exit(_interrupted(exc))
        except BrokenPipeError:  # `onnx-onp inspect MODEL | head`: the reader left; nothing more to say
            _silence_stdout()
            ctx.exit(EXIT_BROKEN_PIPE)
        except MemoryError:
            if debug:
                raise
            from onnx_onp import limits

            click.echo("error: out of memory while running the model (the declared shapes passed the "
                       f"{limits.format_size(limits.current().max_memory)} cap: lower --max-memory to refuse "
                       "such models up front)", err=True)
            ctx.exit(UnsupportedModelError.exit_code)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
            if debug:
                raise
            if type(exc).__module__.startswith("onnxruntime"):  # the runtime refused to run the model's graph
                click.echo(f"error: onnxruntime cannot run this model: {_one_line(_ort_message(exc))}", err=True)
                ctx.exit(UnsupportedModelError.exit_code)
            click.echo(f"internal error: {type(exc).__name__}: {_one_line(str(exc))} "
                       "(rerun with --debug for details)", err=True)
            ctx.exit(1)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Remove the outputs this run already wrote (temporary files are gone by now), say so in one line."""
    from onnx_onp.files import remove_written

    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not stop the clean-up half way
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:
            pass
    removed = remove_written()
    terminated = isinstance(exc, Terminated)
    what = "terminated (SIGTERM)" if terminated else "interrupted (SIGINT)"
    click.echo(f"error: {what}; " + (f"removed {len(removed)} output file(s) written before it"
                                     if removed else "no output written"), err=True)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def _size(ctx, param, text: str | None) -> int | None:
    from onnx_onp import limits

    if text is None:
        return None
    try:
        return limits.parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(cls=_Cli, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--max-memory", metavar="SIZE", callback=_size, help="Refuse models whose declared tensors need more than this at "
                                                    "batch size 1 (e.g. 8G; default: half the machine's memory).")
@click.option("--max-model-size", metavar="SIZE", callback=_size, help="Refuse .onnx files larger than this (default 2G).")
@click.option("--max-nodes", type=click.IntRange(min=1), help="Refuse models with more nodes, subgraphs "
                                                               "included (default 5000).")
@click.version_option(package_name="onnx-onp")
def main(debug, max_memory, max_model_size, max_nodes):
    """Find and remove backdoor neurons in ONNX image classifiers."""
    from onnx_onp import limits

    limits.configure(max_memory=max_memory, max_model_bytes=max_model_size, max_nodes=max_nodes)


def _emit(as_json: bool, payload: dict, human) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=_json_default))
    else:
        human(payload)


def _json_default(value):
    from onnx_onp.report.finish import json_default

    return json_default(value)


def _load(model_path):
    from onnx_onp.load import load_model
    from onnx_onp.neuron_map import build_neuron_map

    lm = load_model(model_path)
    return lm, build_neuron_map(lm)


def _preprocess(lm, preprocess_path, spec):
    from onnx_onp.data import Preprocess
    from onnx_onp.metrics import default_preprocess

    if preprocess_path:
        return Preprocess.load(preprocess_path)
    if spec is not None:
        return spec.preprocess
    return default_preprocess(lm)


def _check_target(poisoned_data, target) -> None:
    from onnx_onp.api import check_target

    check_target(poisoned_data, target)


def _dataset(path, limit, seed):
    from onnx_onp.data import load_dataset

    return load_dataset(path, limit=limit, seed=seed)


data_options = [
    click.option("--preprocess", "preprocess_path", type=click.Path(dir_okay=False),
                 help="JSON with scale, mean, std, layout, resize (default: scale 1/255, layout from the model)."),
    click.option("--spec", "spec_path", type=click.Path(dir_okay=False),
                 help="Case JSON (preprocess, trigger, target), as in shared/real_models/*.json."),
    click.option("--limit", type=int, default=None, help="Use a seeded random subset of this many images."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed for --limit."),
    click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                 help="onnxruntime provider; the one that really ran is reported."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
]


def _with(options):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


# ----------------------------------------------------------------------------------------------------------


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--groups", "show_groups", is_flag=True, help="List every group of more than one neuron.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(model, show_groups, as_json):
    """Layers, neurons, groups, and what cannot be pruned and why."""
    lm, nmap = _load(model)
    summary = nmap.summary()
    payload = {"model": lm.describe(), **summary,
               "groups_detail": [{"group": g.index, "prunable": g.prunable, "size": len(g.neurons),
                                  "neurons": [nmap.label(n) for n in g.neurons], "reasons": list(g.reasons)}
                                 for g in nmap.groups if len(g.neurons) > 1]}

    def human(p):
        m = p["model"]
        click.echo(f"{m['path']}  (opset {m['opset']}, producer {m['producer'] or '?'}, {m['nodes']} nodes)")
        click.echo(f"input {m['input']['name']} {m['input']['shape']}  ->  {m['output']['classes']} classes")
        click.echo(f"{p['neurons']} neurons in {len(p['layers'])} layers; {p['groups']} groups, "
                   f"{p['prunable_groups']} prunable ({p['prunable_neurons']} neurons); "
                   f"{p['multi_neuron_groups']} groups tie several neurons (largest: {p['largest_group']})")
        click.echo("")
        width = max((len(layer["name"]) for layer in p["layers"]), default=10)
        click.echo(f"  {'#':>3}  {'layer':<{width}}  {'op':<13} {'neurons':>7} {'prunable':>8} {'tied':>5}")
        for layer in p["layers"]:
            click.echo(f"  {layer['index']:>3}  {layer['name']:<{width}}  {layer['op']:<13} {layer['neurons']:>7} "
                       f"{layer['prunable']:>8} {layer['shared_groups']:>5}")
        if p["unprunable_reasons"]:
            click.echo("\nunprunable neurons, by reason:")
            for reason, count in p["unprunable_reasons"].items():
                click.echo(f"  {count:>6}  {reason}")
        if show_groups and p["groups_detail"]:
            click.echo("\ngroups of several neurons:")
            for g in p["groups_detail"]:
                flag = "" if g["prunable"] else "  (unprunable)"
                click.echo(f"  group {g['group']} ({g['size']} neurons): {_unit_ranges(g['neurons'])}{flag}")

    _emit(as_json, payload, human)


def _unit_ranges(labels: list[str]) -> str:
    """'L:0, L:1, L:2, M:5' -> 'L:0-2, M:5' (an attention head is a run of units in each of Q, K and V)."""
    runs: list[list] = []  # [layer, first, last]
    for label in labels:
        layer, _, unit = label.rpartition(":")
        unit = int(unit)
        if runs and runs[-1][0] == layer and runs[-1][2] == unit - 1:
            runs[-1][2] = unit
        else:
            runs.append([layer, unit, unit])
    return ", ".join(f"{layer}:{a}" if a == b else f"{layer}:{a}-{b}" for layer, a, b in runs)


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(), help="Clean labelled data: .npz or image folder.")
@click.option("--poisoned-data", type=click.Path(), help="Already-triggered images (true labels) for ASR.")
@click.option("--target", type=int, help="The attack's target label (with --poisoned-data).")
@_with(data_options)
def evaluate(model, data_path, poisoned_data, target, preprocess_path, spec_path, limit, seed, provider, as_json):
    """Clean accuracy, and attack success rate when a trigger spec or poisoned set is given."""
    from onnx_onp.data import Spec
    from onnx_onp.instrument import MaskedEvaluator
    from onnx_onp.metrics import attack_scores, clean_accuracy, prepare, prepare_triggered

    _check_target(poisoned_data, target)
    start = time.perf_counter()
    lm, nmap = _load(model)
    spec = Spec.load(spec_path) if spec_path else None
    pre = _preprocess(lm, preprocess_path, spec)
    dataset = _dataset(data_path, limit, seed)
    clean = prepare(lm, dataset, pre, what=str(data_path))
    evaluator = MaskedEvaluator(lm, nmap, provider=provider)
    payload = {"model": str(model), "data": str(data_path), "samples": len(clean),
               "clean_accuracy": clean_accuracy(evaluator, clean), "provider": evaluator.provider}
    attack = None
    if poisoned_data:
        triggered = prepare(lm, _dataset(poisoned_data, limit, seed), pre, what=str(poisoned_data))
        attack = attack_scores(evaluator, triggered, target)
        payload["target"] = target
    elif spec is not None and spec.trigger is not None and spec.target is not None:
        attack = attack_scores(evaluator, prepare_triggered(lm, dataset, spec, pre), spec.target)
        payload["target"] = spec.target
    if attack is not None:
        payload.update(attack_success_rate=attack.asr, robust_accuracy=attack.ra, attack_samples=attack.samples)
    payload["seconds"] = round(time.perf_counter() - start, 3)

    def human(p):
        click.echo(f"clean accuracy        {100 * p['clean_accuracy']:6.2f}%  ({p['samples']} images)")
        if "attack_success_rate" in p:
            click.echo(f"attack success rate   {100 * p['attack_success_rate']:6.2f}%  "
                       f"({p['attack_samples']} triggered non-target images, target {p['target']})")
            click.echo(f"robust accuracy       {100 * p['robust_accuracy']:6.2f}%")
        click.echo(f"provider {p['provider']}, {p['seconds']:.1f} s")

    _emit(as_json, payload, human)


def parse_neurons(text: str) -> list[tuple[str, int]]:
    """'LAYER:U1,U2;LAYER2:U3' (LAYER a name or #index) -> [(layer, unit)]."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        layer, sep, units = part.rpartition(":")
        if not sep or not layer:
            raise MaskError(f"--neurons: '{part}' is not LAYER:UNITS (e.g. '#2:0,5' or '/fc1/Gemm:3')")
        for unit in filter(None, (u.strip() for u in units.split(","))):
            if not unit.isdigit():
                raise MaskError(f"--neurons: '{unit}' in '{part}' is not a unit number")
            pairs.append((layer, int(unit)))
    if not pairs:
        raise MaskError("--neurons: no neurons given")
    return pairs


def read_mask_file(path: str, nmap) -> np.ndarray:
    """A mask file: JSON {"pruned": {layer: [units]}} or {"groups": [indices]}, or a .npy boolean group mask."""
    file = Path(path)
    if not file.is_file():
        raise MaskError(f"{path}: no such mask file")
    if file.suffix == ".npy":
        try:
            return nmap.check_mask(np.load(file, allow_pickle=False))
        except ValueError as exc:
            raise MaskError(f"{path}: not a readable .npy mask ({exc})") from None
    try:
        content = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MaskError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(content, dict) and isinstance(content.get("pruned"), dict):
        return nmap.mask_from_neurons({k: list(v) for k, v in content["pruned"].items()})
    if isinstance(content, dict) and isinstance(content.get("groups"), list):
        mask = nmap.empty_mask()
        for index in content["groups"]:
            if not isinstance(index, int) or not 0 <= index < nmap.num_groups:
                raise MaskError(f"{path}: group {index!r} out of range (0..{nmap.num_groups - 1})")
            mask[index] = True
        return nmap.check_mask(mask)
    raise MaskError(f"{path}: expected {{\"pruned\": {{layer: [units]}}}} or {{\"groups\": [...]}}")


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--neurons", help="Neurons to prune: 'LAYER:U1,U2;LAYER2:U3' (LAYER: name or #index).")
@click.option("--mask-file", type=click.Path(dir_okay=False), help="JSON {\"pruned\": {layer: [units]}} or .npy.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the model.")
@click.option("--shrink", is_flag=True, help="Remove the pruned channels physically (smaller, faster model).")
@click.option("--data", "data_path", type=click.Path(), help="Data to check the written model on (default: random).")
@_with(data_options)
def prune(model, neurons, mask_file, output, shrink, data_path, preprocess_path, spec_path, limit, seed, provider,
          as_json):
    """Apply a given mask and write the pruned model (checked against the masked evaluation)."""
    from onnx_onp.data import Spec
    from onnx_onp.export import export_pruned
    from onnx_onp.metrics import prepare

    if bool(neurons) == bool(mask_file):
        raise click.UsageError("give exactly one of --neurons and --mask-file")
    lm, nmap = _load(model)
    mask = nmap.mask_from_neurons(parse_neurons(neurons)) if neurons else read_mask_file(mask_file, nmap)
    check = None
    if data_path:
        spec = Spec.load(spec_path) if spec_path else None
        check = prepare(lm, _dataset(data_path, limit or 256, seed), _preprocess(lm, preprocess_path, spec),
                        what=str(data_path)).x
    written = export_pruned(lm, nmap, mask, output, shrink=shrink, check_inputs=check, provider=provider)
    payload = {"model": str(model), "output": str(written.path), "shrunk": written.shrunk,
               "pruned_groups": int(mask.sum()),
               "pruned_neurons": sum(len(v) for v in written.pruned_neurons.values()),
               "pruned": written.pruned_neurons, "max_abs_diff": written.max_abs_diff,
               "check_samples": written.check_samples, "check_data": str(data_path) if data_path else "random",
               "bytes_before": written.bytes_before, "bytes_after": written.bytes_after,
               "provider": written.provider}

    def human(p):
        click.echo(f"pruned {p['pruned_neurons']} neurons in {p['pruned_groups']} groups -> {p['output']}"
                   f" ({'shrunk' if p['shrunk'] else 'zeroed'}, {p['bytes_before']:,} -> {p['bytes_after']:,} bytes)")
        for layer, units in p["pruned"].items():
            click.echo(f"  {layer}: {', '.join(map(str, units))}")
        click.echo(f"checked on {p['check_samples']} {p['check_data']} inputs: max |difference| to the masked "
                   f"evaluation {p['max_abs_diff']:.2e} ({p['provider']})")

    _emit(as_json, payload, human)


def _write_text(path: str, text: str) -> None:
    from onnx_onp.files import atomic_write_text

    atomic_write_text(path, text)


@main.command(epilog=EPILOG)
@click.option("--cases", "which", default="all", show_default=True,
              help="dev (fixtures/models: may be tuned on), test (fixtures/test_models: only reported), real, "
                   "fixtures (= every model in fixtures/models), all, or a comma list of those and case names "
                   "(e.g. tiny_badnet_cifar10).")
@click.option("--defenses", default="none,onp,clp,fp,random", show_default=True,
              help="Comma list of none, onp, clp, fp, anp, random (random runs once per other pruning defense, "
                   "with its neuron count; anp, Adversarial Neuron Pruning, is not in the default: minutes per "
                   "model on a CPU).")
@click.option("--defense-size", type=int, default=500, show_default=True,
              help="Clean training images the defenses get.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the defense data, test subset, random.")
@click.option("--draws", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run every case on this many draws of the defense data (seeds SEED .. SEED+DRAWS-1; the test "
                   "subset stays the one of SEED) and report the mean and worst per model.")
@click.option("--test-limit", type=int, default=None, help="Measure on this many seeded test images (default: all).")
@click.option("--fp-max-drop", type=float, default=0.05, show_default=True,
              help="Fine-Pruning stops before defense-data accuracy drops by more than this.")
@click.option("--clp-u", type=float, default=3.0, show_default=True, help="CLP threshold: mean + u * std.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the Markdown report here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every number as JSON here.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="onnxruntime provider; the one that really ran is reported.")
@click.option("--verdicts", is_flag=True,
              help="Instead of the defenses: the audit verdict on every case (detection and false-alarm counts).")
def bench(which, defenses, defense_size, seed, draws, test_limit, fp_max_drop, clp_u, out_path, json_path, provider,
          verdicts):
    """ONP and the baseline defenses on the fixtures and real models: CA, ASR, RA, DER, pruned, time, memory."""
    from onnx_onp.baselines import ClpConfig, FpConfig
    from onnx_onp.bench import (BenchConfig, TableWriter, UnknownCaseError, discover_cases, machine_info,
                                markdown_report, result_to_json, run_bench)

    if verdicts and draws != 1:
        raise click.UsageError("--draws applies to the defenses, not to --verdicts")
    if verdicts:
        return _bench_verdicts(which, defense_size, seed, provider, out_path, json_path)

    try:
        config = BenchConfig(defenses=tuple(filter(None, (d.strip() for d in defenses.split(",")))),
                             defense_size=defense_size, seed=seed, draws=draws, test_limit=test_limit,
                             provider=provider,
                             defense_configs={"fp": FpConfig(max_drop=fp_max_drop), "clp": ClpConfig(u=clp_u)})
        cases = discover_cases(which)
    except (ValueError, UnknownCaseError) as exc:
        raise click.UsageError(str(exc)) from None
    if not cases:
        raise click.UsageError(f"--cases {which}: no case found")
    command = (f"onnx-onp bench --cases {which} --defenses {','.join(config.defenses)} --defense-size {defense_size}"
               f" --seed {seed}" + (f" --draws {draws}" if draws != 1 else "")
               + (f" --test-limit {test_limit}" if test_limit else "")
               + (f" --fp-max-drop {fp_max_drop}" if fp_max_drop != 0.05 else "")
               + (f" --clp-u {clp_u}" if clp_u != 3.0 else "") + f" --provider {provider}")
    machine = machine_info()
    writer = TableWriter(click.echo, config, machine)
    failures = []

    def on_error(case, exc):
        failures.append(exc)
        click.echo(f"error: case {case.name}: {exc}", err=True)

    result = run_bench(cases, config, on_start=writer.case_started, on_row=writer.row, on_error=on_error)
    click.echo(f"\n{sum(len(c.rows) for c in result.cases)} rows, {len(cases)} cases, {result.seconds:.0f} s")
    if out_path:
        _write_text(out_path, markdown_report(result, machine, command=command))
    if json_path:
        _write_text(json_path, json.dumps(result_to_json(result, machine, command=command), indent=1) + "\n")
    if failures:
        sys.exit(failures[0].exit_code)


def _bench_verdicts(which, defense_size, seed, provider, out_path, json_path):
    from dataclasses import asdict

    from onnx_onp.bench import UnknownCaseError, describe_machine, discover_cases, machine_info
    from onnx_onp.bench.verdicts import run_verdicts, verdict_markdown, verdict_summary

    try:
        cases = discover_cases(which)
    except UnknownCaseError as exc:
        raise click.UsageError(str(exc)) from None
    if not cases:
        raise click.UsageError(f"--cases {which}: no case found")
    command = f"onnx-onp bench --verdicts --cases {which} --defense-size {defense_size} --seed {seed}"

    def show(row):
        click.echo(f"{row.case:<40} {'backdoored' if row.backdoored else 'clean':<10} {row.verdict:<22} "
                   f"{row.detector if row.flagged else 'none found':<19} anomaly {row.anomaly_index:6.2f}  "
                   f"target {row.suspected_target} (true "
                   f"{'-' if row.true_target is None else row.true_target})  {row.seconds:.0f} s")

    rows = run_verdicts(cases, defense_size=defense_size, seed=seed, provider=provider, on_row=show)
    summary = verdict_summary(rows)
    click.echo(f"\nflagged {summary['flagged']} of {summary['backdoored']} backdoored models; "
               f"{summary['false_alarms']} false alarms on {summary['clean']} clean models")
    machine = describe_machine(machine_info())
    if out_path:
        _write_text(out_path, verdict_markdown(rows, command=command, machine=machine))
    if json_path:
        _write_text(json_path, json.dumps({"command": command, "machine": machine, "summary": summary,
                                           "rows": [asdict(r) for r in rows]}, indent=1) + "\n")


onp_options = [
    click.option("--data", "data_path", type=click.Path(),
                 help="Clean labelled defense data (.npz or image folder); a few hundred images are enough. "
                      "Required, except for a manifest whose lines all name their data."),
    click.option("--max-ca-drop", type=float, default=2.0, show_default=True,
                 help="Clean-accuracy budget in points, checked on held-out defense data."),
    click.option("--budget", "steps", type=int, default=15, show_default=True,
                 help="Agent training steps per round (each scores --masks-per-step masks)."),
    click.option("--masks-per-step", type=int, default=8, show_default=True),
    click.option("--rounds", type=int, default=6, show_default=True,
                 help="Prune, re-synthesize the trigger against the pruned model, prune more while it is found."),
    click.option("--prune-back/--no-prune-back", default=True, show_default=True,
                 help="After the rounds, give back pruned groups the backdoor probe does not need."),
    click.option("--gnn", type=click.Choice(["graphconv", "sage", "gat"]), default="graphconv", show_default=True,
                 help="The policy's graph layers."),
    click.option("--agent", "algorithm", type=click.Choice(["reinforce", "ppo"]), default="reinforce",
                 show_default=True, help="How the policy learns from the rewards."),
    click.option("--force", is_flag=True, help="Prune even when trigger synthesis finds no backdoor evidence."),
    click.option("--resume/--no-resume", "resume", default=None,
                 help="Start masked runs part-way through the network from cached tensors: the same results, "
                      "faster, up to about 1 GiB more memory. Default: on with the CPU provider."),
    click.option("--report", "report_path", type=click.Path(dir_okay=False),
                 help="Write the JSON report here (schema: README, 'The report')."),
    click.option("--sarif", "sarif_path", type=click.Path(dir_okay=False),
                 help="Write SARIF 2.1.0 here (code scanning: one result when a backdoor is suspected)."),
    click.option("--poisoned-data", type=click.Path(), help="Triggered test images (true labels) for ASR before/after."),
    click.option("--target", type=int, help="The attack's target label (with --poisoned-data)."),
    click.option("--test-data", type=click.Path(), help="Labelled test data for CA (and, with --spec, ASR) before/after."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bars (there are none anyway when stderr is not a terminal)."),
]


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the sanitized model.")
@click.option("--shrink", is_flag=True, help="Remove the pruned channels physically.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write the HTML report here.")
@click.option("--fail-on", type=click.Choice(["suspected", "unsanitizable", "never"]), default="unsanitizable",
              show_default=True, help="Exit 10 when a backdoor is suspected (suspected), 11 when one cannot be "
                                      "pruned within the budget or remains after pruning (suspected, unsanitizable), "
                                      "or always 0 (never: the pruned model is written even then).")
@_with(onp_options)
@_with(data_options)
def sanitize(model, output, shrink, html_path, fail_on, **options):
    """Find and prune backdoor neurons with ONP; write the sanitized model and a report.

    Only the clean --data is used to decide. --spec/--poisoned-data/--test-data (audit mode) only add ASR and
    CA before and after to the report. When a backdoor is suspected but cannot be pruned within the budget, or
    still works on images the search never saw, no model is written (exit 11) unless --fail-on never.
    """
    from onnx_onp.options import RunOptions

    _run_onp(model, RunOptions(command="sanitize", output=output, shrink=shrink, html_path=html_path,
                               fail_on=fail_on, **options))


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path())
@click.option("-o", "--output", "html_path", type=click.Path(),
              help="Write the HTML report here; with a folder or manifest, the output folder (required).")
@click.option("--fail-on", type=click.Choice(["suspected", "unsanitizable", "never"]), default="suspected",
              show_default=True, help="Exit 10 when a backdoor is suspected (suspected), 11 when one cannot be "
                                      "pruned within the budget (suspected, unsanitizable), or always 0 (never).")
@click.option("--detect-only", is_flag=True,
              help="Verdict from the detectors only (trigger synthesis, then neuron perturbation, then neuron amplification); skip the pruning analysis (faster, less evidence).")
@click.option("--jobs", type=click.IntRange(min=1),
              help="Batch: models audited at once by local processes, torch threads split among them "
                   "(default: one per core).")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Batch: each model a Ray task on the cluster at ADDRESS ('auto': the one `ray start` runs here; "
                   "needs onnx-onp[ray] and the same files on every node).")
@click.option("--ray-cpus", type=click.FloatRange(min=0), default=1, show_default=True,
              help="Batch on Ray: CPUs each model's task asks for.")
@click.option("--ray-gpus", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Batch on Ray: GPUs each model's task asks for (use with --provider cuda).")
@_with(onp_options)
@_with(data_options)
def audit(model, html_path, fail_on, detect_only, jobs, ray_address, ray_cpus, ray_gpus, **options):
    """Verdict on a model without writing one: 'backdoor suspected' or 'no backdoor evidence', with evidence.

    Runs the same analysis as sanitize (trigger synthesis, then the pruning agent when a backdoor is
    suspected) and reports what was found, the neurons that carry it and how much removing them changes the
    model's answers. The input model is only read.

    MODEL may be a folder (every .onnx in it) or a .jsonl manifest (one {"model", "data", "spec",
    "preprocess", ...} per line): each model's JSON and HTML report, index.html and summary.json go to -o
    OUTDIR, and a model that fails does not stop the others (exit 12 when some failed).
    """
    from onnx_onp.batch import is_batch
    from onnx_onp.options import RunOptions

    run = RunOptions(command="audit", html_path=html_path, fail_on=fail_on, detect_only=detect_only, **options)
    if is_batch(model):
        _run_batch(model, run, jobs, ray_address, ray_cpus, ray_gpus)
        return
    if jobs is not None or ray_address:
        raise click.UsageError("--jobs and --ray are for a folder or a .jsonl manifest of models")
    _run_onp(model, run)


def _run_batch(source, options, jobs, ray_address, ray_cpus, ray_gpus) -> None:
    from onnx_onp.batch import run_batch

    if not options.html_path:
        raise click.UsageError("a batch audit needs -o OUTDIR")
    if options.report_path:
        raise click.UsageError("--report is for one model; a batch writes every report into -o OUTDIR")
    if jobs is not None and ray_address:
        raise click.UsageError("give --jobs or --ray, not both")

    def show(row):
        if not options.as_json:
            what = f"error: {row['error']}" if row["error"] else (
                f"{row['verdict']}" + (f" (target {row['target']})" if row["target"] is not None else ""))
            click.echo(f"{row['model']}: {what}  [{row['seconds']} s]")

    summary = run_batch(source, options.html_path, options, jobs=jobs, ray_address=ray_address, ray_cpus=ray_cpus,
                        ray_gpus=ray_gpus, on_row=show)
    _emit(options.as_json, summary, lambda s: click.echo(
        f"{s['models']} models: {s['suspected']} suspected, {s['failed']} not audited, {s['seconds']:.0f} s "
        f"({s['executor']}); wrote {Path(options.html_path) / 'index.html'}"))
    if summary["exit_code"]:
        sys.exit(summary["exit_code"])


def _run_onp(model, options) -> None:
    """One sanitize or audit run from its options (the Python API's run): check the inputs, run the pipeline,
    write the reports, exit with the gate's code."""
    from onnx_onp.api import run
    from onnx_onp.progress import for_terminal

    if not options.data_path:
        raise click.UsageError("Missing option '--data'.")
    for path in (options.output, options.report_path, options.html_path, options.sarif_path):
        if path and Path(path).exists() and Path(path).resolve() == Path(model).resolve():
            raise click.UsageError(f"{path} is the input model: it is never overwritten")
    progress = for_terminal(quiet=options.quiet or options.as_json)
    try:
        result = run(model, options.data_path, options, preprocess=options.preprocess_path, spec=options.spec_path,
                     test_data=options.test_data, poisoned_data=options.poisoned_data, target=options.target,
                     progress=progress)
    finally:
        progress.close()
    report = result.report
    _write_reports(report, options, progress)
    _emit(options.as_json, report, lambda r: _print_outcome(r, options.output))
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if report["exit_code"]:
        sys.exit(report["exit_code"])


def _write_reports(report, options, progress) -> None:
    from onnx_onp.report import report_html, report_json

    if options.report_path:
        _write_text(options.report_path, report_json(report))
    if options.sarif_path:
        from onnx_onp.report.sarif import sarif_text

        _write_text(options.sarif_path, sarif_text([report]))
    if options.html_path:
        progress.stage("writing the HTML report")
        _write_text(options.html_path, report_html(report))  # the page shows exactly what the JSON says
        progress.close()


def _print_outcome(r, output) -> None:
    v = r["verdict"]
    click.echo(f"verdict: {v['verdict']}  (suspected target {v['suspected_target']}, anomaly index "
               f"{v['anomaly_index']:.2f}, threshold {v['threshold']})")
    click.echo(f"outcome: {r['status']}")
    ca = r["clean_accuracy_holdout"]
    click.echo(f"held-out defense CA {100 * ca['before']:.2f}% -> {100 * ca['after']:.2f}%; "
               f"synthesized-trigger ASR {100 * r['synthesized_trigger_asr_holdout']['before']:.1f}% -> "
               f"{100 * r['synthesized_trigger_asr_holdout']['after']:.1f}%; "
               f"{100 * r['prediction_agreement_holdout']:.1f}% of held-out predictions unchanged")
    check = r.get("final_check")
    if check:
        ca = check["clean_accuracy"]
        click.echo(f"final check on {check['images']} unseen defense images: CA drop {100 * ca['drop']:.1f} points "
                   f"(upper bound {100 * ca['upper_bound']:.1f} at {100 * ca['confidence']:.0f}%, budget "
                   f"{100 * ca['budget']:.1f})")
        if ca.get("images_needed") and not check["backdoor_remains"]:  # only the bound stopped `sanitized`
            click.echo(f"  too few images to show a cost this small: at the rates seen ({ca['broken']} broken, "
                       f"{ca['fixed']} fixed) about {ca['images_needed']} check images would, i.e. --limit "
                       f"{check['defense_images_needed']} clean images")
        for item in check["residual_evidence"]:
            click.echo(f"  {item['source']}: {'FOUND' if item['found'] else 'not found'}"
                       + ("" if item["decisive"] else " (recorded, does not decide)")
                       + (f", ASR {100 * item['asr_before']:.1f}% -> {100 * item['asr_after']:.1f}%"
                          if "asr_after" in item else "")
                       + (f", target margin {item['target_margin_before']} -> {item['target_margin_after']} (runner-up "
                          f"{item['runner_up_margin']})" if "runner_up_margin" in item else ""))
    click.echo(f"pruned {r['pruned']['neurons']} neurons in {r['pruned']['groups']} groups")
    for layer, units in r["pruned"]["per_layer"].items():
        click.echo(f"  {layer}: {', '.join(map(str, units))}")
    for key, label in (("clean_accuracy", "test CA"), ("attack_success_rate", "test ASR")):
        if r.get("audit") and key in r["audit"]:
            a = r["audit"][key]
            click.echo(f"audit: {label} {100 * a['before']:.2f}% -> {100 * a['after']:.2f}%")
    if "output" in r:
        click.echo(f"wrote {r['output']['path']} (max |difference| to the masked evaluation "
                   f"{r['output']['max_abs_diff']:.1e})")
    elif output:
        click.echo(f"no model written to {output}: {r['status']}")
    s = r["seconds"]
    click.echo(f"{s['total']:.1f} s ({100 * s['onnxruntime_share']:.0f}% in onnxruntime), provider {r['provider']}; "
               f"exit code {r['exit_code']}")


@main.command("report", epilog=EPILOG)
@click.argument("report_json", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the HTML.")
def report_command(report_json, output):
    """Turn a saved JSON report (from sanitize or audit --report) into the HTML report."""
    from onnx_onp.errors import DataError
    from onnx_onp.report import validate_report
    from onnx_onp.report.html import render_html

    try:
        report = json.loads(Path(report_json).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{report_json}: not a readable JSON report ({exc})") from None
    try:
        validate_report(report)
    except Exception as exc:  # jsonschema.ValidationError: say where, in one line
        raise DataError(f"{report_json}: not an onnx-onp report: {str(exc).splitlines()[0]}") from None
    _write_text(output, render_html(report))
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()
