"""The whole ONP pipeline, stage by stage, on clean defense data only:

    load and map -> detect -> probes -> search (rounds: agent + signal walk) -> decide (prune-back) -> verify
    -> report -> write

Each stage is a subpackage with its own config (grouped in ``config.SanitizeConfig``) and result type; this
module only runs them in order. ``sanitize()`` is what `onnx-onp sanitize` and `audit` run.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass

import numpy as np
import torch

from . import interrupts
from .config import LARGE_MODEL_PARAMETERS, SanitizeConfig, large_model_schedule
from .context import PhaseTimer, RunContext, check_defense, split_check, split_defense
from .data import Dataset, Preprocess
from .decide.prune_back import prune_back
from .detect import DETECTORS, detector_named, run_detectors, run_last_resort
from .export import export_pruned
from .instrument import MaskedEvaluator
from .load import load_model
from .load.loader import LoadedModel
from .metrics import Prepared, default_preprocess, prepare
from .mirror import TorchMirror
from .neuron_map import build_neuron_map
from .probes import PROBES, build_probes
from .progress import Silent
from .report.assemble import assemble_report
from .report.verdict import NOT_SANITIZED, STATUS_CLEAN, STATUS_SANITIZED
from .search import run_search
from .signals.synthesis import spatial_axes
from .verify import verify

__all__ = ["SanitizeConfig", "SanitizeResult", "sanitize", "find_backdoor_mask", "large_model_schedule",
           "LARGE_MODEL_PARAMETERS", "PhaseTimer"]


@dataclass
class SanitizeResult:
    mask: np.ndarray
    report: dict
    nmap: object = None
    evaluator: object = None


def sanitize(model, dataset: Dataset, preprocess: Preprocess | None, output=None, *,
             config: SanitizeConfig = SanitizeConfig(), audit=None, progress=None, detectors=None,
             probes=None, write_unsanitized: bool = False) -> SanitizeResult:
    """Find and prune backdoor neurons, write the model (when ``output`` is given) and a report.

    ``model``: a path, or a LoadedModel the caller has already loaded.

    ``audit(evaluator, mask)`` may add ASR numbers to the report after the decision is made (it never
    influences it). ``progress`` (see ``onnx_onp.progress``) hears about every stage. ``detectors`` and
    ``probes``: the lists the detect and probes stages use (default ``detect.DETECTORS``, ``probes.PROBES``).
    The model is not written when a backdoor is suspected but no pruning within the budget was found, or when the
    backdoor remains after pruning: a file under the sanitized name that is not sanitized would mislead whoever
    ships it. ``write_unsanitized`` (the CLI's ``--fail-on never``) writes the pruned model anyway.
    """
    progress = progress or Silent()
    timer = PhaseTimer()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    progress.stage("loading the model and the defense data")
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    nmap = build_neuron_map(lm)
    # Before any data is prepared or any search starts: an op the torch mirror cannot run stops here, in one line.
    mirror = TorchMirror(lm, nmap)
    preprocess = preprocess or default_preprocess(lm)
    defense = prepare(lm, dataset, preprocess, what="defense data")
    evaluator = MaskedEvaluator(lm, nmap, provider=config.runtime.provider)
    timer.lap("load_and_map")
    mask, report = find_backdoor_mask(lm, nmap, defense, evaluator, config, layout=preprocess.layout,
                                      progress=progress, timer=timer, detectors=detectors, probes=probes,
                                      mirror=mirror)
    report["started_at"] = started
    wanted = report["status"] in (STATUS_CLEAN, STATUS_SANITIZED) or \
        (write_unsanitized and report["status"] in NOT_SANITIZED and mask.any())
    if output is not None and wanted:
        progress.stage("writing and checking the sanitized model")
        written = export_pruned(lm, nmap, mask, output, shrink=config.shrink, check_inputs=defense.x[:256],
                                evaluator=evaluator, provider=config.runtime.provider)
        report["output"] = {"path": str(written.path), "shrunk": written.shrunk,
                            "max_abs_diff": written.max_abs_diff, "bytes_before": written.bytes_before,
                            "bytes_after": written.bytes_after}
        timer.lap("export")
    if audit is not None:
        progress.stage("audit: measuring on the test data")
        report["audit"] = audit(evaluator, mask)
        timer.lap("audit")
    progress.close()
    total = sum(timer.phases.values())
    report["seconds"] = {"total": round(total, 2), **timer.phases,
                         "onnxruntime": round(evaluator.seconds_in_runtime, 2),
                         "onnxruntime_share": round(evaluator.seconds_in_runtime / max(total, 1e-9), 3)}
    return SanitizeResult(mask=mask, report=report, nmap=nmap, evaluator=evaluator)


def find_backdoor_mask(lm, nmap, defense: Prepared, evaluator: MaskedEvaluator,
                       config: SanitizeConfig = SanitizeConfig(), *, layout: str | None = None, progress=None,
                       timer: PhaseTimer | None = None, detectors=None, probes=None,
                       mirror: TorchMirror | None = None) -> tuple[np.ndarray, dict]:
    """ONP proper, on clean defense data only: the mask to prune and the report of how it was found.

    Sets torch's thread count and the evaluator's resume cache for the run and restores both after it."""
    threads = torch.get_num_threads()
    large = parameter_count(lm) >= LARGE_MODEL_PARAMETERS
    scaled = large and config.runtime.scale_to_model
    if scaled:
        config = large_model_schedule(config)
    torch.set_num_threads(config.runtime.torch_threads or (threads if large else 1))
    runtime = config.runtime
    wanted_resume = evaluator.provider.startswith("CPU") if runtime.resume_evaluation is None \
        else runtime.resume_evaluation
    resuming = bool(wanted_resume and len(defense)) and evaluator.enable_resume(runtime.resume_cache_bytes, defense.x)
    try:
        ctx = _context(lm, nmap, defense, evaluator, config, layout, progress or Silent(), timer or PhaseTimer(),
                       mirror)
        mask, report = run_stages(ctx, DETECTORS if detectors is None else detectors,
                                  PROBES if probes is None else probes)
    finally:
        torch.set_num_threads(threads)
        resumed = evaluator.disable_resume() if resuming else None
    report["schedule"] = "large model" if scaled else "standard"
    if resumed is not None:
        report["resume"] = {key: resumed[key] for key in ("levels", "runs_resumed", "runs_from_input")}
    return mask, report


def _context(lm, nmap, defense, evaluator, config, layout, progress, timer, mirror=None) -> RunContext:
    layout = layout or Preprocess.infer_layout(lm.input_shape)
    torch.manual_seed(config.seed)
    searched, check = split_check(defense, config.verify.check_share, config.seed)
    train, holdout = split_defense(searched, config.decide.holdout, config.seed)
    check_defense(train, holdout)
    return RunContext(lm=lm, nmap=nmap, evaluator=evaluator, mirror=mirror or TorchMirror(lm, nmap), config=config,
                      defense=defense, train=train, holdout=holdout, layout=layout, axes=spatial_axes(layout),
                      progress=progress, timer=timer, check=check)


@dataclass
class Attempt:
    """One detection acted on: its probes, search, prune-back and verification."""
    detection: object
    built: list | None
    search: object
    pruned_back: dict | None
    verification: object

    @property
    def unconfirmed(self) -> bool:
        """A weak suspicion the pruning did not confirm: the run would say "no backdoor evidence"."""
        confirmation = self.verification.confirmation
        return confirmation is not None and not confirmation["confirmed"]


def run_stages(ctx: RunContext, detectors, probe_families) -> tuple[np.ndarray, dict]:
    """detect -> probes -> search -> decide -> verify -> report; a suspicion the pruning does not confirm counts as
    nothing found, so the last-resort detector (MM-BD) gets its turn then, as when the cascade finds nothing."""
    interrupts.checkpoint()  # before each stage: a signal swallowed inside a callback still stops the run
    detection = run_detectors(ctx, detectors)
    interrupts.checkpoint()
    attempt = act_on(ctx, detection, detectors, probe_families)
    unconfirmed = None
    if attempt.unconfirmed and not ctx.config.force:
        fallback = run_last_resort(ctx, detectors)
        if fallback is not None and fallback.suspected:
            unconfirmed = dict(attempt.verification.confirmation, superseded_by=fallback.detector)
            attempt = act_on(ctx, fallback, detectors, probe_families)
    report = assemble_report(ctx, attempt.detection, attempt.built, attempt.search, attempt.pruned_back,
                             attempt.verification)
    if unconfirmed is not None:
        report["unconfirmed_suspicion"] = unconfirmed
    return attempt.verification.mask, report


def act_on(ctx: RunContext, detection, detectors, probe_families) -> Attempt:
    config = ctx.config
    detector = detector_named(detectors, detection.detector)
    # Weak suspicion needs a pruning search to be confirmed, even when nothing is to be pruned.
    confirm = (detection.suspected and detector.needs_confirmation(ctx, detection)
               and config.verify.confirm_ratio is not None and not config.force)
    act = (detection.suspected or config.force) and (config.prune or confirm)
    mask, built, search, pruned_back = ctx.nmap.empty_mask(), None, None, None
    if act:
        built = build_probes(ctx, detection, probe_families)
        ctx.timer.lap("trigger_refinement")
        interrupts.checkpoint()
        search = run_search(ctx, detection, detector, built)
        interrupts.checkpoint()
        mask = search.mask
        if config.decide.prune_back_tolerance is not None and mask.sum() > 1:
            ctx.progress.stage("giving back pruned groups the probe does not need")
            mask, pruned_back = prune_back(ctx.evaluator, ctx.search_data, search.probes, detection.target, ctx.axes,
                                           config, mask)
            ctx.timer.lap("prune_back")
    interrupts.checkpoint()
    verification = verify(ctx, detection, search, mask, confirm=confirm, act=act, detector=detector, built=built)
    interrupts.checkpoint()
    return Attempt(detection, built, search, pruned_back, verification)


def parameter_count(lm: LoadedModel) -> int:
    return int(sum(np.prod(t.dims) for t in lm.model.graph.initializer))


class _CallableModule(types.ModuleType):
    """``onnx_onp.sanitize`` is this module (``from onnx_onp import sanitize as pipeline``,
    ``import onnx_onp.sanitize as m`` and ``from onnx_onp.sanitize import sanitize`` keep working) and, called,
    the Python API's ``onnx_onp.api.sanitize(model, data, ...)``: a package attribute cannot be both a function and
    a submodule, since importing a submodule rebinds the attribute."""

    def __call__(self, model, data, **keywords):
        from .api import sanitize as api_sanitize

        return api_sanitize(model, data, **keywords)


sys.modules[__name__].__class__ = _CallableModule
