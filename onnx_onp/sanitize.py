"""The whole ONP pipeline: load, map, synthesize the backdoor signal, build graphs, train the agent, decide,
write. ``sanitize()`` is what `onnx-onp sanitize` runs; every step is a stage subpackage.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .agent.policy import INITIAL_RATE, PruningPolicy
from .agent.reinforce import RewardConfig, RewardEnv, TrainConfig, train_policy
from .data import Dataset, Preprocess
from .decide.choose import choose_mask, signal_masks, signal_walk_masks
from .export import export_pruned
from .graphs import GraphConfig, batch_graphs, build_graphs
from .instrument import MaskedEvaluator
from .load import load_model
from .load.loader import LoadedModel
from .metrics import Prepared, default_preprocess, prepare
from .mirror import TorchMirror
from .neuron_map import build_neuron_map
from .progress import Silent
from .report.schema import SCHEMA_NAME, SCHEMA_VERSION
from .report.verdict import (STATUS_CLEAN, STATUS_DETECT_ONLY, STATUS_SANITIZED, STATUS_UNSANITIZABLE,
                             layer_detail, verdict_of)
from .signals.features import compute_signals
from .signals.amplification import AmplificationConfig
from .signals.amplification import scan as scan_amplification
from .signals.noise import noise_blend_probe
from .signals.perturbation import PerturbationConfig, perturb_towards, scan
from .signals.synthesis import SynthesisConfig, amplify, anomaly_indices, spatial_axes, synthesize, synthesize_blend
from .signals.thresholds import for_classes


BLEND_PROBE_MIN_SUCCESS = 0.8  # share of other classes' images the blend probe must send to the suspect to be used


@dataclass
class SanitizeConfig:
    max_ca_drop: float = 0.02
    # The decision's clean-accuracy drop over all defense images must stay within this share of max_ca_drop
    # (the held-out part alone is small and noisy; the margin is for the test set the defense data stands for).
    pooled_ca_share: float = 0.75
    holdout: float = 0.3  # share of the defense data kept out of training to check clean accuracy
    # Below it: no backdoor evidence, nothing is pruned (unless force). The three detectors' thresholds are for
    # 10 classes; with more, each is raised so a clean model is flagged as often (signals/thresholds.py).
    anomaly_threshold: float = 2.0
    # Weak evidence must be confirmed: a suspicion from the amplification detector, or from synthesis below this
    # index, stands only when the pruning search then cuts the probe's held-out ASR to at most confirm_ratio of
    # what it was. A backdoor is a shortcut a few neurons carry; a class a clean model leans towards, or a small
    # adversarial patch, is not. Measured (BENCHMARKS.md): clean ResNet-18 seeds reach synthesis 2.25 and 2.46 and
    # amplification 5.83-7.29; every backdoored model's synthesis index is 3.11 or more. The search also runs in
    # detect-only mode (nothing is written). confirm_ratio None: no confirmation.
    confirm_below: float = 3.0
    confirm_ratio: float | None = 0.5
    force: bool = False
    min_defense_accuracy: float = 0.5  # below it the report warns: wrong preprocessing or labels, most likely
    prune: bool = True  # False: stop after the detectors (a verdict only: `audit --detect-only`)
    gnn: str = "graphconv"
    prior: dict = field(default_factory=lambda: {"act_shift": 1.0, "blc": 1.0, "lipschitz": 0.5})  # policy warm start
    refine_triggers: int = 2  # fresh syntheses of the suspect's trigger used by the reward
    refine_steps: int = 300
    amplify_triggers: bool = True  # add a solid, saturated version of each refined trigger to the reward
    # ... and a whole-image pattern blended in at this alpha, towards the suspect (None: not): the probe for
    # triggers spread over the image, which a small-mask trigger approximates badly. Used only where it reaches
    # the suspect (BLEND_PROBE_MIN_SUCCESS), and re-synthesized against the pruned model after every round, as the
    # small-mask trigger is. Measured on the Blended ResNet-18: real ASR 90.68% without it (run 12), 20.80% with
    # it (run 15); 27.25% if it is not re-synthesized (benchmarks/probe_trace.py; BENCHMARKS.md).
    blend_probe_alpha: float | None = 0.05
    blend_probe_resynthesis: bool = True
    # ... and clean images with random noise blended in at this alpha, each image its own pattern (None: not):
    # a noise-blend backdoor answers to any noise of its strength, not only its own pattern. Nothing is
    # optimised, so pruning cannot fool it. Used only where it reaches the suspect (BLEND_PROBE_MIN_SUCCESS),
    # and kept at its share of the probes in every round (signals/noise.py).
    noise_probe_alpha: float | None = 0.2
    # Torch threads for synthesis and signals; None: one for small models (interpreted op by op, more threads
    # mostly spin and wait), every core from LARGE_MODEL_PARAMETERS on (their convolutions are worth splitting).
    torch_threads: int | None = None
    max_stamped: int = 300  # trigger-stamped images per reward
    max_clean: int | None = None  # clean images per training reward (None: all; the held-out check uses all)
    initial_prune_groups: float | None = None  # policy's initial expected pruned groups (None: 2% of them)
    # Signal masks the decision scores in full, picked by a first look on part of the probe (None: all of them;
    # a shortlist of 24 cost Blended its best mask: ASR 39.84% -> 86.91% in the benchmark).
    extra_shortlist: int | None = None
    # Models from LARGE_MODEL_PARAMETERS on run the lighter schedule of large_model_schedule() (cost grows
    # with the model, the 5-minute target does not); False keeps the settings as given.
    scale_to_model: bool = True
    rounds: int = 6  # prune, re-synthesize against the pruned model, prune more while it is still found
    large_model_rounds: int = 2  # ... at most this many under large_model_schedule (each costs minutes there)
    # A synthesized trigger is a backdoor's only when its mask is smaller than this share of the other classes'
    # median: for the verdict (with the anomaly index) and for "still found" after a round. The index alone is a
    # z-score, large whenever the clean classes' masks are close together: clean ResNet-18 seed 3 reached 2.46
    # with a mask 0.83 of the others'. Measured: backdoored models 0.22-0.44, clean ones 0.65-0.93 (BENCHMARKS.md).
    found_ratio: float = 0.75
    # After the rounds, give back pruned groups one at a time while the probe's ASR over all defense images stays
    # within this much of the final mask's (None: keep the rounds' mask as it is). Later rounds leave earlier
    # rounds' groups redundant: on the Blended ResNet-18 it gives back 6 of 16 groups, the 6 whose return leaves
    # the real ASR under 6% (benchmarks/mask_ablation.py).
    prune_back_tolerance: float | None = 0.02
    # ... and only a group whose return gives back at least this many defense images: one that costs no clean
    # accuracy stays pruned, as a margin against the real trigger, which the probe only approximates. Measured on
    # sashank's model (benchmarks: run 15): giving back 6 groups for 2 images of 500 raised its real ASR 7.9 -> 10.8%.
    prune_back_min_images: int = 1
    prune_back_max_clean: int | None = None  # clean defense images the prune-back scores on (None: all of them)
    # Rounds after the first compute the signals (and rank the signal masks) on the model as pruned so far, the
    # earlier rounds' groups left out; False: on the unpruned model, whose top groups the base mask already holds.
    # Measured on the Blended ResNet-18 (benchmarks/probe_trace.py): 58.95% real ASR after the prune-back with it,
    # 20.91% without, so it stays off.
    signals_of_pruned_model: bool = False
    # Candidates grown down the activation-shift and BLC rankings, skipping costly groups (decide/choose.py
    # signal_walk_masks): groups looked at per signal and round (None: no walk).
    signal_walk: int | None = 48
    # Score masks resuming part-way through the network from cached tensors where an earlier run under the same
    # mask entries left them (instrument/resume.py): the same masks, fewer layers run. None: where onnxruntime runs
    # on the CPU (on a GPU the cut tensors would cross to the host and back every run: not measured); False: every
    # run from the input. The cache is bounded at resume_cache_bytes.
    resume_evaluation: bool | None = None
    resume_cache_bytes: int = 1 << 30
    seed: int = 0
    provider: str = "auto"
    shrink: bool = False
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    # The second detector, run when trigger synthesis finds nothing (warping and whole-image triggers).
    perturbation_scan: bool = True
    perturbation_threshold: float = 3.0  # anomaly index of the target's share among the classes' shares
    # ... and the share itself: on nets where no class moves (shares of 0-14%) the index alone is noise
    perturbation_min_share: float = 0.5
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    # The third, run when neither finds anything (SIG): one group at a time amplified; the suspect's probe is
    # then its synthesized trigger, as for the first detector.
    amplification_scan: bool = True
    # Anomaly index of the target's count of settings: measured 8.47 on SIG, 3.06 on the clean ResNet-18 twin
    amplification_threshold: float = 5.0
    amplification_min_fraction: float = 0.05  # ... and its count as a share of all settings
    amplification: AmplificationConfig = field(default_factory=AmplificationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)


@dataclass
class SanitizeResult:
    mask: np.ndarray
    report: dict
    nmap: object = None
    evaluator: object = None


class PhaseTimer:
    """Seconds per pipeline phase (a phase may be entered several times: its laps add up)."""

    def __init__(self):
        self.phases: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self._start, 3)
        self._start = now


def _split(data: Prepared, holdout: float, seed: int) -> tuple[Prepared, Prepared]:
    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, int(round(len(data) * (1 - holdout))))
    return (Prepared(data.x[order[:cut]], data.y[order[:cut]]), Prepared(data.x[order[cut:]], data.y[order[cut:]]))


def sanitize(model, dataset: Dataset, preprocess: Preprocess | None, output=None, *,
             config: SanitizeConfig = SanitizeConfig(), audit=None, progress=None) -> SanitizeResult:
    """Find and prune backdoor neurons, write the model (when ``output`` is given) and a report.

    ``model``: a path, or a LoadedModel the caller has already loaded.

    ``audit(evaluator, mask)`` may add ASR numbers to the report after the decision is made (it never
    influences it). ``progress`` (see ``onnx_onp.progress``) hears about every stage.
    The model is not written when a backdoor is suspected but no pruning within the budget was found: a
    file under the sanitized name that is not sanitized would mislead whoever ships it.
    """
    progress = progress or Silent()
    timer = PhaseTimer()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    progress.stage("loading the model and the defense data")
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    nmap = build_neuron_map(lm)
    preprocess = preprocess or default_preprocess(lm)
    defense = prepare(lm, dataset, preprocess, what="defense data")
    evaluator = MaskedEvaluator(lm, nmap, provider=config.provider)
    timer.lap("load_and_map")
    mask, report = find_backdoor_mask(lm, nmap, defense, evaluator, config, layout=preprocess.layout,
                                      progress=progress, timer=timer)
    report["started_at"] = started
    if output is not None and report["status"] in (STATUS_CLEAN, STATUS_SANITIZED):
        progress.stage("writing and checking the sanitized model")
        written = export_pruned(lm, nmap, mask, output, shrink=config.shrink, check_inputs=defense.x[:256],
                                evaluator=evaluator)
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
                       timer: PhaseTimer | None = None) -> tuple[np.ndarray, dict]:
    """ONP proper, on clean defense data only: the mask to prune and the report of how it was found."""
    threads = torch.get_num_threads()
    large = _parameters(lm) >= LARGE_MODEL_PARAMETERS
    wanted = config.torch_threads or (threads if large else 1)
    scaled = large and config.scale_to_model
    if scaled:
        config = large_model_schedule(config)
    torch.set_num_threads(wanted)
    wanted_resume = evaluator.provider.startswith("CPU") if config.resume_evaluation is None \
        else config.resume_evaluation
    resuming = bool(wanted_resume and len(defense)) and evaluator.enable_resume(config.resume_cache_bytes, defense.x)
    try:
        mask, report = _find_backdoor_mask(lm, nmap, defense, evaluator, config, layout, progress, timer)
    finally:
        torch.set_num_threads(threads)
        resumed = evaluator.disable_resume() if resuming else None
    report["schedule"] = "large model" if scaled else "standard"
    if resumed is not None:
        report["resume"] = {key: resumed[key] for key in ("levels", "runs_resumed", "runs_from_input")}
    return mask, report


LARGE_MODEL_PARAMETERS = 1_000_000


def large_model_schedule(config: SanitizeConfig) -> SanitizeConfig:
    """The settings for a model from LARGE_MODEL_PARAMETERS on: where each forward pass costs ~10x a width-8
    ResNet-18's, the same search would take 15-20 minutes. Smaller synthesis batches, one refined trigger of 100
    steps, fewer images per reward, at most 8 agent steps per round, a shorter decision and one re-check round, a
    prune-back on 250 clean images; a policy that starts at a handful of groups, not 2% of them (2% of 1440 groups
    already costs most of the clean accuracy); and an amplification scan of 200 evenly spaced groups on 50 images
    (all 1440 on 100 would take ~15 minutes). Measured on the width-32 ResNet-18 (BENCHMARKS.md, run 23): 268 s,
    against 321 s with 150-step refinement, 15 agent steps and the prune-back on all 500 (run 22)."""
    return replace(config, synthesis=replace(config.synthesis, batch_size=16), refine_triggers=1,
                   refine_steps=100, max_stamped=150, max_clean=200, initial_prune_groups=8.0,
                   extra_shortlist=12, rounds=min(config.rounds, config.large_model_rounds),
                   prune_back_max_clean=250,
                   train=replace(config.train, steps=min(config.train.steps, 8), settled_patience=3),
                   amplification=replace(config.amplification, images=50, max_groups=200))


def _parameters(lm: LoadedModel) -> int:
    return int(sum(np.prod(t.dims) for t in lm.model.graph.initializer))


def _find_backdoor_mask(lm, nmap, defense, evaluator, config, layout, progress, timer):
    progress = progress or Silent()
    timer = timer or PhaseTimer()
    layout = layout or Preprocess.infer_layout(lm.input_shape)
    torch.manual_seed(config.seed)
    train, holdout = _split(defense, config.holdout, config.seed)
    mirror = TorchMirror(lm, nmap)

    progress.stage("trigger synthesis, one candidate per class", total=lm.num_classes)
    synthesis = synthesize(mirror, train.x, train.y, lm.num_classes, layout, config.synthesis,
                           progress=lambda c: progress.advance())
    timer.lap("trigger_synthesis")
    target = synthesis.suspect
    synthesis_threshold = for_classes(config.anomaly_threshold, lm.num_classes)
    perturbation_threshold = for_classes(config.perturbation_threshold, lm.num_classes)
    amplification_threshold = for_classes(config.amplification_threshold, lm.num_classes)
    suspected = synthesis.anomaly_index >= synthesis_threshold and synthesis.size_ratio < config.found_ratio
    progress.note(f"trigger synthesis: suspected target {target}, anomaly index {synthesis.anomaly_index:.2f}, "
                  f"mask {synthesis.size_ratio:.2f} of the others' "
                  f"({'backdoor suspected' if suspected else 'no backdoor evidence'})")
    axes = spatial_axes(layout)
    detector = "trigger synthesis"
    perturbation = None
    if not suspected and config.perturbation_scan:
        progress.stage("neuron-perturbation scan, one per class", total=lm.num_classes)
        perturbation = scan(mirror, nmap.num_groups, train.x, train.y, lm.num_classes, config.perturbation,
                            progress=lambda c: progress.advance())
        timer.lap("perturbation_scan")
        if (perturbation.anomaly_index >= perturbation_threshold
                and perturbation.best.share >= config.perturbation_min_share):
            suspected, target, detector = True, perturbation.suspect, "neuron perturbation"
        progress.note(f"neuron perturbation: suspected target {perturbation.suspect}, anomaly index "
                      f"{perturbation.anomaly_index:.2f} "
                      f"({'backdoor suspected' if detector == 'neuron perturbation' else 'no backdoor evidence'})")
    amplification = None
    if not suspected and config.amplification_scan:
        progress.stage("neuron-amplification scan, one group at a time")
        amplification = scan_amplification(evaluator, train.x, train.y, lm.num_classes, config.amplification,
                                           seed=config.seed)
        timer.lap("amplification_scan")
        if (amplification.anomaly_index >= amplification_threshold
                and amplification.fraction >= config.amplification_min_fraction):
            suspected, target, detector = True, amplification.suspect, "neuron amplification"
        progress.note(f"neuron amplification: suspected target {amplification.suspect}, anomaly index "
                      f"{amplification.anomaly_index:.2f} "
                      f"({'backdoor suspected' if detector == 'neuron amplification' else 'no backdoor evidence'})")
    # Others' mask norms: a trigger for the target much smaller than these means the backdoor is still there.
    others_median = float(np.median([n for c, n in enumerate(synthesis.norms) if c != target]))
    report = {
        "schema": {"name": SCHEMA_NAME, "version": SCHEMA_VERSION},
        "tool": {"name": "onnx-onp", "version": __version__},
        "model": lm.describe(), "provider": evaluator.provider, "seed": config.seed,
        "config": _config_dict(config),
        "defense_data": {"samples": len(defense), "train": len(train), "holdout": len(holdout)},
        "neuron_map": {k: v for k, v in nmap.summary().items() if k != "layers"},
        "trigger_synthesis": {"suspected_target": synthesis.suspect,
                              "anomaly_index": round(synthesis.anomaly_index, 3),
                              "threshold": round(synthesis_threshold, 3),
                              "size_ratio": round(synthesis.size_ratio, 3), "max_size_ratio": config.found_ratio,
                              "mask_l1_per_class": [round(n, 2) for n in synthesis.norms],
                              "success_per_class": [round(c.success, 3) for c in synthesis.candidates],
                              "seconds": round(synthesis.seconds, 2)},
        "detector": detector,
        "backdoor_suspected": bool(suspected),
    }
    if perturbation is not None:
        report["neuron_perturbation"] = {"suspected_target": perturbation.suspect,
                                         "anomaly_index": round(perturbation.anomaly_index, 3),
                                         "threshold": round(perturbation_threshold, 3),
                                         "min_share": config.perturbation_min_share,
                                         "epsilon": config.perturbation.epsilon,
                                         "share_per_class": [round(v, 3) for v in perturbation.shares],
                                         "seconds": round(perturbation.seconds, 2)}
    if amplification is not None:
        report["neuron_amplification"] = {"suspected_target": amplification.suspect,
                                          "anomaly_index": round(amplification.anomaly_index, 3),
                                          "threshold": round(amplification_threshold, 3),
                                          "min_fraction": config.amplification_min_fraction,
                                          "factors": list(config.amplification.factors),
                                          "settings": amplification.settings,
                                          "count_per_class": amplification.counts,
                                          "seconds": round(amplification.seconds, 2)}
    mask = nmap.empty_mask()
    triggers = []
    rounds = []
    reward_curve = []
    first = None  # the first round's policy, signals and graphs: later rounds only add to its mask
    train_result = decision = None
    # Weak suspicion needs a pruning search to be confirmed, even when nothing is to be pruned.
    weak = detector == "neuron amplification" or (
        detector == "trigger synthesis" and synthesis.anomaly_index < for_classes(config.confirm_below, lm.num_classes))
    confirm = suspected and weak and config.confirm_ratio is not None and not config.force
    act = (suspected or config.force) and (config.prune or confirm)
    by_perturbation = detector == "neuron perturbation"
    if by_perturbation:
        others = np.flatnonzero(train.y != target)
        others = np.sort(np.random.default_rng(config.seed).permutation(others)[:config.perturbation.images])
        others_t = torch.from_numpy(train.x[others])
        other_shares = [v for c, v in enumerate(perturbation.shares) if c != target]
    if act:
        # Refine the suspect's trigger from fresh starts: several triggers make a reward the agent cannot
        # satisfy by breaking one synthetic pattern only.
        progress.stage(f"refining class {target}'s {'perturbation' if by_perturbation else 'trigger'}",
                       total=config.refine_triggers)
        if by_perturbation:
            triggers.append(perturbation.best)
        for k in range(config.refine_triggers):
            if by_perturbation:
                triggers.append(perturb_towards(mirror, others_t, target, nmap.num_groups,
                                                replace(config.perturbation, seed=config.seed + 1 + k)))
                progress.advance()
                continue
            refined = synthesize(mirror, train.x, train.y, lm.num_classes, layout,
                                 _refinement(config, config.seed + 1 + k), classes=[target])
            triggers.append(refined.candidates[0])
            if config.amplify_triggers:
                triggers.append(amplify(refined.candidates[0], train.x, layout))
            progress.advance()
        if config.blend_probe_alpha is not None and not by_perturbation:
            blend = synthesize_blend(mirror, train.x, train.y, target, layout, alpha=config.blend_probe_alpha,
                                     config=_refinement(config, config.seed + 50))
            # Only a blend that reaches the target probes the backdoor (on the patch backdoors measured it does not).
            report["blend_probe"] = {"alpha": config.blend_probe_alpha, "success": round(blend.success, 3),
                                     "used": blend.success >= BLEND_PROBE_MIN_SUCCESS}
            if blend.success >= BLEND_PROBE_MIN_SUCCESS:
                triggers.append(blend)
        noise = None
        if config.noise_probe_alpha is not None:
            noise = noise_blend_probe(evaluator, train.x, train.y, target, layout, alpha=config.noise_probe_alpha,
                                      seed=config.seed + 70)
            used = noise.success >= BLEND_PROBE_MIN_SUCCESS
            report["noise_probe"] = {"alpha": config.noise_probe_alpha, "success": round(noise.success, 3),
                                     "used": used}
            progress.note(f"noise probe (alpha {config.noise_probe_alpha}): sends {100 * noise.success:.1f}% of "
                          f"other classes' images to class {target} ({'used' if used else 'not used'})")
            if used:
                triggers.append(noise)
            else:
                noise = None
        timer.lap("trigger_refinement")
        policy = None
        for round_index in range(config.rounds):
            step = f"round {round_index + 1}/{config.rounds}"
            progress.stage(f"{step}: neuron signals and graphs")
            train_env = _env(evaluator, train, triggers, target, axes, config.reward,
                             max_stamped=config.max_stamped, seed=config.seed, base_mask=mask,
                             max_clean=config.max_clean)
            hold_env = _env(evaluator, holdout, triggers, target, axes, config.reward,
                            max_stamped=config.max_stamped, seed=config.seed, base_mask=mask)
            pruned_so_far = mask if config.signals_of_pruned_model else None
            signals = compute_signals(lm, nmap, mirror, train.x, train.y, train_env.stamped_x, target,
                                      stamped_multipliers=train_env.stamped_multipliers, pruned=pruned_so_far)
            graphs = build_graphs(lm, nmap, signals, config.graph)
            batch = batch_graphs(graphs)
            if policy is None:
                prior = {signals.names.index(name): weight for name, weight in config.prior.items()}
                rate = INITIAL_RATE if config.initial_prune_groups is None else min(
                    INITIAL_RATE, config.initial_prune_groups / max(1, int(nmap.prunable.sum())))
                policy = PruningPolicy(batch.x.shape[1], nmap.num_groups, kind=config.gnn, prior=prior,
                                       initial_rate=rate)
            timer.lap("signals_and_graphs")
            progress.stage(f"{step}: training the pruning agent", total=config.train.steps)
            train_cfg = TrainConfig(**{**asdict(config.train), "seed": config.seed + round_index})
            train_result = train_policy(
                policy, batch, train_env, train_cfg,
                progress=lambda r: progress.advance(reward=r["best_reward"], ca=r["ca"], asr=r["asr"],
                                                    pruned=int(r["pruned"])))
            reward_curve += [{"round": round_index, **record} for record in train_result.history]
            timer.lap("agent_training")
            if first is None:
                first = (train_result.probabilities, signals, graphs)
            progress.stage(f"{step}: choosing the mask on held-out data")
            walked = None if config.signal_walk is None else signal_walk_masks(
                train_env, nmap, signals, max_drop=config.pooled_ca_share * config.max_ca_drop,
                max_groups=config.signal_walk, exclude=pruned_so_far)
            decision = choose_mask(train_env, hold_env, train_result.tried, train_result.probabilities,
                                   nmap.prunable, max_ca_drop=config.max_ca_drop,
                                   extra=signal_masks(nmap, signals, exclude=pruned_so_far),
                                   extra_shortlist=config.extra_shortlist,
                                   pooled_share=config.pooled_ca_share, walked=walked)
            mask = decision.mask
            timer.lap("decision")
            # Can the backdoor still be found in the pruned model? Search for it again against the pruned model.
            progress.stage(f"{step}: searching the pruned model for the backdoor again")
            new_probes = []
            keep = torch.from_numpy((~mask).astype(np.float32))
            record = {"round": round_index, "pruned_groups": int(mask.sum()), "chosen_from": decision.source,
                      "holdout_ca": decision.holdout.ca if decision.holdout else None,
                      "holdout_asr_synthesized": decision.holdout.asr if decision.holdout else None}
            if by_perturbation:
                again = perturb_towards(mirror, others_t, target, nmap.num_groups,
                                        replace(config.perturbation, seed=config.seed + 100 + round_index), keep)
                # Still an outlier against the other classes' shares in the unpruned model?
                index = float(anomaly_indices(1.0 - np.array(other_shares + [again.share]))[-1])
                still_there = index >= perturbation_threshold and again.share >= config.perturbation_min_share
                record.update(reperturbed_share=round(again.share, 3), reperturbed_anomaly_index=round(index, 3))
            else:
                again = synthesize(mirror, train.x, train.y, lm.num_classes, layout,
                                   _refinement(config, config.seed + 100 + round_index),
                                   classes=[target], keep=keep).candidates[0]
                still_there = again.success >= 0.8 and again.mask_l1 < config.found_ratio * others_median
                record.update(resynthesized_mask_l1=round(again.mask_l1, 2),
                              resynthesized_success=round(again.success, 3))
                if report.get("blend_probe", {}).get("used") and config.blend_probe_resynthesis:
                    # The blend probe too, against the pruned model: it keeps its weight among the probes.
                    blend = synthesize_blend(mirror, train.x, train.y, target, layout, alpha=config.blend_probe_alpha,
                                             config=_refinement(config, config.seed + 150 + round_index), keep=keep)
                    record.update(resynthesized_blend_success=round(blend.success, 3))
                    if blend.success >= BLEND_PROBE_MIN_SUCCESS:
                        new_probes.append(blend)
            timer.lap("resynthesis")
            rounds.append({**record, "backdoor_still_found": bool(still_there)})
            progress.note(f"{step}: {int(mask.sum())} groups pruned; re-synthesized trigger "
                          f"{'still found' if still_there else 'no longer found'}")
            if not still_there:
                break
            # The noise probe is not re-synthesized: added again, it keeps its share of the stamped images.
            triggers.extend([again] + new_probes + ([noise] if noise is not None else []))
        if config.prune_back_tolerance is not None and mask.sum() > 1:
            progress.stage("giving back pruned groups the probe does not need")
            mask, report["pruned_back"] = _prune_back(evaluator, defense, triggers, target, axes, config, mask)
            timer.lap("prune_back")
        probabilities, signals, graphs = first
        report["signals"] = {"names": list(signals.names), "graphs": len(graphs),
                             "nodes": int(sum(g.num_nodes for g in graphs)),
                             "edges": int(sum(g.edge_index.shape[1] for g in graphs))}
        report["pruned_signals"] = {nmap.label(nmap.groups[g].neurons[0]): signals.for_group(int(g))
                                    for g in np.flatnonzero(mask)}
        report["rounds"] = rounds
        report["policy_probabilities"] = [round(float(p), 4) for p in probabilities]
        report["most_affected_layer"] = layer_detail(lm, nmap, mask, probabilities, signals, graphs)
    else:
        probe = perturbation.best if by_perturbation else synthesis.candidates[target]
        hold_env = _env(evaluator, holdout, [probe], target, axes, config.reward, max_stamped=config.max_stamped,
                        seed=config.seed)
    progress.stage("checking the decision on held-out defense data")
    after_hold = hold_env.score(mask[None])[0]
    if confirm and act:
        confirmed = shortcut_confirmed(hold_env.asr0, after_hold.asr, bool(mask.any()), config.confirm_ratio)
        report["confirmation"] = {
            "detector": detector, "confirmed": confirmed, "max_ratio": config.confirm_ratio,
            "probe_asr_holdout": {"before": hold_env.asr0, "after": after_hold.asr},
            "tentative_pruned": nmap.pruned_neurons(mask)}
        if not confirmed:  # no shortcut, so no backdoor: no suspicion, nothing pruned
            suspected = act = False
            report["backdoor_suspected"] = False
            report.pop("pruned_signals", None)
            if "most_affected_layer" in report:
                report["most_affected_layer"] = None
            mask = nmap.empty_mask()
            after_hold = hold_env.score(mask[None])[0]
        probe = report["confirmation"]["probe_asr_holdout"]
        outcome = "confirmed" if confirmed else "no shortcut: no backdoor evidence"
        progress.note(f"{detector}: pruning cuts the probe's held-out ASR {100 * probe['before']:.1f}% -> "
                      f"{100 * probe['after']:.1f}% ({outcome})")
        if not config.prune:
            mask = nmap.empty_mask()
            after_hold = hold_env.score(mask[None])[0]
    report["clean_accuracy_holdout"] = {"before": hold_env.ca0, "after": after_hold.ca,
                                        "drop": round(hold_env.ca0 - after_hold.ca, 4)}
    report["synthesized_trigger_asr_holdout"] = {"before": hold_env.asr0, "after": after_hold.asr}
    # How much pruning changes the model's answers on clean images: a sanitizer should change few.
    before = evaluator.logits(holdout.x).argmax(axis=1)
    after = evaluator.logits(holdout.x, mask).argmax(axis=1)
    report["prediction_agreement_holdout"] = round(float((before == after).mean()), 4) if len(before) else 1.0
    report["warnings"] = []
    if hold_env.ca0 < config.min_defense_accuracy:
        report["warnings"].append(
            f"the model classifies only {100 * hold_env.ca0:.1f}% of the held-out defense data correctly: check the "
            f"preprocessing (--preprocess or --spec) and the labels; a verdict on data the model cannot read means "
            f"little")
    if act and mask.any() and hold_env.asr0 >= 0.5 and after_hold.asr >= 0.8 * hold_env.asr0:
        report["warnings"].append(
            f"after pruning, the synthesized trigger still sends {100 * after_hold.asr:.1f}% of held-out images to "
            f"class {target} ({100 * hold_env.asr0:.1f}% before): the backdoor is probably still in the model; "
            f"measure it with --spec or --poisoned-data before shipping")
    report["within_budget"] = bool(hold_env.ca0 - after_hold.ca <= config.max_ca_drop + 1e-9)
    report["status"] = (STATUS_CLEAN if not (suspected or config.force) else
                        STATUS_DETECT_ONLY if not config.prune else
                        STATUS_SANITIZED if mask.any() else STATUS_UNSANITIZABLE)
    report["pruned"] = {"groups": int(mask.sum()), "neurons": int(sum(len(nmap.groups[g].neurons)
                                                                      for g in np.flatnonzero(mask))),
                        "per_layer": nmap.pruned_neurons(mask),
                        "per_layer_counts": [{"layer": layer.name, "op": layer.op_type, "neurons": layer.size,
                                              "pruned": int(mask[nmap.layer_groups(layer)].sum())}
                                             for layer in nmap.layers]}
    if train_result is not None:
        report["reward_curve"] = reward_curve
        report["evaluations"] = train_env.evaluations + hold_env.evaluations
        report["decision"] = {"candidates_checked": decision.candidates_checked,
                              "within_budget": decision.within_budget}
    report["verdict"] = verdict_of(report)
    return mask, report


def _refinement(config: SanitizeConfig, seed: int) -> SynthesisConfig:
    """The synthesis settings of every search for the suspect's probe after the first look (more steps; each
    search its own seed, so the probes differ)."""
    return replace(config.synthesis, steps=config.refine_steps, seed=seed)


def shortcut_confirmed(probe_asr_before: float, probe_asr_after: float, pruned_any: bool, max_ratio: float) -> bool:
    """A backdoor is a shortcut: the groups the search prunes take most of its probe's success away."""
    return pruned_any and probe_asr_before > 0 and probe_asr_after <= max_ratio * probe_asr_before


def _prune_back(evaluator, defense: Prepared, triggers, target, axes, config: SanitizeConfig, mask: np.ndarray):
    """Greedy backward elimination: rounds add groups against each new trigger, and some of them stop being needed
    once later groups are pruned. Restore, one at a time, the group whose return gives back the most clean
    accuracy (at least ``prune_back_min_images`` images) while the probe's ASR stays within
    ``prune_back_tolerance`` of the mask it started from (all probes, all defense images)."""
    env = _env(evaluator, defense, triggers, target, axes, config.reward, max_stamped=2 * config.max_stamped,
               seed=config.seed, max_clean=config.prune_back_max_clean)
    start = env.score(mask[None])[0]
    restored, current = [], start
    while mask.sum() > 1:
        pruned = np.flatnonzero(mask)
        candidates = np.repeat(mask[None], len(pruned), axis=0)
        candidates[np.arange(len(pruned)), pruned] = False
        # 0 images: any group the probe can spare, whatever its return gives back (the rule before 1.8).
        min_gain = (config.prune_back_min_images - 0.5) / max(1, len(env.clean_y)) if config.prune_back_min_images \
            else -np.inf
        # A return that gives back too little is not allowed whatever the probe says: not run on the probe.
        outcomes = env.score(candidates, max_drop=env.ca0 - current.ca - min_gain)
        allowed = [i for i in range(len(pruned)) if outcomes[i].asr <= start.asr + config.prune_back_tolerance
                   and outcomes[i].ca - current.ca >= min_gain]
        if not allowed:
            break
        # Of the groups the probe can spare, the one whose return gives back the most clean accuracy.
        best = max(allowed, key=lambda i: (outcomes[i].ca, -outcomes[i].asr))
        mask, current = candidates[best], outcomes[best]
        restored.append(evaluator.nmap.label(evaluator.nmap.groups[int(pruned[best])].neurons[0]))
    return mask, {"restored": restored, "probe_asr": {"before": start.asr, "after": current.asr},
                  "defense_ca": {"before": start.ca, "after": current.ca}}


def _env(evaluator, part: Prepared, triggers, target, axes, reward, *, max_stamped: int, seed: int,
         base_mask=None, max_clean: int | None = None) -> RewardEnv:
    """Reward environment on one part of the defense data, probed with every trigger (or neuron perturbation)
    found so far.

    Each image gets one of the probes (in turn), so adding probes does not multiply the cost of a reward.
    """
    others = part.x[part.y != target]
    order = np.random.default_rng(seed).permutation(len(others))[:max_stamped]
    probes = [triggers[k % len(triggers)].probe(others[order[k::len(triggers)]], axes)
              for k in range(min(len(triggers), len(order)))]
    stamped = np.concatenate([x for x, _ in probes])
    multipliers = None
    if any(m is not None for _, m in probes):
        multipliers = np.concatenate([np.ones((len(x), evaluator.nmap.num_groups), np.float32) if m is None else m
                                      for x, m in probes])
    clean = np.arange(len(part))
    if max_clean is not None and max_clean < len(part):
        clean = np.sort(np.random.default_rng(seed + 1).permutation(len(part))[:max_clean])
    return RewardEnv(evaluator, part.x[clean], part.y[clean], stamped, target, reward, base_mask=base_mask,
                     stamped_multipliers=multipliers)


def _config_dict(config: SanitizeConfig) -> dict:
    out = asdict(config)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}
