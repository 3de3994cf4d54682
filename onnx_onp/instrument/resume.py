"""Resuming masked evaluation part-way through the network.

What a layer computes depends only on the mask entries of the mask sites before it. The searches score long
runs of masks that differ late in the network: the signal walk tries the accepted mask plus one group, the
prune-back the mask less one group, the per-layer signal masks touch one layer. So each run keeps the tensors
that cross each mask site's cut ("where the network can resume"), keyed by the data and by the mask entries
that produced them, and a later mask that agrees on those entries runs only the part after the cut.

Each level is one mask site: the run resumes right before that site's multiplication. The suffix from a
level is a separate onnxruntime session (built when first needed) whose inputs are the level's cut tensors
and the mask input, and whose outputs are the model's output and the later levels' cut tensors. A level is
used only where every cut tensor has one row per image (a Shape output's value does not follow the batch, so
such a level is left out). Results match the full instrumented model's (tests/test_resume.py); the cache is
bounded in bytes, least recently used first out.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..runtime import make_session

MASK_INPUT = "onp_mask"  # the instrumented model's extra input: a keep-value per sample and group
SUFFIX_ARENA = False  # onnxruntime's memory arena for the level sessions (experiments/resume_memory.py)
REFERENCE_ROWS = 512  # images per scored array the memory plan allows for (the prune-back scores 500 clean ones)


@dataclass
class Level:
    site: int  # the mask site whose multiplication the run resumes at
    cut: list[str]  # tensors made before the cut and used after it
    groups_before: np.ndarray  # groups with a mask site before the cut: the mask entries the cut tensors depend on
    nodes: list[int]  # positions (in the instrumented graph) of the nodes run after the cut


def plan_levels(model: onnx.ModelProto, nmap, output_name: str) -> list[Level]:
    """The levels of an instrumented model, in graph order (empty where the graph has subgraphs: their
    outer-scope references are not followed)."""
    nodes = list(model.graph.node)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return []
    initializers = {t.name for t in model.graph.initializer}
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    # Tensors computed from the mask input and constants alone (the mask-building chains).
    from_mask = {MASK_INPUT}
    for node in nodes:
        inputs = [t for t in node.input if t and t not in initializers]
        if inputs and all(t in from_mask for t in inputs):
            from_mask.update(node.output)
    position = {}
    for i, node in enumerate(nodes):
        if node.name.startswith("onp_mask/site") and node.name.endswith("/Mul"):
            position[int(node.name[len("onp_mask/site"):-len("/Mul")])] = i
    site_groups = [np.unique(site.groups[site.groups >= 0]) for site in nmap.mask_sites]
    levels = []
    for site in sorted(position, key=position.get):
        start = position[site]
        active = [i for k, i in position.items() if i >= start]
        # Nodes downstream of the sites from the cut on: all that can change with their mask entries.
        variable, stack = set(), list(active)
        while stack:
            i = stack.pop()
            if i in variable:
                continue
            variable.add(i)
            for out in nodes[i].output:
                stack.extend(consumers.get(out, []))
        if output_name not in {o for i in variable for o in nodes[i].output}:
            continue
        cut, chain = [], set()
        for i in sorted(variable):
            for name in nodes[i].input:
                if not name or name in initializers or (name in producer and producer[name] in variable):
                    continue
                if name in from_mask:
                    chain.add(name)
                elif name not in cut:
                    cut.append(name)
        # The mask chains the suffix needs, back to the mask input.
        needed, stack = set(), [producer[t] for t in chain if t in producer]
        while stack:
            i = stack.pop()
            if i in needed:
                continue
            needed.add(i)
            stack.extend(producer[t] for t in nodes[i].input if t in producer and t in from_mask)
        before = np.zeros(nmap.num_groups, dtype=bool)
        for k, i in position.items():
            if i < start:
                before[site_groups[k]] = True
        levels.append(Level(site=site, cut=cut, groups_before=before, nodes=sorted(variable | needed)))
    return levels


class ResumeCache:
    """Cut tensors by (data, level, the mask entries before the level), and the sessions that resume from them."""

    def __init__(self, model: onnx.ModelProto, nmap, output_name: str, provider: str, *, max_bytes: int,
                 probe_input: np.ndarray, input_name: str, batch_size: int):
        self.model, self.nmap, self.output_name = model, nmap, output_name
        self.provider, self.max_bytes = provider, max_bytes
        self.batch_size = batch_size  # entries hold one array per batch of this many rows
        self.input_name = input_name
        self.levels = plan_levels(model, nmap, output_name)
        self.entries: OrderedDict = OrderedDict()
        self.bytes = 0
        self.sessions: dict[int, object] = {}
        self.seconds_in_runtime = 0.0
        self.resumed = self.full = 0  # runs resumed at a level / run from the input
        self.last_start = None  # the site the last run resumed at (None: the input)
        self.types: dict[str, tuple] = {}
        self.outputs_of: dict[int, list[str]] = {}  # per start level (-1: the input), the cut tensors a run returns
        self._full_outputs: list[str] = []
        if self.levels:
            self._learn_types(probe_input)

    def _learn_types(self, probe_input: np.ndarray) -> None:
        """Run 2 and 3 images through the model with every cut as an output: a level whose cut tensors do
        not have one row per image cannot be resumed from with other batch sizes, so it is dropped."""
        wanted = sorted({t for level in self.levels for t in level.cut if t != self.input_name})
        session = self._session_for(None, wanted)
        shapes = {}
        for rows in (2, 3):
            x = np.repeat(probe_input[:1], rows, axis=0)
            feeds = {self.input_name: x, MASK_INPUT: np.ones((rows, self.nmap.num_groups), np.float32)}
            outs = session.run(wanted, feeds)
            for name, value in zip(wanted, outs):
                shapes.setdefault(name, []).append(value.shape)
                self.types[name] = (value.dtype, value.shape[1:])
        self.types[self.input_name] = (probe_input.dtype, probe_input.shape[1:])
        ok = {name for name, (a, b) in shapes.items() if len(a) and a[0] == 2 and len(b) and b[0] == 3}
        ok.add(self.input_name)
        self.levels = [level for level in self.levels if all(t in ok for t in level.cut)]
        # Every run from the input returns all later cuts: the earliest levels (the largest tensors, and the
        # least to save) go first until one run's cuts for REFERENCE_ROWS images take at most half the budget.
        per_image = {name: np.dtype(dtype).itemsize * int(np.prod(shape)) for name, (dtype, shape) in self.types.items()}
        while self.levels:
            tensors = {t for level in self.levels for t in level.cut if t != self.input_name}
            if sum(per_image[t] for t in tensors) * REFERENCE_ROWS <= self.max_bytes // 2:
                break
            self.levels.pop(0)
        self._full_outputs = sorted({t for level in self.levels for t in level.cut if t != self.input_name})

    def _session_for(self, level: Level | None, extra_outputs: list[str]):
        """The model from ``level`` on (None: from the input) with ``extra_outputs`` added."""
        model = copy.deepcopy(self.model)
        graph = model.graph
        if level is not None:
            keep = [graph.node[i] for i in level.nodes]
            used = {t for node in keep for t in node.input}
            inits = [t for t in graph.initializer if t.name in used]
            inputs = [helper.make_tensor_value_info(MASK_INPUT, onnx.TensorProto.FLOAT, ["N", self.nmap.num_groups])]
            for name in level.cut:
                dtype, shape = self.types[name]
                inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype),
                                                            ["N", *shape]))
            del graph.node[:]
            graph.node.extend(keep)
            del graph.initializer[:]
            graph.initializer.extend(inits)
            del graph.input[:]
            graph.input.extend(inputs)
            del graph.value_info[:]
        outputs = [o for o in graph.output if o.name == self.output_name]
        del graph.output[:]
        graph.output.extend(outputs)
        for name in extra_outputs:
            graph.output.append(onnx.ValueInfoProto(name=name))
        # No memory arena: each of the many sessions would keep its largest run's activations for good
        # (experiments/resume_memory.py measures both ways).
        session, _ = make_session(model, self.provider, what="resumable model", arena=SUFFIX_ARENA)
        return session

    def _produced_after(self, level: Level | None) -> list[str]:
        """Later levels' cut tensors the run from ``level`` makes itself (the others it was given)."""
        key = -1 if level is None else level.site
        if key not in self.outputs_of:
            if level is None:
                self.outputs_of[key] = self._full_outputs
            else:
                made = {o for i in level.nodes for o in self.model.graph.node[i].output}
                self.outputs_of[key] = sorted({t for other in self.levels for t in other.cut if t in made})
        return self.outputs_of[key]

    def session(self, level: Level | None):
        key = -1 if level is None else level.site
        if key not in self.sessions:
            self.sessions[key] = self._session_for(level, self._produced_after(level))
        return self.sessions[key]

    @staticmethod
    def data_key(x: np.ndarray, multipliers) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(str((x.shape, x.dtype)).encode())
        h.update(np.ascontiguousarray(x).data)
        if multipliers is not None:
            h.update(np.ascontiguousarray(multipliers, dtype=np.float32).data)
        return h.digest()

    @staticmethod
    def _mask_key(mask: np.ndarray, level: Level) -> bytes:
        return np.packbits(mask[level.groups_before]).tobytes()

    def logits(self, x: np.ndarray, mask: np.ndarray, keep: np.ndarray, data: bytes) -> np.ndarray:
        """The model's output for ``x`` under one mask (``keep``: its per-row keep-values), resumed at the
        deepest level whose cut tensors are cached for this data and this mask, and caching the later ones.
        Entries hold one array per batch and cut tensor: the batches are always the same rows, so nothing is
        concatenated."""
        batch_size = self.batch_size
        starts = range(0, len(x), batch_size)
        start_level, given = None, [{self.input_name: x[i:i + batch_size]} for i in starts]
        for position in range(len(self.levels) - 1, -1, -1):
            level = self.levels[position]
            key = (data, level.site, self._mask_key(mask, level))
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
                start_level, given = position, [dict(zip(level.cut, chunk)) for chunk in entry]
                break
        level = None if start_level is None else self.levels[start_level]
        session = self.session(level)
        produced = self._produced_after(level)
        inputs = [self.input_name] if level is None else level.cut
        outputs, tensors = [], []
        started = time.perf_counter()
        for chunk, i in zip(given, starts):
            feeds = {name: chunk[name] for name in inputs}
            feeds[MASK_INPUT] = keep[i:i + batch_size]
            result = session.run([self.output_name] + produced, feeds)
            outputs.append(result[0])
            tensors.append({**chunk, **dict(zip(produced, result[1:]))})
        self.seconds_in_runtime += time.perf_counter() - started
        self.last_start = None if level is None else level.site
        if level is None:
            self.full += 1
        else:
            self.resumed += 1
        first_new = 0 if start_level is None else start_level + 1
        for deeper in self.levels[first_new:]:
            self._store((data, deeper.site, self._mask_key(mask, deeper)),
                        [[chunk[t] for t in deeper.cut] for chunk in tensors])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _store(self, key, chunks: list[list[np.ndarray]]) -> None:
        size = sum(a.nbytes for arrays in chunks for a in arrays)
        if key in self.entries or size > self.max_bytes // 4:
            return
        self.entries[key] = chunks
        self.bytes += size
        while self.bytes > self.max_bytes and self.entries:
            _, old = self.entries.popitem(last=False)
            self.bytes -= sum(a.nbytes for arrays in old for a in arrays)
