"""Benchmark cases: a model, its spec (preprocessing, trigger, target) and the dataset it was trained on.

Two families, in two splits:

- fixtures: ``fixtures/models/NAME.json`` with ``NAME.onnx`` beside it; the dataset is the JSON's
  ``training.dataset``. These are the *dev* split (anything may be tuned on them), except a JSON that says
  ``"split": "test"``.
- test models: ``fixtures/test_models/NAME.json`` (built once by ``fixtures/zoo/build_test_set.sh``): the *test*
  split, only ever reported, never tuned on.
- real models: ``../shared/real_models/NAME.json`` with ``NAME.onnx``; the dataset is read off the name
  (``mnist``, ``gtsrb``, ``cifar10``). Their split is ``dev``: the method was developed looking at them.

Data is read in place from ``../shared/data`` (never copied). The splits (defense pool / test):

- cifar10: ``cifar10_train.npz`` / ``cifar10_test.npz``.
- gtsrb: ``gtsrb_test.npz`` cut with ``Dataset.split(10000, seed=0)``: the first part is the training split
  (the defense pool), the rest the test split, exactly as ``fixtures/zoo/train.py`` trains on it.
- mnist: only ``mnist_test.npz`` is packed; ``Dataset.split(2000, seed=0)`` gives a fixed pool of 2,000 defense
  images (draws of 500 from it differ) and a test split of the other 8,000, whatever ``--seed`` is. The real models' reference numbers
  were measured on all 10,000, so the ``none`` row differs slightly from them.

The defense data is ``pool.take(defense_size, draw)`` for each draw seed, the test data
``test.take(test_limit, seed)``: the same test subset for every draw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data import Dataset, load_dataset
from ..errors import DataError

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
FIXTURE_MODELS = REPO / "fixtures" / "models"
TEST_MODELS = REPO / "fixtures" / "test_models"

# Must stay equal to fixtures/zoo/train.py's GTSRB_TRAIN and GTSRB_SPLIT_SEED (a test checks it).
GTSRB_TRAIN, GTSRB_SPLIT_SEED = 10_000, 0
# 2,000: three draws of 500 must be three different sets (a 500-image pool gave the same images every draw)
MNIST_DEFENSE_POOL, MNIST_SPLIT_SEED = 2_000, 0
DATASETS = ("cifar10", "gtsrb", "mnist")
FAMILIES = ("fixtures", "dev", "test", "real", "all")
SPLITS = ("dev", "test")


class UnknownCaseError(ValueError):
    """A case name that no fixture or real model has."""


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # "fixture" or "real"
    model: Path
    spec: Path
    dataset: str  # one of DATASETS
    split: str = "dev"  # "dev": may be tuned on; "test": only ever reported


def dataset_of(spec: dict, name: str) -> str:
    """The case's dataset: ``training.dataset`` of a fixture's JSON, else read off the model's name."""
    declared = (spec.get("training") or {}).get("dataset") or spec.get("dataset")
    if declared:
        if declared not in DATASETS:
            raise DataError(f"{name}: unknown dataset {declared!r} (known: {', '.join(DATASETS)})")
        return declared
    for dataset in DATASETS:
        if dataset in name.lower():
            return dataset
    raise DataError(f"{name}: cannot tell its dataset (no training.dataset in its JSON, no dataset in its name)")


def _cases_in(folder: Path, family: str, split: str = "dev") -> list[Case]:
    """Every NAME.json with a NAME.onnx in ``folder``; a JSON's own ``split`` overrides the folder's."""
    cases = []
    for spec_path in sorted(folder.glob("*.json")):
        model = spec_path.with_suffix(".onnx")
        if not model.is_file():
            continue
        try:
            spec = json.loads(spec_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{spec_path}: unreadable case file ({exc})") from None
        own = spec.get("split", split)
        if own not in SPLITS:
            raise DataError(f"{spec_path}: unknown split {own!r} (dev, test)")
        cases.append(Case(spec_path.stem, family, model, spec_path, dataset_of(spec, spec_path.stem), own))
    return cases


def discover_cases(which: str = "all", *, repo: Path = REPO, shared: Path | None = None) -> list[Case]:
    """Cases named by ``which``: a comma list of ``fixtures`` (every model in fixtures/models), ``dev`` (the dev
    split of the fixtures), ``test`` (the test split), ``real``, ``all`` (all of them) and case names."""
    shared = shared or repo.parent / "shared"
    fixtures = _cases_in(repo / "fixtures" / "models", "fixture")
    tests = _cases_in(repo / "fixtures" / "test_models", "fixture", "test") if (repo / "fixtures" / "test_models"
                                                                              ).is_dir() else []
    real = _cases_in(shared / "real_models", "real") if (shared / "real_models").is_dir() else []
    groups = {"fixtures": fixtures, "dev": [c for c in fixtures if c.split == "dev"],
              "test": [c for c in fixtures + tests if c.split == "test"], "real": real,
              "all": fixtures + tests + real}
    by_name: dict[str, Case] = {}
    for c in fixtures + tests + real:
        if c.name in by_name:
            raise DataError(f"two cases are named {c.name!r}: {by_name[c.name].spec} and {c.spec}")
        by_name[c.name] = c
    chosen: list[Case] = []
    for token in filter(None, (t.strip() for t in which.split(","))):
        if token in groups:
            picked = groups[token]
        elif token in by_name:
            picked = [by_name[token]]
        else:
            raise UnknownCaseError(f"unknown case {token!r}: use {', '.join(FAMILIES)} or one of "
                                   f"{', '.join(sorted(by_name)) or '(none found)'}")
        chosen.extend(c for c in picked if c not in chosen)
    return chosen


class DataSplits:
    """Loads each dataset's (defense pool, test) split once and hands out seeded subsets."""

    def __init__(self, data_dir: Path | None = None):
        self.data_dir = Path(data_dir) if data_dir else SHARED / "data"
        self._splits: dict[str, tuple[Dataset, Dataset]] = {}

    def splits(self, dataset: str) -> tuple[Dataset, Dataset]:
        if dataset not in self._splits:
            self._splits[dataset] = self._load(dataset)
        return self._splits[dataset]

    def _load(self, dataset: str) -> tuple[Dataset, Dataset]:
        if dataset == "cifar10":
            return (load_dataset(self.data_dir / "cifar10_train.npz"),
                    load_dataset(self.data_dir / "cifar10_test.npz"))
        if dataset == "gtsrb":
            return load_dataset(self.data_dir / "gtsrb_test.npz").split(GTSRB_TRAIN, seed=GTSRB_SPLIT_SEED)
        if dataset == "mnist":
            return load_dataset(self.data_dir / "mnist_test.npz").split(MNIST_DEFENSE_POOL, seed=MNIST_SPLIT_SEED)
        raise DataError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")

    def defense_and_test(self, dataset: str, defense_size: int, seed: int, test_limit: int | None = None, *,
                         test_seed: int | None = None) -> tuple[Dataset, Dataset]:
        """``defense_size`` images of the training split drawn with ``seed``, and the (optionally limited) test
        split, subset with ``test_seed`` (default ``seed``) so that draws can share one test subset."""
        pool, test = self.splits(dataset)
        defense = pool.take(defense_size, seed)
        if test_limit is not None:
            test = test.take(test_limit, seed if test_seed is None else test_seed)
        return defense, test

    def describe(self, dataset: str) -> str:
        return {
            "cifar10": "defense: cifar10_train.npz; test: cifar10_test.npz",
            "gtsrb": f"gtsrb_test.npz split({GTSRB_TRAIN}, seed={GTSRB_SPLIT_SEED}): defense from the first part, "
                     "test on the rest",
            "mnist": f"mnist_test.npz split({MNIST_DEFENSE_POOL}, seed={MNIST_SPLIT_SEED}): defense from the "
                     f"{MNIST_DEFENSE_POOL}, test on the rest",
        }[dataset]
