"""Batch audits: `onnx-onp audit DIR_OR_MANIFEST --data D -o OUTDIR` audits every model of a folder (its
``*.onnx`` files) or of a JSON-lines manifest, one model per line::

    {"model": "vendor/a.onnx", "data": "clean.npz", "spec": "a.json"}
    {"model": "vendor/b.onnx", "preprocess": "b_pre.json", "test_data": "test.npz"}

(keys: model, and optionally name, data, preprocess, spec, test_data, poisoned_data, target; relative paths are
resolved against the manifest's folder; the command's flags fill in what a line leaves out).

Each model is one ``api.run`` in a worker: local processes (``jobs``, torch threads split among them) or Ray
tasks (``ray_address``: every model a task with its own CPU/GPU request, on a cluster that sees the same files).
A model that fails gives a row that says why and the batch goes on; workers return the report and its HTML,
and this process writes them, the SARIF log, ``summary.json`` and ``index.html``.
"""

from __future__ import annotations

import html
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

from .errors import BATCH_SOME_FAILED, DataError, OnpError, OutputError, UsageError
from .files import atomic_write_text
from .options import RunOptions

MANIFEST_KEYS = ("model", "name", "data", "preprocess", "spec", "test_data", "poisoned_data", "target")
_PATH_KEYS = ("model", "data", "preprocess", "spec", "test_data", "poisoned_data")


def is_batch(source) -> bool:
    path = Path(source)
    return path.is_dir() or path.suffix == ".jsonl"


def read_jobs(source, options: RunOptions) -> list[dict]:
    """One job per model: its display path, absolute paths for the worker, its name in OUTDIR."""
    source = Path(source)
    if source.is_dir():
        lines = [{"model": str(p)} for p in sorted(source.glob("*.onnx"))]
        base = Path.cwd()
        if not lines:
            raise DataError(f"{source}: no .onnx files in the folder")
    else:
        lines, base = _read_manifest(source), source.parent
    defaults = {"data": options.data_path, "preprocess": options.preprocess_path, "spec": options.spec_path,
                "test_data": options.test_data, "poisoned_data": options.poisoned_data, "target": options.target}
    jobs, names = [], set()
    for number, line in enumerate(lines, 1):
        job = {**defaults, **{k: v for k, v in line.items() if v is not None}}
        if job["data"] is None:
            raise UsageError(f"{source}: line {number} ({job['model']}): no data: give --data or a 'data' key")
        name = job.get("name") or Path(job["model"]).stem
        while name in names:
            name = f"{name}_{number}"
        names.add(name)
        given = {k: line[k] for k in _PATH_KEYS if line.get(k) is not None}
        absolute = {k: str((base / v).resolve()) if k in given else str(Path(v).resolve())
                    for k, v in job.items() if k in _PATH_KEYS and v is not None}
        jobs.append({"name": name, "display": str(job["model"]), "target": job.get("target"), **absolute})
    return jobs


def _read_manifest(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the manifest ({exc})") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: not JSON ({exc.msg})") from None
        if not isinstance(line, dict) or not isinstance(line.get("model"), str):
            raise DataError(f"{path}: line {number}: expected an object with a 'model' path")
        unknown = sorted(set(line) - set(MANIFEST_KEYS))
        if unknown:
            raise DataError(f"{path}: line {number}: unknown key(s) {', '.join(unknown)} "
                            f"(known: {', '.join(MANIFEST_KEYS)})")
        lines.append(line)
    if not lines:
        raise DataError(f"{path}: the manifest lists no model")
    return lines


def _row(job: dict, **values) -> dict:
    return {"name": job["name"], "model": job["display"], "verdict": None, "target": None, "detector": None,
            "anomaly_index": None, "asr_proxy": None, "outcome": None, "exit_code": None, "error": None,
            "seconds": None, "report": None, "html": None, **values}


def audit_one(job: dict, options: dict, threads: int | None = None) -> dict:
    """Audit one model (in a worker): its summary row, and its report and HTML page when it ran. ``threads``:
    torch's threads in this worker (its share of the cores); the pipeline still uses one for a small model."""
    from .api import run
    from .report.finish import report_html

    if threads:
        _worker_init(threads)
    started = time.perf_counter()
    row = _row(job)
    report = page = None
    try:
        opts = replace(RunOptions(**options), data_path=job["data"])
        result = run(job["model"], job["data"], opts, preprocess=job.get("preprocess"), spec=job.get("spec"),
                     test_data=job.get("test_data"), poisoned_data=job.get("poisoned_data"), target=job.get("target"))
        report = json.loads(json.dumps(result.report, default=_plain))
        report["model"]["path"] = job["display"]  # as the user named it, not the worker's absolute path
        page = report_html(report)
        verdict = report["verdict"]
        row.update(verdict=verdict["verdict"], target=result.target, detector=verdict.get("detector"),
                   anomaly_index=verdict["anomaly_index"], outcome=report["status"], exit_code=report["exit_code"],
                   asr_proxy=report["synthesized_trigger_asr_holdout"], sha256=report["model"]["sha256"],
                   pruned_neurons=report["pruned"]["neurons"])
    except OnpError as exc:
        row.update(error=str(exc), exit_code=exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - one model's bug must not stop the batch; its row says what happened
        row.update(error=f"internal error: {type(exc).__name__}: {exc}", exit_code=1)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return {"row": row, "report": report, "html": page}


def _plain(value):
    from .report.finish import json_default

    return json_default(value)


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_local(jobs: list[dict], options: RunOptions, workers: int, on_done):
    """Up to ``workers`` processes (spawned: a forked torch can deadlock), each with its share of the cores."""
    plain = asdict(options)
    if workers == 1:  # here, with torch as the caller set it
        for job in jobs:
            on_done(audit_one(job, plain))
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(audit_one, job, plain): job for job in jobs}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker killed (out of memory, signal): the row says so
                result = {"row": _row(futures[future], error=f"worker died: {type(exc).__name__}: {exc}",
                                      exit_code=1), "report": None, "html": None}
            on_done(result)


def run_ray(jobs: list[dict], options: RunOptions, address: str, cpus: float, gpus: float, on_done):
    """Every model a Ray task asking for ``cpus`` CPUs and ``gpus`` GPUs, on the cluster at ``address``."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs ray: pip install 'onnx-onp[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise UsageError(f"--ray {address}: no Ray cluster there ({str(exc).splitlines()[0]})") from None
    plain = asdict(options)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(audit_one)
    pending = {task.remote(job, plain, max(1, int(cpus))): job for job in jobs}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(done[0])
        try:
            on_done(ray.get(done[0]))
        except Exception as exc:  # noqa: BLE001 - a lost worker or node: the model's row says so
            on_done({"row": _row(job, error=f"ray: {type(exc).__name__}: {str(exc).splitlines()[0]}", exit_code=1),
                     "report": None, "html": None})


def batch_exit_code(rows: list[dict]) -> int:
    """12 when some model could not be audited; else the highest gate code (11, 10) of the models; else 0."""
    if any(r["error"] for r in rows):
        return BATCH_SOME_FAILED
    return max((r["exit_code"] or 0 for r in rows), default=0)


def write_outputs(outdir: Path, rows: list[dict], reports: list[dict], meta: dict, sarif_path=None) -> dict:
    """summary.json, index.html and the SARIF log (one run over all models); rows in the jobs' order."""
    from .report.sarif import sarif_text

    failures = [{"model": r["model"], "error": r["error"]} for r in rows if r["error"]]
    summary = {**meta, "models": len(rows), "failed": len(failures),
               "suspected": sum(r["verdict"] == "backdoor suspected" for r in rows),
               "exit_code": batch_exit_code(rows), "rows": rows}
    atomic_write_text(outdir / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(outdir / "index.html", index_html(summary))
    if sarif_path:
        atomic_write_text(sarif_path, sarif_text(reports, failures))
    return summary


def index_html(summary: dict) -> str:
    e = html.escape
    head = ("model", "verdict", "suspected target", "detector", "synthesized-trigger ASR (proxy)", "outcome",
            "seconds", "error")
    body = []
    for r in summary["rows"]:
        asr = r.get("asr_proxy") or {}
        proxy = f"{100 * asr['before']:.1f}% &rarr; {100 * asr['after']:.1f}%" if asr else ""
        link = f"<a href='{e(r['name'])}.html'>{e(r['model'])}</a>" if not r["error"] else e(r["model"])
        colour = "#d62728" if r["error"] or r["verdict"] == "backdoor suspected" else "#2ca02c"
        cells = (link, f"<b style='color:{colour}'>{e(r['verdict'] or 'not audited')}</b>",
                 e(str("" if r["target"] is None else r["target"])), e(r.get("detector") or ""), proxy,
                 e(r.get("outcome") or ""), e(str(r["seconds"] if r["seconds"] is not None else "")),
                 e(r["error"] or ""))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>onnx-onp batch audit</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
            f"<h1>onnx-onp audit: {summary['models']} models</h1>"
            f"<p>{summary['suspected']} with a suspected backdoor, {summary['failed']} not audited; "
            f"{summary['seconds']:.0f} s with {e(summary['executor'])}; exit code {summary['exit_code']}.</p>"
            "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(body)
            + "</table></body></html>\n")


def run_batch(source, outdir, options: RunOptions, *, jobs: int | None = None, ray_address: str | None = None,
              ray_cpus: float = 1, ray_gpus: float = 0, on_row=None) -> dict:
    """Audit every model of ``source`` into ``outdir``; returns the summary (its ``exit_code`` per
    ``batch_exit_code``)."""
    outdir = Path(outdir)
    work = read_jobs(source, options)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{outdir}: cannot create the output folder ({exc.strerror})") from None
    results = {}

    def done(result):
        row = result["row"]
        if result["report"] is not None:
            atomic_write_text(outdir / f"{row['name']}.json", json.dumps(result["report"], indent=2) + "\n")
            atomic_write_text(outdir / f"{row['name']}.html", result["html"])
            row.update(report=f"{row['name']}.json", html=f"{row['name']}.html")
        results[row["name"]] = result
        if on_row:
            on_row(row)

    started = time.perf_counter()
    workers = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    if ray_address:
        run_ray(work, options, ray_address, ray_cpus, ray_gpus, done)
        executor = f"ray ({ray_address}, {ray_cpus:g} CPU, {ray_gpus:g} GPU per model)"
    else:
        run_local(work, options, workers, done)
        executor = f"{workers} local process{'es' if workers > 1 else ''}"
    ordered = [results[job["name"]] for job in work]
    meta = {"command": options.command, "source": str(source), "executor": executor,
            "seconds": round(time.perf_counter() - started, 2)}
    return write_outputs(outdir, [r["row"] for r in ordered], [r["report"] for r in ordered if r["report"]], meta,
                         options.sarif_path)
