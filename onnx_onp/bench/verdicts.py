"""The audit verdict measured over the benchmark: how many backdoored models are flagged, how many clean ones.

`onnx-onp bench --verdicts` runs `audit --detect-only` on every case with the same defense data as the
defense benchmark (``defense_size`` seeded clean training images). The verdict comes from the detectors
(trigger synthesis, then the neuron-perturbation scan when synthesis finds nothing, then the amplification scan
when neither does) and, for weak evidence, from the pruning search that must confirm it (sanitize.py,
``confirm_below``): that search runs in --detect-only too, with the same seed and data split as in a full
`audit`, so both give the same verdict; --detect-only skips the pruning evidence of strong suspicions only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

from ..data import Spec
from ..sanitize import SanitizeConfig, sanitize
from .cases import Case, DataSplits


@dataclass
class VerdictRow:
    case: str
    family: str
    attack: str
    backdoored: bool
    true_target: int | None
    verdict: str
    anomaly_index: float
    suspected_target: int
    defense_ca: float
    seconds: float
    detector: str = "trigger synthesis"  # whose evidence the verdict rests on (the flagging one, or synthesis)
    synthesis_index: float | None = None
    perturbation_index: float | None = None  # None: not run (synthesis had already flagged the model)
    amplification_index: float | None = None  # None: not run (an earlier detector had flagged the model)
    confirmed: bool | None = None  # None: strong evidence, no confirmation needed
    probe_asr_before: float | None = None  # the confirming search's probe, held-out ASR before/after its mask
    probe_asr_after: float | None = None
    synthesis_size_ratio: float | None = None  # the synthesis suspect's mask L1 over the other classes' median

    @property
    def flagged(self) -> bool:
        return self.verdict == "backdoor suspected"


def _attack(case: Case) -> tuple[str, bool]:
    spec = json.loads(case.spec.read_text())
    attack = str(spec.get("attack") or (spec.get("training") or {}).get("attack") or "unknown")
    return attack, not attack.lower().startswith("none")


def run_verdicts(cases: list[Case], *, defense_size: int = 500, seed: int = 0, provider: str = "auto",
                 on_row=None) -> list[VerdictRow]:
    splits = DataSplits()
    base = SanitizeConfig()
    config = replace(base, prune=False, seed=seed, runtime=replace(base.runtime, provider=provider))
    rows = []
    for case in cases:
        spec = Spec.load(case.spec)
        defense, _ = splits.defense_and_test(case.dataset, defense_size, seed)
        start = time.perf_counter()
        report = sanitize(case.model, defense, spec.preprocess, None, config=config).report
        attack, backdoored = _attack(case)
        confirmation = report.get("confirmation") or {}
        probe = confirmation.get("probe_asr_holdout") or {}
        row = VerdictRow(case.name, case.family, attack, backdoored, spec.target if backdoored else None,
                         report["verdict"]["verdict"], report["verdict"]["anomaly_index"],
                         report["verdict"]["suspected_target"], report["clean_accuracy_holdout"]["before"],
                         round(time.perf_counter() - start, 1), report.get("detector", "trigger synthesis"),
                         report["trigger_synthesis"]["anomaly_index"],
                         (report.get("neuron_perturbation") or {}).get("anomaly_index"),
                         (report.get("neuron_amplification") or {}).get("anomaly_index"),
                         confirmation.get("confirmed"), probe.get("before"), probe.get("after"),
                         synthesis_size_ratio=report["trigger_synthesis"].get("size_ratio"))
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def verdict_summary(rows: list[VerdictRow]) -> dict:
    backdoored = [r for r in rows if r.backdoored]
    clean = [r for r in rows if not r.backdoored]
    flagged = [r for r in backdoored if r.flagged]
    return {"backdoored": len(backdoored), "flagged": len(flagged),
            "target_right": sum(r.suspected_target == r.true_target for r in flagged),
            "clean": len(clean), "false_alarms": sum(r.flagged for r in clean),
            "missed": [r.case for r in backdoored if not r.flagged]}


def verdict_markdown(rows: list[VerdictRow], *, command: str, machine: str) -> str:
    s = verdict_summary(rows)
    lines = [f"Command: `{command}`  ", f"Machine: {machine}", "",
             f"**Backdoored models flagged: {s['flagged']} of {s['backdoored']}** (suspected target right on "
             f"{s['target_right']} of those); **false alarms on clean models: {s['false_alarms']} of {s['clean']}**."
             + (f" Missed: {', '.join(s['missed'])}." if s["missed"] else ""), "",
             "| case | attack | verdict | detector | synthesis index (mask ratio) | perturbation index | amplification index | "
             "confirmed by pruning (probe ASR) | suspected target | true target | defense CA | seconds |",
             "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.case} | {r.attack} | {'**' + r.verdict + '**' if r.flagged else r.verdict} | "
                     f"{r.detector if r.flagged else 'none found'} | "
                     f"{'–' if r.synthesis_index is None else f'{r.synthesis_index:.2f}'}{_ratio(r)} | "
                     f"{'–' if r.perturbation_index is None else f'{r.perturbation_index:.2f}'} | "
                     f"{'–' if r.amplification_index is None else f'{r.amplification_index:.2f}'} | {_confirmation(r)} | "
                     f"{r.suspected_target} | "
                     f"{'–' if r.true_target is None else r.true_target} | {100 * r.defense_ca:.1f}% | {r.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def _ratio(row: VerdictRow) -> str:
    return "" if row.synthesis_size_ratio is None else f" ({row.synthesis_size_ratio:.2f})"


def _confirmation(row: VerdictRow) -> str:
    if row.confirmed is None:
        return "–"
    return (f"{'yes' if row.confirmed else 'no'} ({100 * row.probe_asr_before:.0f}% → "
            f"{100 * row.probe_asr_after:.0f}%)")
