"""The Python API: ``onnx_onp.sanitize(model, data)`` and ``onnx_onp.audit(model, data)``.

The same run as `onnx-onp sanitize` / `onnx-onp audit` (the CLI calls ``run`` below with the RunOptions its flags
build), from paths, in-memory models and arrays:

    result = onnx_onp.sanitize("model.onnx", "clean.npz")     # or an onnx.ModelProto, and (x, y) arrays
    result.verdict, result.outcome, result.pruned             # 'backdoor suspected', 'sanitized', {layer: units}
    result.save("model.clean.onnx"); result.write_html("report.html")

Keywords are RunOptions' fields (max_ca_drop, rounds, steps, seed, limit, provider, fail_on, ...), with the
CLI's defaults, so a call and a command with the same settings give the same report and mask.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import onnx
import torch

from .data import Dataset, Preprocess, Spec, load_dataset
from .errors import DataError, OutputError, UsageError
from .load import load_model
from .load.loader import LoadedModel, load_model_proto
from .options import RunOptions
from .report.finish import finish_report, report_html, report_json
from .report.verdict import NOT_SANITIZED, STATUS_SANITIZED, SUSPECTED

__all__ = ["Result", "sanitize", "audit", "run", "check_target"]

# RunOptions fields the API takes as its own arguments (objects, not only paths) or that only the CLI has.
_NOT_KEYWORDS = {"command", "data_path", "output", "html_path", "report_path", "sarif_path", "preprocess_path", "spec_path",
                 "test_data", "poisoned_data", "target", "quiet", "as_json"}


@dataclass
class Result:
    """One run's outcome: the report (the CLI's JSON report, schema-valid), the pruned groups, the model."""

    report: dict
    mask: np.ndarray  # one bool per neuron group of the model's neuron map: pruned
    model: LoadedModel = field(repr=False)
    nmap: object = field(repr=False)
    evaluator: object = field(repr=False)
    check_inputs: np.ndarray = field(repr=False)  # preprocessed defense images the written model is checked on
    shrink: bool = False

    @property
    def verdict(self) -> str:
        """'backdoor suspected' or 'no backdoor evidence'."""
        return self.report["verdict"]["verdict"]

    @property
    def suspected(self) -> bool:
        return self.verdict == SUSPECTED

    @property
    def outcome(self) -> str:
        """What was done: 'sanitized', 'no backdoor evidence: nothing pruned', 'cannot sanitize ...',
        'backdoor remains', ..."""
        return self.report["status"]

    @property
    def sanitized(self) -> bool:
        """Pruned, and the final check on unseen images found neither the backdoor nor a CA cost over budget."""
        return self.outcome == STATUS_SANITIZED

    @property
    def target(self) -> int | None:
        """The suspected target class (None without a suspicion)."""
        return self.report["verdict"]["suspected_target"] if self.suspected else None

    @property
    def exit_code(self) -> int:
        """The exit code the CLI would return (by ``fail_on``)."""
        return self.report["exit_code"]

    @property
    def pruned(self) -> dict[str, list[int]]:
        """Pruned neurons by layer name."""
        return self.report["pruned"]["per_layer"]

    @property
    def warnings(self) -> list[str]:
        return self.report["warnings"]

    @property
    def pruned_model(self) -> onnx.ModelProto:
        """The model with ``mask`` applied (pruned units zeroed, or cut out with ``shrink=True``); unchecked, see
        ``save``."""
        from .export.export import shrunk_model, zeroed_model

        return (shrunk_model if self.shrink else zeroed_model)(self.model, self.nmap, self.mask)

    def save(self, path) -> Path:
        """Write the pruned model after onnxruntime has checked it against the masked evaluation. Refused
        (OutputError) when a backdoor was suspected and not removed: no pruning within the budget, or the final
        check still found it."""
        from .export import export_pruned

        if self.outcome in NOT_SANITIZED:
            raise OutputError(f"{path}: not written: {self.outcome} (a file under a sanitized name that is not "
                              "sanitized would mislead)")
        written = export_pruned(self.model, self.nmap, self.mask, path, shrink=self.shrink,
                                check_inputs=self.check_inputs, provider=self.report["config"]["runtime"]["provider"],
                                evaluator=self.evaluator)
        return written.path

    def write_json(self, path) -> None:
        from .files import atomic_write_text

        atomic_write_text(path, report_json(self.report))

    def write_sarif(self, path) -> None:
        """SARIF 2.1.0 for code scanning: one result when a backdoor is suspected (report/sarif.py)."""
        from .files import atomic_write_text
        from .report.sarif import sarif_text

        atomic_write_text(path, sarif_text([self.report]))

    def write_html(self, path) -> None:
        from .files import atomic_write_text

        atomic_write_text(path, report_html(self.report))


def sanitize(model, data, *, preprocess=None, spec=None, output=None, test_data=None, poisoned_data=None,
             target=None, progress=None, **options) -> Result:
    """Find and prune backdoor neurons, as `onnx-onp sanitize`; writes the model to ``output`` when given.

    ``model``: a path, an ``onnx.ModelProto`` or a LoadedModel (never modified). ``data``: clean labelled defense
    images: a path (.npz or image folder), a Dataset or ``(x, y)`` arrays (x: N×H×W×C raw images); a seeded draw
    of ``limit`` (default 500) is used, the CLI's. ``preprocess``: a Preprocess, dict or JSON path (default: the
    spec's, else scale 1/255 in the model's layout). ``spec``: a Spec or case JSON path. ``test_data``,
    ``poisoned_data`` + ``target``: only measured, before and after (report['audit']). Other keywords:
    RunOptions fields (max_ca_drop, rounds, steps, seed, limit, provider, shrink, fail_on, ...).
    """
    return run(model, data, _options("sanitize", output=output, **options), preprocess=preprocess, spec=spec,
               test_data=test_data, poisoned_data=poisoned_data, target=target, progress=progress)


def audit(model, data, *, preprocess=None, spec=None, test_data=None, poisoned_data=None, target=None,
          progress=None, **options) -> Result:
    """A verdict without writing a model, as `onnx-onp audit` (``detect_only=True``: detectors only).
    Arguments as ``sanitize``; ``fail_on`` defaults to 'suspected', as the CLI's."""
    options.setdefault("fail_on", "suspected")
    return run(model, data, _options("audit", **options), preprocess=preprocess, spec=spec, test_data=test_data,
               poisoned_data=poisoned_data, target=target, progress=progress)


def _options(command: str, **keywords) -> RunOptions:
    known = {f.name for f in fields(RunOptions)} - _NOT_KEYWORDS | {"output"}
    unknown = sorted(set(keywords) - known)
    if unknown:
        raise TypeError(f"{command}() got unexpected keyword(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    return RunOptions(command=command, **keywords)


def check_target(poisoned_data, target) -> None:
    """--target belongs to --poisoned-data and back."""
    if poisoned_data is not None and target is None:
        raise DataError("--poisoned-data needs --target")
    if target is not None and poisoned_data is None:
        raise UsageError("--target is the attack's target for --poisoned-data: give --poisoned-data too (a --spec "
                         "carries its own target)")


def run(model, data, options: RunOptions, *, preprocess=None, spec=None, test_data=None, poisoned_data=None,
        target=None, progress=None) -> Result:
    """One sanitize or audit run: read and check every input first (a gate fails on bad input at once, not
    after minutes of work), run the pipeline with torch's global state kept, finish the report."""
    from .sanitize import sanitize as run_pipeline

    check_target(poisoned_data, target)
    spec = _spec(spec)
    dataset = as_dataset(data, limit=options.data_limit, seed=options.seed, what="data")
    lm = as_model(model)
    pre = _preprocess(preprocess) or (spec.preprocess if spec is not None else None)
    measured = _measurement_data(lm, pre, spec, test_data, poisoned_data, target, options.seed)
    with kept_torch_state():
        result = run_pipeline(lm, dataset, pre, options.output, config=options.sanitize_config(),
                              audit=_audit_measure(measured) if measured else None, progress=progress,
                              write_unsanitized=options.fail_on == "never")
    finish_report(result.report, options.command, options.fail_on)
    from .metrics import default_preprocess, prepare

    # The images sanitize checks its written model on: the first 256 of the draw.
    check = prepare(lm, dataset.subset(np.arange(min(256, len(dataset)))), pre or default_preprocess(lm)).x
    return Result(report=result.report, mask=result.mask, model=lm, nmap=result.nmap, evaluator=result.evaluator,
                  check_inputs=check, shrink=options.shrink)


@contextlib.contextmanager
def kept_torch_state():
    """Torch's thread count and random generators (CPU, and CUDA where initialised) as the caller had them."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def as_model(model) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, onnx.ModelProto):
        return load_model_proto(model)
    if isinstance(model, (str, Path)):
        return load_model(model)
    raise TypeError(f"model: a path, an onnx.ModelProto or a LoadedModel, not {type(model).__name__}")


def as_dataset(data, *, limit: int | None = None, seed: int = 0, what: str = "data") -> Dataset:
    """A path (.npz or image folder), a Dataset, (x, y) arrays or x alone; ``limit`` draws the CLI's seeded
    subset (the same images from the arrays as from an .npz holding them)."""
    if isinstance(data, (str, Path)):
        return load_dataset(data, limit=limit, seed=seed)
    if isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, np.ndarray):
        dataset = Dataset(np.asarray(data), None, what)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (np.asarray(a) for a in data)
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{what}: labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
        dataset = Dataset(x, y.astype(np.int64), what)
    else:
        raise TypeError(f"{what}: a path, a Dataset or (x, y) arrays, not {type(data).__name__}")
    if len(dataset) == 0:
        raise DataError(f"{what}: the dataset is empty (0 images)")
    return dataset.take(limit, seed) if limit is not None else dataset


def _spec(spec) -> Spec | None:
    if spec is None or isinstance(spec, Spec):
        return spec
    if isinstance(spec, dict):
        return Spec.from_dict(spec)
    return Spec.load(spec)


def _preprocess(preprocess) -> Preprocess | None:
    if preprocess is None or isinstance(preprocess, Preprocess):
        return preprocess
    if isinstance(preprocess, dict):
        return Preprocess.from_dict(preprocess)
    return Preprocess.load(preprocess)


def _measurement_data(lm, pre, spec, test_data, poisoned_data, target, seed) -> dict:
    """The audit's test data: clean test images, and triggered ones from ``poisoned_data`` or the spec's
    trigger. Never seen by the search."""
    from .metrics import default_preprocess, prepare, prepare_triggered

    measured = {}
    pre = pre or default_preprocess(lm)
    test = as_dataset(test_data, seed=seed, what="test data") if test_data is not None else None
    if test is not None:
        measured["clean"] = prepare(lm, test, pre, what=str(test.source))
    if poisoned_data is not None:
        poisoned = as_dataset(poisoned_data, seed=seed, what="poisoned data")
        measured["triggered"] = prepare(lm, poisoned, pre, what=str(poisoned.source))
        measured["target"] = target
    elif spec is not None and spec.trigger is not None and test is not None:
        measured["triggered"] = prepare_triggered(lm, test, spec, pre)
        measured["target"] = spec.target
    if measured.get("target") is not None and not 0 <= measured["target"] < lm.num_classes:
        raise DataError(f"target {measured['target']} is out of range (the model has {lm.num_classes} classes)")
    return measured


def _audit_measure(measured):
    """The audit hook: CA and ASR on the test data before and after the chosen mask."""
    from .metrics import attack_scores, clean_accuracy

    def measure(evaluator, mask):
        out = {}
        if "clean" in measured:
            clean = measured["clean"]
            out["clean_accuracy"] = {"before": clean_accuracy(evaluator, clean),
                                     "after": clean_accuracy(evaluator, clean, mask), "samples": len(clean)}
        if "triggered" in measured:
            triggered, target = measured["triggered"], measured["target"]
            before = attack_scores(evaluator, triggered, target)
            after = attack_scores(evaluator, triggered, target, mask)
            out["attack_success_rate"] = {"before": before.asr, "after": after.asr, "samples": after.samples}
            out["robust_accuracy"] = {"before": before.ra, "after": after.ra}
        return out or None
    return measure
