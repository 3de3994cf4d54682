"""Stage 6b: learn the pruning policy with REINFORCE (or PPO), every reward from onnxruntime.

Each step samples a batch of masks from the policy (independent Bernoulli per group), scores all of them in
onnxruntime on the defense data (clean accuracy, and the share of the backdoor probe still sent to the
suspected target: trigger-stamped images, or clean images under the neuron perturbation), and moves the policy
towards the masks that beat the batch's mean reward (the batch mean is the baseline; advantages are
standardised). PPO takes several clipped steps on each batch instead of one. Seeded: the same seed gives the
same masks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..instrument import MaskedEvaluator
from .policy import PruningPolicy


@dataclass
class RewardConfig:
    max_ca_drop: float = 0.02  # the budget, as a fraction (0.02 = 2 points)
    ca_weight: float = 2.0  # cost of each point of CA lost, inside the budget
    over_budget_weight: float = 10.0  # extra cost per point beyond the budget
    size_weight: float = 0.3  # cost of pruning every prunable group
    loss_weight: float = 0.5  # cost per nat of clean cross-entropy gained: smoother than accuracy on few images


@dataclass
class Outcome:
    ca: float
    asr: float  # share of stamped non-target images classified as the suspected target
    pruned: int
    reward: float
    clean_loss: float = 0.0
    probed: bool = True  # False: the probe was not run (over the caller's clean-accuracy limit); asr is then 1


class RewardEnv:
    """Scores masks on the defense data with the masked evaluator."""

    def __init__(self, evaluator: MaskedEvaluator, clean_x, clean_y, stamped_x, target: int,
                 config: RewardConfig, base_mask: np.ndarray | None = None, stamped_multipliers=None):
        self.evaluator = evaluator
        self.clean_x, self.clean_y = clean_x, clean_y
        # The backdoor probe: trigger-stamped images, or clean ones run with perturbed groups (multipliers).
        self.stamped_x = stamped_x
        self.stamped_multipliers = stamped_multipliers
        self.stamped_y = np.full(len(stamped_x), target, dtype=np.int64)
        self.config = config
        self.num_prunable = max(1, int(evaluator.nmap.prunable.sum()))
        # Groups already pruned by an earlier round: every scored mask adds to them; the baselines stay those
        # of the unpruned model, so the budget is the total one.
        self.base_mask = evaluator.nmap.empty_mask() if base_mask is None else base_mask.astype(bool)
        empty = evaluator.nmap.empty_mask()[None]
        base = evaluator.score_many(clean_x, clean_y, empty)[0]
        self.ca0, self.loss0 = base.accuracy, base.loss
        self.asr0 = evaluator.score_many(stamped_x, self.stamped_y, empty, stamped_multipliers)[0].accuracy
        self.evaluations = 0

    def reward(self, ca: float, asr: float, pruned: int, clean_loss: float) -> float:
        c = self.config
        drop = max(0.0, self.ca0 - ca)
        return (-asr - c.ca_weight * drop - c.over_budget_weight * max(0.0, drop - c.max_ca_drop)
                - c.loss_weight * max(0.0, clean_loss - self.loss0) - c.size_weight * pruned / self.num_prunable)

    def probe_asr(self, masks: np.ndarray, limit: int = 100) -> np.ndarray:
        """Only the backdoor probe's ASR, on its first ``limit`` images: a cheap first look at many masks."""
        masks = np.asarray(masks, dtype=bool) | self.base_mask
        multipliers = None if self.stamped_multipliers is None else self.stamped_multipliers[:limit]
        scores = self.evaluator.score_many(self.stamped_x[:limit], self.stamped_y[:limit], masks, multipliers)
        return np.array([s.accuracy for s in scores])

    def score(self, masks: np.ndarray, max_drop: float | None = None) -> list[Outcome]:
        """Clean accuracy and probe ASR of each mask. With ``max_drop``, a mask whose clean accuracy falls more
        than that below the unpruned model's is not run on the probe (its ``asr`` is 1, ``probed`` False): for
        callers that reject such masks whatever their ASR, the decision is the same and the probe's runs are saved.
        """
        masks = np.asarray(masks, dtype=bool) | self.base_mask
        clean = self.evaluator.score_many(self.clean_x, self.clean_y, masks)
        probed = np.ones(len(masks), dtype=bool)
        if max_drop is not None:
            probed = np.array([self.ca0 - c.accuracy <= max_drop for c in clean], dtype=bool)
        asr = np.ones(len(masks))
        if probed.any():
            stamped = self.evaluator.score_many(self.stamped_x, self.stamped_y, masks[probed], self.stamped_multipliers)
            asr[probed] = [s.accuracy for s in stamped]
        self.evaluations += len(masks)
        outcomes = []
        for mask, c, a, p in zip(masks, clean, asr, probed):
            pruned = int(mask.sum())
            outcomes.append(Outcome(ca=c.accuracy, asr=float(a), pruned=pruned, clean_loss=c.loss,
                                    reward=self.reward(c.accuracy, float(a), pruned, c.loss), probed=bool(p)))
        return outcomes


ALGORITHMS = ("reinforce", "ppo")


@dataclass
class TrainConfig:
    steps: int = 15
    masks_per_step: int = 8
    lr: float = 0.02
    entropy_weight: float = 0.001
    # "reinforce": one policy-gradient step per batch of masks. "ppo": ppo_epochs clipped steps on each batch
    # (the same onnxruntime rewards reused: rewards are the cost, the GNN passes are cheap). Compared in
    # docs/method.md ("What the measurements say").
    algorithm: str = "reinforce"
    ppo_epochs: int = 4
    ppo_clip: float = 0.2
    max_seconds: float | None = None
    # Stop after this many steps in a row whose sampled masks were all one and the same mask: the policy has
    # settled and further steps only rescore it (None: always run every step).
    settled_patience: int | None = None
    seed: int = 0


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # per step: mean/best reward, CA, ASR, pruned
    tried: list[tuple[np.ndarray, Outcome]] = field(default_factory=list)  # every mask scored
    probabilities: np.ndarray | None = None  # final policy, per group
    seconds: float = 0.0
    stopped_settled: bool = False  # training stopped early because the policy sampled one mask only


def train_policy(policy: PruningPolicy, batch, env: RewardEnv, config: TrainConfig, progress=None) -> TrainResult:
    if config.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    result = TrainResult()
    start = time.perf_counter()
    settled = 0
    for step in range(config.steps):
        logits = policy(batch)
        decide = torch.isfinite(logits)
        probs = torch.sigmoid(logits[decide])
        samples = torch.bernoulli(probs.detach().expand(config.masks_per_step, -1), generator=generator)
        masks = np.zeros((config.masks_per_step, policy.num_groups), dtype=bool)
        masks[:, decide.numpy()] = samples.numpy().astype(bool)
        outcomes = env.score(masks)
        rewards = torch.tensor([o.reward for o in outcomes], dtype=torch.float32)
        advantage = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
        if config.algorithm == "ppo":
            old_log_prob = _log_prob(samples, probs).detach()
            for epoch in range(config.ppo_epochs):
                if epoch:  # the first epoch reuses this step's forward pass
                    probs = torch.sigmoid(policy(batch)[decide])
                ratio = torch.exp(_log_prob(samples, probs) - old_log_prob)
                clipped = torch.clamp(ratio, 1 - config.ppo_clip, 1 + config.ppo_clip)
                _step(optimizer, policy, -torch.min(ratio * advantage, clipped * advantage).mean()
                      - config.entropy_weight * _entropy(probs))
        else:
            _step(optimizer, policy, -(advantage * _log_prob(samples, probs)).mean()
                  - config.entropy_weight * _entropy(probs))
        result.tried.extend(zip(masks, outcomes))
        best = max(outcomes, key=lambda o: o.reward)
        record = {"step": step, "mean_reward": float(rewards.mean()), "best_reward": best.reward,
                  "ca": float(np.mean([o.ca for o in outcomes])), "asr": float(np.mean([o.asr for o in outcomes])),
                  "pruned": float(np.mean([o.pruned for o in outcomes])), "seconds": time.perf_counter() - start}
        result.history.append(record)
        if progress is not None:
            progress(record)
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            break
        settled = settled + 1 if (masks == masks[:1]).all() else 0
        if config.settled_patience is not None and settled >= config.settled_patience:
            result.stopped_settled = True
            break
    with torch.no_grad():
        result.probabilities = torch.sigmoid(policy(batch)).numpy()
    result.seconds = time.perf_counter() - start
    return result


def _log_prob(samples: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Log-probability of each sampled mask under independent Bernoullis."""
    return (samples * torch.log(probs + 1e-8) + (1 - samples) * torch.log(1 - probs + 1e-8)).sum(dim=1)


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs + 1e-8) + (1 - probs) * torch.log(1 - probs + 1e-8)).sum()


def _step(optimizer, policy: PruningPolicy, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    if torch.isfinite(loss):  # a degenerate batch (e.g. identical rewards) must not poison the policy
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
