"""The benchmark harness: every chosen defense on every case, on one evaluator per model.

Per case: load the model and its neuron map once, build ONE ``MaskedEvaluator`` (with the tensors every chosen
defense reads), prepare the clean defense set (``defense_size`` training images), the clean test set and the
triggered test set (the spec's trigger stamped on the non-target test images, true labels kept). Then each
defense gets the model, the map, the evaluator and the clean defense set only, and its mask is measured on the
test sets: CA, ASR, RA, DER, groups and neurons pruned, wall time and peak memory of the defense itself.

``random`` runs once per other pruning defense, with that defense's neuron count (rows ``random@clp``, ...).

With ``draws`` > 1 every case runs once per draw of the defense data (seeds ``seed`` .. ``seed + draws - 1``),
on one test subset (seed ``seed``), so a result that holds for one lucky draw only shows up as a bad worst case.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..baselines import DEFENSES, DefenseResult, pruned_neuron_count
from ..data import Spec
from ..errors import DataError, OnpError
from ..instrument import MaskedEvaluator
from ..load import load_model
from ..metrics import Prepared, attack_scores, clean_accuracy, prepare, prepare_triggered
from ..neuron_map import build_neuron_map
from .cases import Case, DataSplits, discover_cases

DEFAULT_DEFENSES = ("none", "onp", "clp", "fp", "random")


@dataclass
class BenchConfig:
    defenses: tuple[str, ...] = DEFAULT_DEFENSES
    defense_size: int = 500
    seed: int = 0  # the first draw's seed and the test subset's
    test_limit: int | None = None
    draws: int = 1  # defense-data draws per case, seeds seed .. seed + draws - 1
    provider: str = "auto"
    defense_configs: dict[str, Any] = field(default_factory=dict)  # name -> config object (e.g. FpConfig)

    def __post_init__(self) -> None:
        unknown = [d for d in self.defenses if d not in DEFENSES]
        if unknown:
            raise ValueError(f"unknown defense(s) {', '.join(unknown)}: choose from {', '.join(DEFENSES)}")
        if self.defense_size < 1:
            raise ValueError(f"defense_size must be at least 1, got {self.defense_size}")
        if self.test_limit is not None and self.test_limit < 1:
            raise ValueError(f"test_limit must be at least 1, got {self.test_limit}")
        if self.draws < 1:
            raise ValueError(f"draws must be at least 1, got {self.draws}")

    @property
    def draw_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.draws)]


@dataclass
class Row:
    """One defense on one case."""

    case: str
    defense: str  # "none", "clp", "fp", "random@clp", ...
    ca: float
    asr: float | None
    ra: float | None
    der: float | None
    pruned_groups: int
    pruned_neurons: int
    seconds: float  # wall time of the defense (not of the test-set measurement)
    peak_rss_mb: float  # peak resident memory during the defense, above the level before it
    info: dict = field(default_factory=dict)
    draw: int = 0  # seed of the defense data this row was measured with
    status: str | None = None  # ONP's outcome (the sanitize report's status); None for the baselines


@dataclass
class CaseResult:
    case: Case
    draw: int = 0  # seed of the defense data
    provider: str = ""
    neurons: int = 0
    groups: int = 0
    prunable_groups: int = 0
    defense_samples: int = 0
    test_samples: int = 0
    attack_samples: int = 0
    target: int | None = None
    data: str = ""
    reference: dict = field(default_factory=dict)  # CA/ASR recorded in the case's JSON (full test split)
    before: dict = field(default_factory=dict)  # ca, asr, ra of the unpruned model on this run's test data
    setup_seconds: float = 0.0
    rows: list[Row] = field(default_factory=list)
    error: str | None = None


def der(before: dict, ca: float, asr: float | None) -> float | None:
    """Defense effectiveness rating: (max(0, ASR drop) - max(0, CA drop) + 1) / 2."""
    if asr is None or before.get("asr") is None:
        return None
    return (max(0.0, before["asr"] - asr) - max(0.0, before["ca"] - ca) + 1) / 2


def _rss_kb() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """Peak resident memory of this process while the block runs, above the level at entry (polls VmRSS).

    On systems without /proc it reports 0.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.before_kb = 0
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _rss_kb())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.before_kb = self.peak_kb = _rss_kb()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _rss_kb())

    @property
    def mb(self) -> float:
        return max(0, self.peak_kb - self.before_kb) / 1024


class _Measure:
    """Scores masks on the case's test data."""

    def __init__(self, evaluator: MaskedEvaluator, test: Prepared, triggered: Prepared | None, target: int | None):
        self.evaluator, self.test, self.triggered, self.target = evaluator, test, triggered, target

    def __call__(self, mask) -> dict:
        ca = clean_accuracy(self.evaluator, self.test, mask)
        if self.triggered is None:
            return {"ca": ca, "asr": None, "ra": None}
        attack = attack_scores(self.evaluator, self.triggered, self.target, mask)
        return {"ca": ca, "asr": attack.asr, "ra": attack.ra}


def _run_defense(name: str, lm, nmap, defense_data: Prepared, evaluator, config) -> tuple[DefenseResult, float, float]:
    with PeakRss() as memory:
        start = time.perf_counter()
        result = DEFENSES[name](lm, nmap, defense_data, evaluator=evaluator, config=config)
        seconds = time.perf_counter() - start
    nmap.check_mask(result.mask)
    return result, seconds, memory.mb


class OpenedCase(NamedTuple):
    """One case loaded for a script that measures masks on it (experiments, profiles)."""
    case: Case
    spec: Spec
    model: Any  # LoadedModel
    nmap: Any  # NeuronMap
    evaluator: MaskedEvaluator


def open_case(name: str, provider: str = "cpu") -> OpenedCase:
    """The case called ``name``: its spec, model, neuron map and a masked evaluator on ``provider``."""
    (case,) = discover_cases(name)
    model = load_model(case.model)
    nmap = build_neuron_map(model)
    return OpenedCase(case, Spec.load(case.spec), model, nmap, MaskedEvaluator(model, nmap, provider=provider))


def run_case(case: Case, config: BenchConfig, *, splits: DataSplits | None = None,
             on_start: Callable[[CaseResult], None] | None = None,
             on_row: Callable[[Row], None] | None = None, draw: int | None = None,
             random_counts: dict[str, int] | None = None) -> CaseResult:
    """Run every chosen defense on one case with the defense data of seed ``draw`` (default: ``config.seed``);
    rows are also passed to ``on_row`` as they are measured. ``random_counts`` (defense -> neurons pruned) has
    ``random`` also match defenses measured elsewhere: a saved run's ONP gets its ``random@onp`` row this way."""
    splits = splits or DataSplits()
    draw = config.seed if draw is None else draw
    start = time.perf_counter()
    spec = Spec.load(case.spec)
    lm = load_model(case.model)
    nmap = build_neuron_map(lm)
    pre = spec.preprocess
    defense_raw, test_raw = splits.defense_and_test(case.dataset, config.defense_size, draw, config.test_limit,
                                                    test_seed=config.seed)
    defense_data = prepare(lm, defense_raw, pre, what=f"{case.name} defense data")
    test = prepare(lm, test_raw, pre, what=f"{case.name} test data")
    triggered = None
    if spec.trigger is not None and spec.target is not None:
        triggered = prepare_triggered(lm, test_raw, spec, pre)

    configs = {name: config.defense_configs.get(name) or DEFENSES[name].config() for name in config.defenses}
    extra: list[str] = []
    for name in config.defenses:
        for tensor in DEFENSES[name].extra_outputs(lm, nmap, configs[name]):
            if tensor not in extra:
                extra.append(tensor)
    evaluator = MaskedEvaluator(lm, nmap, provider=config.provider, extra_outputs=extra)
    measure = _Measure(evaluator, test, triggered, spec.target)
    before = measure(None)

    result = CaseResult(
        case=case, draw=draw, provider=evaluator.provider, neurons=nmap.num_neurons, groups=nmap.num_groups,
        prunable_groups=int(nmap.prunable.sum()), defense_samples=len(defense_data), test_samples=len(test),
        attack_samples=int((triggered.y != spec.target).sum()) if triggered is not None else 0,
        target=spec.target, data=splits.describe(case.dataset),
        reference={"ca": spec.clean_accuracy, "asr": spec.attack_success_rate}, before=before,
        setup_seconds=time.perf_counter() - start)
    if on_start:
        on_start(result)

    def record(label: str, res: DefenseResult, seconds: float, mb: float) -> Row:
        scores = measure(res.mask)
        row = Row(case=case.name, defense=label, ca=scores["ca"], asr=scores["asr"], ra=scores["ra"],
                  der=der(before, scores["ca"], scores["asr"]), pruned_groups=res.pruned_groups,
                  pruned_neurons=pruned_neuron_count(nmap, res.mask), seconds=seconds, peak_rss_mb=mb,
                  info=res.info, draw=draw, status=res.info.get("status") if label == "onp" else None)
        result.rows.append(row)
        if on_row:
            on_row(row)
        return row

    pruning_rows: list[Row] = []
    for name in config.defenses:
        if name == "random":
            continue
        res, seconds, mb = _run_defense(name, lm, nmap, defense_data, evaluator, configs[name])
        row = record(name, res, seconds, mb)
        if name != "none":
            pruning_rows.append(row)
    if "random" in config.defenses:
        base = configs["random"]
        counts = {row.defense: row.pruned_neurons for row in pruning_rows}
        counts.update({name: n for name, n in (random_counts or {}).items() if name not in counts})
        for other, count in counts.items():
            cfg = dataclasses.replace(base, count=count, unit="neurons", seed=draw)
            res, seconds, mb = _run_defense("random", lm, nmap, defense_data, evaluator, cfg)
            record(f"random@{other}", res, seconds, mb)
    return result


@dataclass
class BenchResult:
    config: BenchConfig
    cases: list[CaseResult]
    seconds: float
    started: str = ""  # local time the run started, ISO 8601


def _draws_differ(case: Case, config: BenchConfig, splits: DataSplits) -> bool:
    """Draws are only draws when the pool is larger than one draw."""
    try:
        return len(splits.splits(case.dataset)[0]) > config.defense_size
    except OnpError:
        return True  # the case's own run reports the missing data


def run_bench(cases: list[Case], config: BenchConfig, *, splits: DataSplits | None = None,
              on_start: Callable[[CaseResult], None] | None = None,
              on_row: Callable[[Row], None] | None = None,
              on_error: Callable[[Case, OnpError], None] | None = None,
              on_result: Callable[[CaseResult], None] | None = None,
              skip: Callable[[Case, int], bool] | None = None) -> BenchResult:
    """Every case in turn, once per draw. A case whose model or data fails (an ``OnpError``) is recorded once and
    its other draws are skipped. ``on_result`` gets each (case, draw)'s result as it is finished, so a long run
    can save what it has; draws for which ``skip(case, draw)`` is true are not run (a resumed run's done ones)."""
    splits = splits or DataSplits()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    start = time.perf_counter()
    results = []
    for case in cases:
        if config.draws > 1 and not _draws_differ(case, config, splits):
            exc = DataError(f"{config.draws} draws of {config.defense_size} images from a pool of "
                            f"{len(splits.splits(case.dataset)[0])} would all be the same data")
            results.append(CaseResult(case=case, draw=config.seed, error=f"{type(exc).__name__}: {exc}"))
            if on_error:
                on_error(case, exc)
            if on_result:
                on_result(results[-1])
            continue
        for draw in config.draw_seeds:
            if skip and skip(case, draw):
                continue
            failed = None
            try:
                results.append(run_case(case, config, splits=splits, on_start=on_start, on_row=on_row, draw=draw))
            except OnpError as exc:
                failed = exc
                results.append(CaseResult(case=case, draw=draw, error=f"{type(exc).__name__}: {exc}"))
                if on_error:
                    on_error(case, exc)
            if on_result:
                on_result(results[-1])
            if failed is not None:
                break
    return BenchResult(config=config, cases=results, seconds=time.perf_counter() - start, started=started)

