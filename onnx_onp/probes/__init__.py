"""Stage: probes. Inputs that make the suspected backdoor show itself, so that a reward can see it go.

Each family below builds its probes once for the suspect (``build``) and may add fresh ones after every pruning
round (``again``); the reward stamps every other-class image with one probe in turn (``probe_env``). A probe
object has ``probe(x, spatial_axes) -> (images, per-image group multipliers or None)``. A new family is one class
and one line in ``PROBES``::

    class Stripes(ProbeFamily):
        report_key = "stripe_probe"

        def build(self, ctx, detection):
            probe = StripePattern(...)  # anything with .probe(x, axes)
            return BuiltProbes(self, [probe], {"used": True})
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..agent.reinforce import RewardEnv
from ..detect import perturbation_images, refinement
from ..signals.noise import noise_blend_probe
from ..signals.perturbation import perturb_towards
from ..signals.synthesis import amplify, synthesize, synthesize_blend


@dataclass
class ProbeConfig:
    refine_triggers: int = 2  # fresh syntheses of the suspect's trigger (or perturbations) used by the reward
    refine_steps: int = 300
    amplify_triggers: bool = True  # add a solid, saturated version of each refined trigger to the reward
    # ... and a whole-image pattern blended in at this alpha, towards the suspect (None: not): the probe for
    # triggers spread over the image, which a small-mask trigger approximates badly. Used only where it reaches
    # the suspect (min_success), and re-synthesized against the pruned model after every round, as the
    # small-mask trigger is.
    blend_probe_alpha: float | None = 0.05
    blend_probe_resynthesis: bool = True
    # ... and clean images with random noise blended in at this alpha, each image its own pattern (None: not):
    # a noise-blend backdoor answers to any noise of its strength, not only its own pattern. Nothing is
    # optimised, so pruning cannot fool it. Used only where it reaches the suspect (min_success), and kept at
    # its share of the probes in every round (signals/noise.py).
    noise_probe_alpha: float | None = 0.2
    min_success: float = 0.8  # share of other classes' images a blend or noise probe must send to the suspect
    max_stamped: int = 300  # probe images per reward


@dataclass
class BuiltProbes:
    family: "ProbeFamily"
    items: list  # probe objects, in the order the reward cycles through them
    section: dict | None = None  # the report's section (family.report_key), if the family writes one


class ProbeFamily:
    report_key: str | None = None
    kind: str | None = None  # the detection.probe_kind it applies to (None: any)

    def applies(self, ctx, detection) -> bool:
        return self.kind is None or detection.probe_kind == self.kind

    def build(self, ctx, detection) -> BuiltProbes:
        raise NotImplementedError

    def again(self, ctx, detection, built: BuiltProbes, keep, round_index: int) -> tuple[list, dict]:
        """Probes to add after a pruning round (against the model pruned to ``keep``) and the round's record."""
        return [], {}


class RefinedTriggers(ProbeFamily):
    """The suspect's trigger synthesized again from fresh starts, each with a solid, saturated copy: several
    triggers make a reward the agent cannot satisfy by breaking one synthetic pattern only."""
    kind = "trigger"

    def build(self, ctx, detection) -> BuiltProbes:
        items = []
        for k in range(ctx.config.probes.refine_triggers):
            refined = synthesize(ctx.mirror, ctx.train.x, ctx.train.y, ctx.num_classes, ctx.layout,
                                 refinement(ctx.config, ctx.seed + 1 + k), classes=[detection.target])
            items.append(refined.candidates[0])
            if ctx.config.probes.amplify_triggers:
                items.append(amplify(refined.candidates[0], ctx.train.x, ctx.layout))
            ctx.progress.advance()
        return BuiltProbes(self, items)


class PerturbationMultipliers(ProbeFamily):
    """Clean images under neuron perturbations towards the suspect (per-image group multipliers)."""
    kind = "perturbation"

    def build(self, ctx, detection) -> BuiltProbes:
        images = perturbation_images(ctx, detection.target)
        items = [detection.result.best]
        for k in range(ctx.config.probes.refine_triggers):
            items.append(perturb_towards(ctx.mirror, images, detection.target, ctx.nmap.num_groups,
                                         replace(ctx.config.detect.perturbation, seed=ctx.seed + 1 + k)))
            ctx.progress.advance()
        return BuiltProbes(self, items)


class BlendProbe(ProbeFamily):
    """A whole-image pattern optimised to send images to the suspect at a small alpha."""
    report_key, kind = "blend_probe", "trigger"

    def applies(self, ctx, detection) -> bool:
        return super().applies(ctx, detection) and ctx.config.probes.blend_probe_alpha is not None

    def _synthesize(self, ctx, detection, seed: int, keep=None):
        return synthesize_blend(ctx.mirror, ctx.train.x, ctx.train.y, detection.target, ctx.layout,
                                alpha=ctx.config.probes.blend_probe_alpha, config=refinement(ctx.config, seed),
                                keep=keep)

    def build(self, ctx, detection) -> BuiltProbes:
        blend = self._synthesize(ctx, detection, ctx.seed + 50)
        # Only a blend that reaches the target probes the backdoor (on the patch backdoors measured it does not).
        used = blend.success >= ctx.config.probes.min_success
        section = {"alpha": ctx.config.probes.blend_probe_alpha, "success": round(blend.success, 3), "used": used}
        return BuiltProbes(self, [blend] if used else [], section)

    def again(self, ctx, detection, built, keep, round_index):
        if not (built.section["used"] and ctx.config.probes.blend_probe_resynthesis):
            return [], {}
        # Against the pruned model too: it keeps its weight among the probes.
        blend = self._synthesize(ctx, detection, ctx.seed + 150 + round_index, keep)
        return ([blend] if blend.success >= ctx.config.probes.min_success else []), \
            {"resynthesized_blend_success": round(blend.success, 3)}


class NoiseProbe(ProbeFamily):
    """Clean images blended with fresh random noise, each image its own pattern: nothing is optimised, so
    pruning cannot fool it. Not re-synthesized: added again every round, it keeps its share of the probes."""
    report_key = "noise_probe"

    def applies(self, ctx, detection) -> bool:
        return ctx.config.probes.noise_probe_alpha is not None

    def build(self, ctx, detection) -> BuiltProbes:
        alpha = ctx.config.probes.noise_probe_alpha
        noise = noise_blend_probe(ctx.evaluator, ctx.train.x, ctx.train.y, detection.target, ctx.layout,
                                  alpha=alpha, seed=ctx.seed + 70)
        used = noise.success >= ctx.config.probes.min_success
        ctx.progress.note(f"noise probe (alpha {alpha}): sends {100 * noise.success:.1f}% of other classes' images "
                          f"to class {detection.target} ({'used' if used else 'not used'})")
        return BuiltProbes(self, [noise] if used else [], {"alpha": alpha, "success": round(noise.success, 3),
                                                          "used": used})

    def again(self, ctx, detection, built, keep, round_index):
        return list(built.items), {}


PROBES: list[ProbeFamily] = [RefinedTriggers(), PerturbationMultipliers(), BlendProbe(), NoiseProbe()]


def build_probes(ctx, detection, families: list[ProbeFamily]) -> list[BuiltProbes]:
    """Every family that applies to the suspect, in order."""
    ctx.progress.stage(f"refining class {detection.target}'s {detection.probe_kind}",
                       total=ctx.config.probes.refine_triggers)
    return [family.build(ctx, detection) for family in families if family.applies(ctx, detection)]


def probe_items(built: list[BuiltProbes]) -> list:
    return [item for b in built for item in b.items]


def probe_env(evaluator, part, probes, target, axes, reward, *, max_stamped: int, seed: int,
              base_mask=None, max_clean: int | None = None) -> RewardEnv:
    """Reward environment on one part of the defense data, probed with every probe found so far.

    Each image gets one of the probes (in turn), so adding probes does not multiply the cost of a reward.
    """
    others = part.x[part.y != target]
    order = np.random.default_rng(seed).permutation(len(others))[:max_stamped]
    stamped = [probes[k % len(probes)].probe(others[order[k::len(probes)]], axes)
               for k in range(min(len(probes), len(order)))]
    images = np.concatenate([x for x, _ in stamped])
    multipliers = None
    if any(m is not None for _, m in stamped):
        multipliers = np.concatenate([np.ones((len(x), evaluator.nmap.num_groups), np.float32) if m is None else m
                                      for x, m in stamped])
    clean = np.arange(len(part))
    if max_clean is not None and max_clean < len(part):
        clean = np.sort(np.random.default_rng(seed + 1).permutation(len(part))[:max_clean])
    return RewardEnv(evaluator, part.x[clean], part.y[clean], images, target, reward, base_mask=base_mask,
                     stamped_multipliers=multipliers)
