"""A seeded mutation fuzzer over the CLI: hostile and broken model files must give a documented exit code and
one `error:` line, leave no output, never modify the input, write nothing outside the output folder, and stay
within a time and a memory cap.

    python -m benchmarks.fuzz --n 1000 --seed 0 [--commands inspect,evaluate,prune,audit] [--audit-every 1]

Each case is a tiny valid classifier (fixtures/hostile.py) mutated by one family of
benchmarks/fuzz_mutations.py, chosen round-robin, every choice drawn from (seed, case index). The commands
run in-process (click's CliRunner) in a worker subprocess, which keeps a thousand runs fast (no interpreter and
onnxruntime start per run) while the parent enforces the caps from outside: a run past --time-cap, or a worker
whose resident memory passes --memory-cap, is killed and counted, and a fresh worker takes the next run. The
worker's file descriptor 2 goes to a file per run, so onnxruntime's own C++ log lines are seen too. Every run
gets ``--max-memory 1G`` (the tool's own cap on what a model may declare), so that the memory cap measures the
tool, not the machine.

Prints one summary line and writes the details to --out (default benchmarks/results/fuzz.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OK_CODES = {0}
GATE_CODES = {10, 11}  # audit verdicts: a success with a report
ERROR_CODES = {2, 3, 4, 5, 6, 7, 8}  # documented errors (onnx_onp.errors.EXIT_CODES); 1 is a bug
COMMANDS = ("inspect", "evaluate", "prune", "audit")
TOOL_MEMORY_CAP = "1G"


@dataclass
class Run:
    case: int
    family: str
    detail: str
    command: str
    code: int | None = None
    seconds: float = 0.0
    rss_mb: int = 0
    problems: list = field(default_factory=list)
    stderr: str = ""


# -- cases ----------------------------------------------------------------------------------------------------


def make_case(seed: int, index: int, root: Path) -> tuple[str, str, Path, Path]:
    """(family, detail, input folder, model path) of case ``index``, written under ``root``."""
    from benchmarks.fuzz_mutations import FAMILIES, base_model

    names = sorted(FAMILIES)
    family = names[(index + seed) % len(names)]
    rng = np.random.default_rng([seed, index])
    folder = root / f"case{index:05d}" / "in"
    folder.mkdir(parents=True)
    try:
        path, detail = FAMILIES[family](rng, base_model(rng), folder)
    except Exception as exc:  # noqa: BLE001 - a mutation that cannot apply to this model: the plain model
        from benchmarks.fuzz_mutations import MODEL

        path, detail = folder / MODEL, f"mutation not applicable ({type(exc).__name__}); unmutated"
        if not path.exists() and not path.is_symlink():
            path.write_bytes(base_model(rng).SerializeToString())
    return family, detail, folder, path


def command_args(command: str, model: Path, data: Path, out: Path, rng) -> tuple[list[str], list[Path]]:
    """The CLI arguments of one run and the files it may leave on success."""
    common = ["--max-memory", TOOL_MEMORY_CAP]
    if command == "inspect":
        return common + ["inspect", str(model)] + (["--json"] if rng.random() < 0.3 else []), []
    if command == "evaluate":
        return common + ["evaluate", str(model), "--data", str(data)], []
    if command == "prune":
        output = out / "pruned.onnx"
        args = common + ["prune", str(model), "--neurons", f"#{int(rng.integers(0, 3))}:{int(rng.integers(0, 3))}",
                         "-o", str(output)] + (["--shrink"] if rng.random() < 0.5 else [])
        return args, [output]
    html, report = out / "audit.html", out / "audit.json"
    return common + ["audit", str(model), "--data", str(data), "--detect-only", "--limit", "60",
                     "-o", str(html), "--report", str(report)], [html, report]


def snapshot(folder: Path) -> dict[str, str]:
    """Name -> content hash of everything in a folder, without following links or opening special files."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            state[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[str(path)] = f"mode:{info.st_mode:o}"
    return state


# -- the worker: runs commands in-process, one JSON line per run ---------------------------------------------


def worker() -> None:
    from click.testing import CliRunner

    from onnx_onp_cli.main import main

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # anything written to the real stdout would corrupt the protocol
    for line in sys.stdin:
        task = json.loads(line)
        with open(task["fd2"], "wb") as capture:
            os.dup2(capture.fileno(), 2)
        os.chdir(task["cwd"])
        start = time.perf_counter()
        result = CliRunner().invoke(main, task["args"])
        seconds = time.perf_counter() - start
        os.dup2(devnull, 2)
        code = result.exit_code
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            code = -1  # an exception escaped the CLI: counted as a crash
        protocol.write(json.dumps({"code": code, "stderr": result.stderr, "seconds": seconds,
                                   "escaped": repr(result.exception) if code == -1 else ""}) + "\n")


class Worker:
    """The parent's handle on one worker subprocess, restarted after a kill."""

    def __init__(self):
        self.proc = None

    def start(self):
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fuzz", "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     start_new_session=True)

    def rss_mb(self) -> int:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            return int(status.split("VmRSS:")[1].split()[0]) // 1024
        except (OSError, IndexError, ValueError):
            return 0

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def run(self, task: dict, time_cap: float, memory_cap_mb: int) -> tuple[dict | None, str, int]:
        """(reply or None, why it failed: '', 'timeout', 'memory' or 'crash', peak RSS in MB)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()
        deadline, peak = time.monotonic() + time_cap + 5, 0  # + 5 s: the worker's own bookkeeping
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            peak = max(peak, self.rss_mb())
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    self.kill()
                    return None, "crash", peak
                return json.loads(line), "", peak
            if peak > memory_cap_mb:
                self.kill()
                return None, "memory", peak
            if time.monotonic() > deadline:
                self.kill()
                return None, "timeout", peak


# -- checks -------------------------------------------------------------------------------------------------


def check_run(run: Run, reply: dict | None, failure: str, fd2: Path, out: Path, expected: list[Path],
              inputs_before: dict, inputs_after: dict, cwd: Path, time_cap: float) -> None:
    """Fill run.problems with every broken promise of one run."""
    if failure:
        run.problems.append(failure)
        return
    run.code, run.stderr, run.seconds = reply["code"], reply["stderr"], reply["seconds"]
    if run.code == -1:
        run.problems.append("crash")
        run.stderr = reply["escaped"]
    elif run.code == 1:
        run.problems.append("internal_error")
    elif run.code not in OK_CODES | ERROR_CODES | (GATE_CODES if run.command == "audit" else set()):
        run.problems.append("undocumented_exit_code")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    success = run.code in OK_CODES | GATE_CODES
    if success and any(not line.startswith("warning: ") for line in lines):
        run.problems.append("stray_stderr")
    if not success and run.code not in (-1, 1) and (len(lines) != 1 or not lines[0].startswith("error: ")):
        run.problems.append("not_one_error_line")
    if fd2.exists() and fd2.stat().st_size:
        run.problems.append("stray_stderr_fd")
        run.stderr += " | fd2: " + fd2.read_text(errors="replace")[:300]
    left = sorted(p.name for p in out.iterdir())
    allowed = {p.name for p in expected} if success else set()
    if set(left) - allowed:
        run.problems.append("output_left" if not success else "stray_output")
    if inputs_before != inputs_after:
        run.problems.append("input_modified")
    if any(cwd.iterdir()):
        run.problems.append("wrote_outside_output")
    if run.seconds > time_cap:
        run.problems.append("timeout")


def run_case(index: int, args, root: Path, data: Path, worker: Worker, commands: list[str]) -> list[Run]:
    family, detail, folder, model = make_case(args.seed, index, root)
    rng = np.random.default_rng([args.seed, index, 1])
    runs = []
    for command in commands:
        out = folder.parent / f"out_{command}"
        cwd = folder.parent / f"cwd_{command}"
        out.mkdir()
        cwd.mkdir()
        fd2 = folder.parent / f"fd2_{command}.txt"
        cli_args, expected = command_args(command, model, data, out, rng)
        before = snapshot(folder) | snapshot(data.parent)
        reply, failure, peak = worker.run({"args": cli_args, "cwd": str(cwd), "fd2": str(fd2)}, args.time_cap,
                                          args.memory_cap_mb)
        run = Run(case=index, family=family, detail=detail, command=command, rss_mb=peak)
        check_run(run, reply, failure, fd2, out, expected, before, snapshot(folder) | snapshot(data.parent), cwd,
                  args.time_cap)
        runs.append(run)
    return runs


def case_commands(index: int, args) -> list[str]:
    commands = [c for c in args.commands.split(",") if c]
    if "audit" in commands and index % args.audit_every:
        commands.remove("audit")  # audit (trigger synthesis) is the slow command: every --audit-every-th case
    return commands


# -- summary ----------------------------------------------------------------------------------------------


PROBLEMS = ("internal_error", "crash", "undocumented_exit_code", "not_one_error_line", "stray_stderr",
            "stray_stderr_fd", "output_left", "stray_output", "input_modified", "wrote_outside_output", "timeout",
            "memory")


def summarize(runs: list[Run], args, seconds: float) -> dict:
    counts = {p: sum(p in r.problems for r in runs) for p in PROBLEMS}
    codes: dict[str, dict[str, int]] = {}
    for r in runs:
        per = codes.setdefault(r.command, {})
        per[str(r.code)] = per.get(str(r.code), 0) + 1
    families: dict[str, int] = {}
    for r in runs:
        if r.command == runs[0].command:
            families[r.family] = families.get(r.family, 0) + 1
    bad = [r for r in runs if r.problems]
    line = (f"fuzz: {args.n} cases (seed {args.seed}), {len(runs)} runs in {seconds:.0f} s: "
            f"{counts['internal_error']} internal errors, {counts['crash']} crashes, "
            f"{counts['undocumented_exit_code']} undocumented exit codes, "
            f"{counts['not_one_error_line'] + counts['stray_stderr'] + counts['stray_stderr_fd']} multi-line/stray "
            f"stderr, {counts['output_left'] + counts['stray_output']} outputs left, {counts['input_modified']} "
            f"inputs modified, {counts['wrote_outside_output']} writes outside, {counts['timeout']} over "
            f"{args.time_cap:.0f} s, {counts['memory']} over {args.memory_cap_mb} MB; slowest run "
            f"{max((r.seconds for r in runs), default=0):.1f} s, peak worker RSS "
            f"{max((r.rss_mb for r in runs), default=0)} MB")
    return {"summary": line, "command": " ".join(["python -m benchmarks.fuzz"] + sys.argv[1:]),
            "seed": args.seed, "cases": args.n, "runs": len(runs), "seconds": round(seconds, 1),
            "problems": counts, "exit_codes": codes, "families": families, "time_cap_s": args.time_cap,
            "memory_cap_mb": args.memory_cap_mb, "tool_max_memory": TOOL_MEMORY_CAP,
            "failures": [r.__dict__ for r in bad[:100]]}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index (to rerun a slice)")
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--audit-every", type=int, default=1, help="audit only every k-th case")
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--memory-cap-mb", type=int, default=3072, help="worker resident memory")
    parser.add_argument("--out", default="benchmarks/results/fuzz.json")
    parser.add_argument("--keep", action="store_true", help="keep the case folders (printed)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def fuzz(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="onnx-onp-fuzz-"))
    data_folder = root / "data"
    data_folder.mkdir()
    data = data_folder / "clean.npz"
    rng = np.random.default_rng(args.seed)
    np.savez(data, x=rng.integers(0, 256, (90, 8, 8, 3), dtype=np.uint8), y=np.arange(90) % 3)
    worker, runs, start = Worker(), [], time.perf_counter()
    try:
        for index in range(args.start, args.start + args.n):
            runs += run_case(index, args, root, data, worker, case_commands(index, args))
            if not args.keep:
                shutil.rmtree(root / f"case{index:05d}", ignore_errors=True)
    finally:
        worker.kill()
        if args.keep:
            print(f"cases kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return summarize(runs, args, time.perf_counter() - start)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker()
        return 0
    result = fuzz(args)
    print(result["summary"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if any(result["problems"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
