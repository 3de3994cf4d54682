"""Stage 3: one onnxruntime session that scores any pruning mask.

The instrumented copy of the graph gets one extra input, ``onp_mask`` of shape [N, groups]: a keep-value per
sample and group (1 keeps, 0 prunes). At every mask site of the neuron map the tensor is multiplied by the
entries of its groups, gathered from that input. Because the mask is per sample, one run can score many masks
at once (the data repeated once per mask), and the session never has to be rebuilt.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..load.loader import LoadedModel
from ..neuron_map import NeuronMap
from ..runtime import make_session
from .resume import MASK_INPUT, ResumeCache


def instrument(lm: LoadedModel, nmap: NeuronMap, extra_outputs: list[str] = ()) -> onnx.ModelProto:
    """A copy of the model with the mask input wired into every mask site (and chosen tensors as outputs)."""
    model = copy.deepcopy(lm.model)
    graph = model.graph
    n_groups = nmap.num_groups
    graph.input.append(helper.make_tensor_value_info(MASK_INPUT, TensorProto.FLOAT, ["N", n_groups]))
    new_nodes = []
    renamed: dict[str, str] = {}
    for k, site in enumerate(nmap.mask_sites):
        prefix = f"onp_mask/site{k}"
        # Elements with no prunable group gather column 0 and are set back to exactly 1 (flat·(1 − f) + f, f = 1
        # there): keep-values may exceed 1 under the perturbation probe. Plain Gather/Mul/Add/Reshape, which
        # every opset since 8 has.
        index = np.maximum(site.groups, 0).astype(np.int64)
        floor = (site.groups < 0).astype(np.float32).reshape(1, -1)
        shape = np.array((-1,) + index.shape[1:], np.int64)
        graph.initializer.append(numpy_helper.from_array(index.reshape(-1), f"{prefix}/index"))
        graph.initializer.append(numpy_helper.from_array(floor, f"{prefix}/floor"))
        graph.initializer.append(numpy_helper.from_array(1 - floor, f"{prefix}/grouped"))
        graph.initializer.append(numpy_helper.from_array(shape, f"{prefix}/shape"))
        new_nodes.append(helper.make_node("Gather", [MASK_INPUT, f"{prefix}/index"], [f"{prefix}/flat"], axis=1,
                                          name=f"{prefix}/Gather"))
        if floor.any():
            new_nodes.append(helper.make_node("Mul", [f"{prefix}/flat", f"{prefix}/grouped"], [f"{prefix}/only"],
                                              name=f"{prefix}/MulGrouped"))
            new_nodes.append(helper.make_node("Add", [f"{prefix}/only", f"{prefix}/floor"], [f"{prefix}/lifted"],
                                              name=f"{prefix}/AddFloor"))
        new_nodes.append(helper.make_node("Reshape", [f"{prefix}/lifted" if floor.any() else f"{prefix}/flat",
                                                      f"{prefix}/shape"], [f"{prefix}/mask"],
                                          name=f"{prefix}/Reshape"))
        mask = f"{prefix}/mask"
        dtype = lm.dtypes.get(site.tensor, np.dtype(np.float32))
        if dtype != np.float32:
            to = helper.np_dtype_to_tensor_dtype(dtype)
            new_nodes.append(helper.make_node("Cast", [mask], [f"{prefix}/cast"], to=to, name=f"{prefix}/Cast"))
            mask = f"{prefix}/cast"
        masked = masked_name(nmap, site.tensor)
        new_nodes.append(helper.make_node("Mul", [site.tensor, mask], [masked], name=f"{prefix}/Mul"))
        renamed[site.tensor] = masked

    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in renamed:
                node.input[slot] = renamed[name]
    # Mask-building nodes need only the mask input: they go first. Each Mul goes right after the node that
    # makes its tensor, so the graph stays topologically sorted.
    head = [n for n in new_nodes if n.op_type != "Mul"]
    muls = {n.input[0]: n for n in new_nodes if n.op_type == "Mul"}
    ordered = list(head)
    for node in graph.node:
        ordered.append(node)
        ordered.extend(muls.pop(out) for out in node.output if out in muls)
    del graph.node[:]
    graph.node.extend(ordered)
    existing = {o.name for o in graph.output}
    for name in extra_outputs:
        name = masked_name(nmap, name)
        if name not in existing:
            graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    return model


def masked_name(nmap: NeuronMap, tensor: str) -> str:
    """The name under which the instrumented model holds ``tensor`` after masking."""
    return f"{tensor}/onp_masked" if any(site.tensor == tensor for site in nmap.mask_sites) else tensor


@dataclass
class Scores:
    """What one mask does on a labelled dataset."""

    accuracy: float
    loss: float  # mean cross-entropy
    predictions: np.ndarray
    seconds: float


class MaskedEvaluator:
    """Scores pruning masks on data with a single onnxruntime session.

    Masks are boolean vectors over the neuron map's groups, True = pruned. Inputs are preprocessed arrays in
    the model's layout. ``multipliers`` ([N, groups], optional) scale the kept groups per sample: the
    neuron-perturbation probe runs clean images through the model with its groups multiplied by (1 + δ).
    """

    def __init__(self, lm: LoadedModel, nmap: NeuronMap, *, provider: str = "auto", extra_outputs=(),
                 batch_size: int = 256):
        self.lm = lm
        self.nmap = nmap
        self.extra_outputs = list(extra_outputs)
        self.model = instrument(lm, nmap, self.extra_outputs)
        self.session, self.provider = make_session(self.model, provider, what=str(lm.path or "model"))
        self.provider_choice = provider
        self.output_names = [lm.output_name] + [masked_name(nmap, t) for t in self.extra_outputs]
        self.batch_size = lm.batch_within_memory(batch_size)
        self._seconds_full = 0.0  # in the instrumented session
        self._seconds_resumed_before = 0.0  # in resume caches already dropped
        self.runs = 0
        self.resume = None  # a ResumeCache while enable_resume() is in effect

    @property
    def seconds_in_runtime(self) -> float:
        return self._seconds_full + (self.resume.seconds_in_runtime if self.resume is not None else 0.0) + \
            self._seconds_resumed_before

    def enable_resume(self, max_bytes: int, probe_input: np.ndarray) -> bool:
        """From now on, score masks resuming part-way through the network where an earlier run under the same
        mask entries left its cut tensors (instrument/resume.py). False where the model cannot (a fixed batch
        size, subgraphs, no level with a per-image cut) or resume is already on (whoever turned it on turns it off).
        """
        if self.lm.batch_fixed or self.resume is not None:
            return False
        cache = ResumeCache(self.model, self.nmap, self.lm.output_name, self.provider_choice, max_bytes=max_bytes,
                            probe_input=np.ascontiguousarray(probe_input[:1], dtype=self.lm.input_dtype),
                            input_name=self.lm.input_name, batch_size=self.batch_size)
        if not cache.levels:
            return False
        self.resume = cache
        return True

    def disable_resume(self) -> dict | None:
        """Drop the cached tensors and sessions; return what they did (None if resume was off)."""
        if self.resume is None:
            return None
        cache, self.resume = self.resume, None
        self._seconds_resumed_before += cache.seconds_in_runtime
        return {"levels": len(cache.levels), "runs_resumed": cache.resumed, "runs_from_input": cache.full,
                "seconds_in_runtime": round(cache.seconds_in_runtime, 2)}

    def _keep(self, mask, rows: int, multipliers=None) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.ndim == 1:
            keep = (~self.nmap.check_mask(mask)).astype(np.float32)
            keep = np.broadcast_to(keep, (rows, keep.shape[0]))
        else:
            keep = (~mask.astype(bool)).astype(np.float32)
        if multipliers is not None:
            keep = keep * np.asarray(multipliers, dtype=np.float32)
        return np.ascontiguousarray(keep)

    def run(self, x: np.ndarray, mask=None, *, multipliers=None, with_extras: bool = False):
        """Model outputs for a batch under a mask (one mask, or one per sample as an [N, groups] array)."""
        mask = self.nmap.empty_mask() if mask is None else mask
        rows = x.shape[0]
        x, keep = fill_fixed_batch(np.ascontiguousarray(x, dtype=self.lm.input_dtype),
                                   self._keep(mask, rows, multipliers), fixed=self.lm.batch_fixed)
        start = time.perf_counter()
        outputs = self.session.run(self.output_names if with_extras else [self.lm.output_name],
                                   {self.lm.input_name: x, MASK_INPUT: keep})
        self._seconds_full += time.perf_counter() - start
        self.runs += 1
        outputs = [out[:rows] for out in outputs]
        outputs[0] = outputs[0].reshape(outputs[0].shape[0], -1)  # [N, K, 1, 1] class maps count as [N, K]
        return outputs if with_extras else outputs[0]

    def logits(self, x: np.ndarray, mask=None, multipliers=None) -> np.ndarray:
        """Model outputs over a whole array, in batches."""
        b = self.batch_size
        parts = [self.run(x[i:i + b], mask, multipliers=None if multipliers is None else multipliers[i:i + b])
                 for i in range(0, len(x), b)]
        return np.concatenate(parts) if parts else np.zeros((0, self.lm.num_classes), np.float32)

    def activations(self, x: np.ndarray, mask=None) -> dict[str, np.ndarray]:
        """The chosen extra outputs (after masking) over a whole array."""
        if not self.extra_outputs:
            return {}
        chunks = [self.run(x[i:i + self.batch_size], mask, with_extras=True)[1:]
                  for i in range(0, len(x), self.batch_size)]
        return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(self.extra_outputs)}

    def score(self, x: np.ndarray, y: np.ndarray, mask=None, multipliers=None) -> Scores:
        start = time.perf_counter()
        out = self.logits(x, mask, multipliers)
        return self._scores(out, y, time.perf_counter() - start)

    def score_many(self, x: np.ndarray, y: np.ndarray, masks: np.ndarray, multipliers=None) -> list[Scores]:
        """Score several masks; rows from different masks share runs (the data repeated per mask).

        ``multipliers`` ([len(x), groups]) scale every mask's kept groups per sample, the same for each mask.
        """
        masks = np.asarray(masks, dtype=bool)
        for mask in masks:
            self.nmap.check_mask(mask)
        n = len(x)
        if self.resume is not None and n:
            data = self.resume.data_key(x, multipliers)
            x = np.ascontiguousarray(x, dtype=self.lm.input_dtype)
            results = []
            for mask in masks:
                start = time.perf_counter()
                out = self.resume.logits(x, mask, self._keep(mask, n, multipliers), data)
                out = out.reshape(out.shape[0], -1)
                self.runs += 1
                results.append(self._scores(out, y, time.perf_counter() - start))
            return results
        if self.lm.batch_fixed or n >= self.batch_size:
            return [self.score(x, y, m, multipliers) for m in masks]
        per_run = max(1, self.batch_size // max(n, 1))
        results = []
        for i in range(0, len(masks), per_run):
            chunk = masks[i:i + per_run]
            start = time.perf_counter()
            out = self.run(np.concatenate([x] * len(chunk)), np.repeat(chunk, n, axis=0),
                           multipliers=None if multipliers is None else np.concatenate([multipliers] * len(chunk)))
            seconds = (time.perf_counter() - start) / len(chunk)
            results.extend(self._scores(out[k * n:(k + 1) * n], y, seconds) for k in range(len(chunk)))
        return results

    def _scores(self, out: np.ndarray, y: np.ndarray, seconds: float) -> Scores:
        predictions = out.argmax(axis=1)
        accuracy = float((predictions == y).mean()) if len(y) else float("nan")
        return Scores(accuracy=accuracy, loss=cross_entropy(out, y, self.lm.output_is_probability),
                      predictions=predictions, seconds=seconds)


def fill_fixed_batch(x: np.ndarray, *others: np.ndarray, fixed: int | None = None):
    """Pad a batch smaller than a model's fixed batch size by repeating its last row (the extra rows' outputs
    are dropped), so that the last, partial batch of a model declared for N=3 still runs."""
    if not fixed or len(x) >= fixed or not len(x):
        return (x, *others)
    pad = fixed - len(x)
    return tuple(np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in (x, *others))


def cross_entropy(out: np.ndarray, y: np.ndarray, is_probability: bool) -> float:
    if not len(y):
        return float("nan")
    out = out.astype(np.float64)
    if is_probability:
        log_p = np.log(np.clip(out, 1e-12, None))
    else:
        shifted = out - out.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())
