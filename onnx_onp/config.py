"""Every setting of the ONP pipeline: one small config per stage, grouped in ``SanitizeConfig``.

Plain dataclasses with defaults (as scikit-learn estimators keep their parameters): change one with
``dataclasses.replace(config, decide=replace(config.decide, max_ca_drop=0.03))``. ``seed`` makes a run
repeatable: the same seed gives the same pruned neurons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .decide import DecideConfig
from .detect import DetectConfig
from .probes import ProbeConfig
from .search import SearchConfig
from .verify import VerifyConfig


@dataclass
class RuntimeConfig:
    provider: str = "auto"  # onnxruntime provider: auto, cpu or cuda
    # Torch threads for synthesis and signals; None: one for small models (interpreted op by op, more threads
    # mostly spin and wait), every core from LARGE_MODEL_PARAMETERS on (their convolutions are worth splitting).
    torch_threads: int | None = None
    # Models from LARGE_MODEL_PARAMETERS on run the lighter schedule of large_model_schedule() (cost grows
    # with the model, the 5-minute target does not); False keeps the settings as given.
    scale_to_model: bool = True
    # Score masks resuming part-way through the network from cached tensors where an earlier run under the same
    # mask entries left them (instrument/resume.py): the same masks, fewer layers run. None: where onnxruntime runs
    # on the CPU (on a GPU the cut tensors would cross to the host and back every run: not measured); False: every
    # run from the input. The cache is bounded at resume_cache_bytes.
    resume_evaluation: bool | None = None
    resume_cache_bytes: int = 1 << 30


@dataclass
class SanitizeConfig:
    seed: int = 0
    prune: bool = True  # False: stop after the detectors (a verdict only: `audit --detect-only`)
    force: bool = False  # prune even when no detector suspects a backdoor
    shrink: bool = False  # remove pruned channels physically when writing
    detect: DetectConfig = field(default_factory=DetectConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @property
    def max_ca_drop(self) -> float:
        return self.decide.max_ca_drop


LARGE_MODEL_PARAMETERS = 1_000_000


def large_model_schedule(config: SanitizeConfig) -> SanitizeConfig:
    """The settings for a model from LARGE_MODEL_PARAMETERS on: where each forward pass costs ~10x a width-8
    ResNet-18's, the same search would take 15-20 minutes. Smaller synthesis batches, one refined trigger of 100
    steps, fewer images per reward, at most 8 agent steps per round, a shorter decision and at most
    ``large_model_rounds`` rounds, a prune-back on 250 clean images; a policy that starts at a handful of groups,
    not 2% of them (2% of 1440 groups already costs most of the clean accuracy); and an amplification scan of 200
    evenly spaced groups on 50 images (all 1440 on 100 would take ~15 minutes)."""
    detect, probes, search, decide = config.detect, config.probes, config.search, config.decide
    return replace(
        config,
        detect=replace(detect, synthesis=replace(detect.synthesis, batch_size=16),
                       amplification=replace(detect.amplification, images=50, max_groups=200)),
        probes=replace(probes, refine_triggers=1, refine_steps=100, max_stamped=150),
        search=replace(search, max_clean=200, initial_prune_groups=8.0,
                       rounds=min(search.rounds, search.large_model_rounds),
                       train=replace(search.train, steps=min(search.train.steps, 8), settled_patience=3)),
        decide=replace(decide, extra_shortlist=12, prune_back_max_clean=250))


def config_dict(config: SanitizeConfig) -> dict:
    """The config as the report records it (JSON types only)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value
    return plain(asdict(config))


def override(config, changes: dict):
    """``config`` with fields changed by dotted path, e.g. ``{"search.rounds": 4, "probes.noise_probe_alpha": None}``
    (for benchmarks' ``--set NAME=JSON``)."""
    for path, value in changes.items():
        head, _, rest = path.partition(".")
        if not hasattr(config, head):
            raise ValueError(f"{type(config).__name__} has no field {head!r}")
        config = replace(config, **{head: override(getattr(config, head), {rest: value}) if rest else value})
    return config
