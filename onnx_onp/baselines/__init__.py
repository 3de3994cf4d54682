"""Baseline defenses on the same ONNX models: none, CLP, Fine-Pruning, ANP, random pruning.

Each entry of ``DEFENSES`` is called as ``DEFENSES[name](lm, nmap, data, evaluator=..., config=...)`` and
returns a :class:`DefenseResult` (a boolean mask over the neuron map's groups, True = pruned, and an info
dict). ``data`` is the clean defense set (``Prepared``, a few hundred training images); a defense never
receives poisoned or test data.
"""

from .anp import AnpConfig, anp
from .base import Defense, DefenseResult, NoneConfig, no_defense, pruned_neuron_count, unit_groups
from .clp import ClpConfig, channel_lipschitz, clp
from .fine_pruning import FpConfig, activation_tensor, fine_pruning, fp_extra_outputs, last_conv_layer
from .random_pruning import RandomConfig, random_pruning

DEFENSES: dict[str, Defense] = {
    "none": Defense("none", no_defense, NoneConfig, needs_data=False, description="no defense"),
    "clp": Defense("clp", clp, ClpConfig, needs_data=False,
                   description="Channel Lipschitzness-based Pruning (data-free, u = 3)"),
    "fp": Defense("fp", fine_pruning, FpConfig, needs_data=True,
                  description="Fine-Pruning without fine-tuning (last conv layer, least active first)",
                  extra_outputs=fp_extra_outputs),
    "anp": Defense("anp", anp, AnpConfig, needs_data=True,
                   description="Adversarial Neuron Pruning (masks learned against neuron perturbations, threshold 0.2)"),
    "random": Defense("random", random_pruning, RandomConfig, needs_data=False,
                      description="random prunable groups, as many neurons as the compared defense"),
}

__all__ = [
    "DEFENSES",
    "AnpConfig",
    "ClpConfig",
    "Defense",
    "DefenseResult",
    "FpConfig",
    "NoneConfig",
    "RandomConfig",
    "activation_tensor",
    "anp",
    "channel_lipschitz",
    "clp",
    "fine_pruning",
    "fp_extra_outputs",
    "last_conv_layer",
    "no_defense",
    "pruned_neuron_count",
    "random_pruning",
    "unit_groups",
]


def _onp(lm, nmap, data, *, evaluator=None, config=None) -> DefenseResult:
    """ONP itself, through the same interface as the baselines (imported late: it builds on everything)."""
    from ..instrument import MaskedEvaluator
    from ..sanitize import PhaseTimer, SanitizeConfig, find_backdoor_mask

    evaluator = evaluator or MaskedEvaluator(lm, nmap)
    timer = PhaseTimer()
    in_runtime = evaluator.seconds_in_runtime  # the bench shares one evaluator between defenses
    mask, report = find_backdoor_mask(lm, nmap, data, evaluator, config or SanitizeConfig(), timer=timer)
    keys = ("status", "verdict", "detector", "trigger_synthesis", "neuron_perturbation", "neuron_amplification",
            "blend_probe", "noise_probe", "clean_accuracy_holdout", "rounds", "pruned_back", "evaluations", "resume",
            "final_check", "defense_data", "within_budget")
    info = {k: report[k] for k in keys if k in report}
    # Which search setting ran: records compare settings (benchmarks/until_probes_cut_check.py) by it
    info["search_settings"] = {"until_probes_cut": report["config"]["search"]["until_probes_cut"]}
    total = sum(timer.phases.values())
    runtime = evaluator.seconds_in_runtime - in_runtime
    info["seconds"] = {"total": round(total, 2), **timer.phases, "onnxruntime": round(runtime, 2),
                       "onnxruntime_share": round(runtime / max(total, 1e-9), 3)}
    return DefenseResult(mask, info)


def _onp_config():
    from ..sanitize import SanitizeConfig

    return SanitizeConfig()


DEFENSES["onp"] = Defense("onp", _onp, _onp_config, needs_data=True,
                          description="ONP: trigger synthesis, neuron graphs, GNN policy trained by REINFORCE")
