"""Stage 6a: the GNN policy: graph embeddings -> a prune probability per group.

Two message-passing layers over the batched layer graphs (GraphConv by default, which uses the connection
strengths as edge weights; SAGE and GAT for comparison), a linear head on [embedding, raw features], and a
bias that starts the policy at a small prune rate. A group that is a decision node in several graphs
(a residual group spans several layers) gets the mean of its logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.nn import GATConv, GraphConv, SAGEConv
from torch_geometric.utils import scatter

GNN_KINDS = ("graphconv", "sage", "gat")
INITIAL_RATE = 0.02  # the policy's prune probability before training, unless a caller sets it


class PruningPolicy(nn.Module):
    def __init__(self, in_dim: int, num_groups: int, *, hidden: int = 32, kind: str = "graphconv",
                 initial_rate: float = INITIAL_RATE, prior: dict[int, float] | None = None):
        super().__init__()
        if kind not in GNN_KINDS:
            raise ValueError(f"kind must be one of {GNN_KINDS}")
        self.kind = kind
        self.num_groups = num_groups

        def layer(i, o):
            if kind == "graphconv":
                return GraphConv(i, o, aggr="mean")
            if kind == "sage":
                return SAGEConv(i, o)
            return GATConv(i, o, heads=1)

        self.conv1 = layer(in_dim, hidden)
        self.conv2 = layer(hidden, hidden)
        self.head = nn.Linear(hidden + in_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(initial_rate / (1 - initial_rate)))
        # Warm start: the head initially reads chosen raw features (e.g. the backdoor signals) with these
        # weights, so the first masks already favour likely backdoor groups; training moves from there.
        with torch.no_grad():
            for column, weight in (prior or {}).items():
                self.head.weight[0, hidden + column] = weight

    def _conv(self, conv, x, batch):
        if self.kind == "graphconv":
            return conv(x, batch.edge_index, batch.edge_weight)
        return conv(x, batch.edge_index)

    def forward(self, batch) -> torch.Tensor:
        """Logits over all groups (groups without a decision node get -inf: never pruned)."""
        h = torch.relu(self._conv(self.conv1, batch.x, batch))
        h = torch.relu(self._conv(self.conv2, h, batch))
        node_logits = self.head(torch.cat([h, batch.x], dim=1)).squeeze(1)
        decide = batch.group >= 0
        summed = scatter(node_logits[decide], batch.group[decide], dim=0, dim_size=self.num_groups, reduce="mean")
        present = scatter(torch.ones_like(node_logits[decide]), batch.group[decide], dim=0,
                          dim_size=self.num_groups, reduce="sum") > 0
        return torch.where(present, summed, torch.full_like(summed, float("-inf")))
