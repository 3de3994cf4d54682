"""Stage 5: one neuron graph per prunable layer (torch_geometric ``Data``).

Nodes are the layer's groups (the ones a decision is made for) and the groups of the previous layer that feed
it (context). Edges: previous → current weighted by connection strength (L1 norm of the kernel slice between
input channel i and output channel j, summed over the neurons of each group), and current ↔ current between
groups whose incoming weight vectors are similar (cosine ≥ ``similarity``, the ``top_k`` strongest each).
A residual group is one node wherever it appears: group-based pruning (the paper's Fig. 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from ..load.loader import LoadedModel
from ..neuron_map import NeuronMap
from ..signals.features import GroupSignals


@dataclass
class GraphConfig:
    similarity: float = 0.5
    top_k: int = 3


def _standardise(values: np.ndarray) -> np.ndarray:
    std = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)


def _connection_matrix(lm: LoadedModel, nmap: NeuronMap, layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|W| aggregated to [own groups, input groups], with the group ids of both axes."""
    producer = next(s for s in nmap.param_sites if s.initializer == layer.weight and s.zero)
    consumer = next((s for s in nmap.param_sites if s.initializer == layer.weight and not s.zero), None)
    w = np.abs(lm.initializer_array(layer.weight).astype(np.float64))
    # Output axis first: then the input axis is 1 for every weight layout (Conv [O, I, ...], ConvTranspose,
    # Gemm with or without transB, MatMul).
    w = np.moveaxis(w, producer.axis, 0)
    w = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) if w.ndim > 2 else w
    out_groups = np.unique(producer.groups[producer.groups >= 0])
    out_index = np.searchsorted(out_groups, producer.groups)
    if consumer is None:
        return np.zeros((len(out_groups), 0)), out_groups, np.zeros(0, np.int64)
    in_ids = consumer.groups
    in_groups = np.unique(in_ids[in_ids >= 0])
    matrix = np.zeros((len(out_groups), len(in_groups)))
    valid_in = in_ids >= 0
    aggregated = np.zeros((w.shape[0], len(in_groups)))
    np.add.at(aggregated.T, np.searchsorted(in_groups, in_ids[valid_in]), w[:, valid_in].T)
    valid_out = producer.groups >= 0
    np.add.at(matrix, out_index[valid_out], aggregated[valid_out])
    return matrix, out_groups, in_groups


def build_graphs(lm: LoadedModel, nmap: NeuronMap, signals: GroupSignals,
                 config: GraphConfig = GraphConfig()) -> list[Data]:
    """One graph per layer that has prunable groups. ``data.group`` maps nodes to groups (−1: context)."""
    prunable = nmap.prunable
    depth = {layer.name: layer.index / max(1, len(nmap.layers) - 1) for layer in nmap.layers}
    graphs = []
    for layer in nmap.layers:
        matrix, own, inputs = _connection_matrix(lm, nmap, layer)
        if not prunable[own].any():
            continue
        n_own, n_in = len(own), len(inputs)
        features = np.concatenate([signals.values[own], signals.values[inputs]], axis=0) if n_in else \
            signals.values[own]
        features = _standardise(features.astype(np.float64))
        role = np.concatenate([np.ones(n_own), np.zeros(n_in)])[:, None]
        fc = np.full((n_own + n_in, 1), 0.0 if layer.kind == "conv" else 1.0)
        where = np.full((n_own + n_in, 1), depth[layer.name])
        x = np.concatenate([features, role, fc, where], axis=1)

        src, dst, weight = [], [], []
        if n_in:
            strength = matrix / max(matrix.max(), 1e-12)
            rows, cols = np.nonzero(strength > 0)
            src += (cols + n_own).tolist()  # input group -> own group
            dst += rows.tolist()
            weight += strength[rows, cols].tolist()
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            cosine = (matrix / np.maximum(norms, 1e-12)) @ (matrix / np.maximum(norms, 1e-12)).T
            np.fill_diagonal(cosine, -1)
            k = min(config.top_k, n_own - 1)
            if k > 0:
                nearest = np.argpartition(-cosine, k - 1, axis=1)[:, :k]
                for i in range(n_own):
                    for j in nearest[i]:
                        if cosine[i, j] >= config.similarity:
                            src.append(int(j))
                            dst.append(i)
                            weight.append(float(cosine[i, j]))
        group = np.concatenate([np.where(prunable[own], own, -1), np.full(n_in, -1)])
        graphs.append(Data(x=torch.tensor(x, dtype=torch.float32),
                           edge_index=torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
                           edge_weight=torch.tensor(weight, dtype=torch.float32),
                           group=torch.tensor(group, dtype=torch.long), layer=layer.name,
                           own_groups=torch.tensor(own, dtype=torch.long),
                           context_groups=torch.tensor(inputs, dtype=torch.long)))
    return graphs


def batch_graphs(graphs: list[Data]) -> Batch:
    return Batch.from_data_list(graphs)
