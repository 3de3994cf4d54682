"""Stage 6: the GNN policy and its trainer (REINFORCE, or PPO)."""

from .policy import GNN_KINDS, PruningPolicy
from .reinforce import ALGORITHMS, Outcome, RewardConfig, RewardEnv, TrainConfig, TrainResult, train_policy

__all__ = ["ALGORITHMS", "GNN_KINDS", "Outcome", "PruningPolicy", "RewardConfig", "RewardEnv", "TrainConfig", "TrainResult",
           "train_policy"]
