"""Stage: verify. What the chosen mask does on defense data the search did not train on, and the outcome.

Weak evidence (``Detector.needs_confirmation``) is confirmed here: a backdoor is a shortcut a few neurons carry,
so the pruning search must take most of its probe's held-out success away; if it does not, there was no
backdoor and nothing is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..detect import synthesis_result
from ..probes import probe_env
from ..report.verdict import STATUS_CLEAN, STATUS_DETECT_ONLY, STATUS_SANITIZED, STATUS_UNSANITIZABLE


@dataclass
class VerifyConfig:
    # Weak evidence must be confirmed: a suspicion from the amplification detector, or from synthesis below this
    # index, stands only when the pruning search then cuts the probe's held-out ASR to at most confirm_ratio of
    # what it was. A backdoor is a shortcut a few neurons carry; a class a clean model leans towards, or a small
    # adversarial patch, is not. confirm_ratio None: no confirmation.
    confirm_below: float = 3.0
    confirm_ratio: float | None = 0.5
    min_defense_accuracy: float = 0.5  # below it the report warns: wrong preprocessing or labels, most likely


@dataclass
class Verification:
    mask: np.ndarray
    suspected: bool  # after confirmation
    status: str
    holdout_ca: tuple[float, float]  # before, after
    holdout_probe_asr: tuple[float, float]
    agreement: float  # share of held-out predictions the mask leaves unchanged
    within_budget: bool
    confirmation: dict | None = None
    warnings: list[str] = field(default_factory=list)


def shortcut_confirmed(probe_asr_before: float, probe_asr_after: float, pruned_any: bool, max_ratio: float) -> bool:
    """A backdoor is a shortcut: the groups the search prunes take most of its probe's success away."""
    return pruned_any and probe_asr_before > 0 and probe_asr_after <= max_ratio * probe_asr_before


def verify(ctx, detection, search, mask: np.ndarray, *, confirm: bool, act: bool) -> Verification:
    config, nmap = ctx.config, ctx.nmap
    if search is None:
        probe = detection.result.best if detection.probe_kind == "perturbation" else \
            synthesis_result(ctx).candidates[detection.target]
        hold_env = probe_env(ctx.evaluator, ctx.holdout, [probe], detection.target, ctx.axes, config.search.reward,
                             max_stamped=config.probes.max_stamped, seed=ctx.seed)
    else:
        hold_env = search.hold_env
    ctx.progress.stage("checking the decision on held-out defense data")
    after = hold_env.score(mask[None])[0]
    suspected, confirmation = detection.suspected, None
    if confirm and act:
        confirmed = shortcut_confirmed(hold_env.asr0, after.asr, bool(mask.any()), config.verify.confirm_ratio)
        confirmation = {"detector": detection.detector, "confirmed": confirmed,
                        "max_ratio": config.verify.confirm_ratio,
                        "probe_asr_holdout": {"before": hold_env.asr0, "after": after.asr},
                        "tentative_pruned": nmap.pruned_neurons(mask)}
        ctx.progress.note(f"{detection.detector}: pruning cuts the probe's held-out ASR {100 * hold_env.asr0:.1f}% -> "
                          f"{100 * after.asr:.1f}% "
                          f"({'confirmed' if confirmed else 'no shortcut: no backdoor evidence'})")
        if not confirmed:  # no shortcut, so no backdoor: no suspicion, nothing pruned
            suspected = act = False
        if not confirmed or not config.prune:
            mask = nmap.empty_mask()
            after = hold_env.score(mask[None])[0]
    # How much pruning changes the model's answers on clean images: a sanitizer should change few.
    before_labels = ctx.evaluator.logits(ctx.holdout.x).argmax(axis=1)
    after_labels = ctx.evaluator.logits(ctx.holdout.x, mask).argmax(axis=1)
    agreement = round(float((before_labels == after_labels).mean()), 4) if len(before_labels) else 1.0
    warnings = []
    if hold_env.ca0 < config.verify.min_defense_accuracy:
        warnings.append(
            f"the model classifies only {100 * hold_env.ca0:.1f}% of the held-out defense data correctly: check the "
            f"preprocessing (--preprocess or --spec) and the labels; a verdict on data the model cannot read means "
            f"little")
    if act and mask.any() and hold_env.asr0 >= 0.5 and after.asr >= 0.8 * hold_env.asr0:
        warnings.append(
            f"after pruning, the synthesized trigger still sends {100 * after.asr:.1f}% of held-out images to "
            f"class {detection.target} ({100 * hold_env.asr0:.1f}% before): the backdoor is probably still in the "
            f"model; measure it with --spec or --poisoned-data before shipping")
    status = (STATUS_CLEAN if not (suspected or config.force) else
              STATUS_DETECT_ONLY if not config.prune else
              STATUS_SANITIZED if mask.any() else STATUS_UNSANITIZABLE)
    return Verification(mask=mask, suspected=bool(suspected), status=status,
                        holdout_ca=(hold_env.ca0, after.ca), holdout_probe_asr=(hold_env.asr0, after.asr),
                        agreement=agreement, within_budget=bool(hold_env.ca0 - after.ca <= config.max_ca_drop + 1e-9),
                        confirmation=confirmation, warnings=warnings)
