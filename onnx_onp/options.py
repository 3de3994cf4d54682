"""What a user chooses for one `sanitize` or `audit` run, built once (from click's flags, or the Python API's
keywords) and handed to the pipeline whole: the run's paths, the gate's policy and the search's knobs."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .agent.reinforce import TrainConfig
from .config import SanitizeConfig

# Clean defense images a run draws from --data when --limit is not given (seeded by --seed): 1% of CIFAR-10's
# training set, the backdoor literature's usual defense budget.
DEFAULT_DATA_LIMIT = 500


@dataclass(frozen=True)
class RunOptions:
    command: str = "sanitize"  # sanitize | audit
    data_path: str | None = None
    output: str | None = None
    shrink: bool = False
    html_path: str | None = None
    report_path: str | None = None
    sarif_path: str | None = None
    fail_on: str = "unsanitizable"
    detect_only: bool = False
    max_ca_drop: float = 2.0  # points
    steps: int = 15
    masks_per_step: int = 8
    rounds: int = 6
    prune_back: bool = True
    gnn: str = "graphconv"
    algorithm: str = "reinforce"
    force: bool = False
    resume: bool | None = None
    poisoned_data: str | None = None
    target: int | None = None
    test_data: str | None = None
    quiet: bool = False
    preprocess_path: str | None = None
    spec_path: str | None = None
    limit: int | None = None
    seed: int = 0
    provider: str = "auto"
    as_json: bool = False

    @property
    def data_limit(self) -> int:
        """How many clean images the run draws from --data."""
        return self.limit or DEFAULT_DATA_LIMIT

    def sanitize_config(self) -> SanitizeConfig:
        """The pipeline's config: the defaults, changed only where these options say."""
        base = SanitizeConfig()
        budget = self.max_ca_drop / 100
        return replace(
            base, seed=self.seed, shrink=self.shrink, force=self.force, prune=not self.detect_only,
            runtime=replace(base.runtime, provider=self.provider, resume_evaluation=self.resume),
            decide=replace(base.decide, max_ca_drop=budget,
                           prune_back_tolerance=base.decide.prune_back_tolerance if self.prune_back else None),
            search=replace(base.search, gnn=self.gnn, rounds=self.rounds,
                           reward=replace(base.search.reward, max_ca_drop=budget),
                           train=TrainConfig(steps=self.steps, masks_per_step=self.masks_per_step, seed=self.seed,
                                             algorithm=self.algorithm)))
