"""Stage 6: the GNN policy and its REINFORCE trainer."""

from .policy import GNN_KINDS, PruningPolicy
from .reinforce import Outcome, RewardConfig, RewardEnv, TrainConfig, TrainResult, train_policy

__all__ = ["GNN_KINDS", "Outcome", "PruningPolicy", "RewardConfig", "RewardEnv", "TrainConfig", "TrainResult",
           "train_policy"]
