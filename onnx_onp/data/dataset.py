"""Image datasets as users hand them to onnx-onp: an ``.npz`` archive or a folder of class sub-folders.

Everything downstream (triggers, preprocessing, evaluation) sees one shape convention, raw N×H×W×C
images, so this module is the only place that has to know about the many ways images get stored.
Every problem with the user's data becomes a one-line ``DataError`` that names the file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from onnx_onp.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".gif", ".webp"})
_GRAY_MODES = frozenset({"1", "L"})


@dataclass
class Dataset:
    """Raw images (N×H×W×C, uint8 or float as stored) with optional int64 labels.

    ``source`` names where the images came from, so later errors can point the user at the file.
    """

    x: np.ndarray
    y: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise DataError(f"{self.source}: images must be N×H×W×C, got shape {tuple(self.x.shape)}")
        if self.y is not None and len(self.y) != len(self.x):
            raise DataError(f"{self.source}: {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, indices: np.ndarray | Iterable[int]) -> Dataset:
        """The images at ``indices`` (in that order), labels kept aligned."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(self.x[idx], None if self.y is None else self.y[idx], self.source)

    def take(self, n: int, seed: int = 0) -> Dataset:
        """A seeded random subset of ``n`` images (all of them if ``n >= len``), in original order."""
        return self.subset(sample_indices(len(self), n, seed))

    def split(self, n_first: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Shuffle with ``seed`` and cut after ``n_first`` images, e.g. GTSRB test into train/test parts."""
        if not 0 <= n_first <= len(self):
            raise DataError(f"{self.source}: cannot split {len(self)} images after {n_first}")
        order = np.random.default_rng(seed).permutation(len(self))
        return self.subset(order[:n_first]), self.subset(order[n_first:])

    def filter_labels(self, exclude: int | Iterable[int]) -> Dataset:
        """Drop the images whose label is in ``exclude`` (ASR is measured on non-target images only)."""
        y = self.require_labels()
        return self.subset(np.flatnonzero(~np.isin(y, np.atleast_1d(np.asarray(exclude)))))

    def require_labels(self) -> np.ndarray:
        """The labels, or a DataError for commands that cannot work without them."""
        if self.y is None:
            raise DataError(f"{self.source}: the dataset has no labels ('y')")
        return self.y

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Consecutive (x, y) slices of at most ``batch_size`` images; y is None for unlabelled data."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.x[start:stop], None if self.y is None else self.y[start:stop]


def sample_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """Sorted seeded choice of ``n`` of ``range(n_total)`` without replacement (all if ``n >= n_total``)."""
    if n < 0:
        raise ValueError(f"cannot take a negative number of images ({n})")
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def load_dataset(
    path: str | Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    x_key: str = "x",
    y_key: str = "y",
) -> Dataset:
    """Load an ``.npz`` file or an image folder into a :class:`Dataset`.

    ``.npz``: ``x`` as N×H×W×C, N×C×H×W (when dim 1 is 1 or 3 and the last dim is not) or N×H×W
    (grayscale); ``y`` (optional) as integer labels or one-hot rows. Pickled arrays are refused.

    Folder: one sub-folder per class, sorted names give classes 0..K-1. Images are converted to RGB
    unless all are grayscale (then C=1), and every image is resized (Pillow bilinear) to the size of
    the first one, so mixed sizes load without error.

    ``limit`` keeps a seeded random subset of that many images (same choice as ``take(limit, seed)``).
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise DataError(f"{path}: limit must be at least 1, got {limit}")
    if path.is_dir():
        dataset = _load_folder(path, limit, seed)
    elif path.is_file():
        dataset = _load_npz(path, x_key, y_key)
        if limit is not None:
            dataset = dataset.take(limit, seed)
    else:
        raise DataError(f"{path}: no such file or folder")
    if len(dataset) == 0:
        raise DataError(f"{path}: the dataset is empty (0 images)")
    return dataset


def check_labels(dataset: Dataset, num_classes: int) -> None:
    """Fail early when labels cannot belong to a model with ``num_classes`` outputs (no-op if unlabelled)."""
    if dataset.y is None or len(dataset.y) == 0:
        return
    low, high = int(dataset.y.min()), int(dataset.y.max())
    if high >= num_classes:
        raise DataError(
            f"{dataset.source}: labels out of range: max label {high} but the model has {num_classes} classes"
        )
    if low < 0:
        raise DataError(f"{dataset.source}: labels out of range: min label {low} is negative")


def _load_npz(path: Path, x_key: str, y_key: str) -> Dataset:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (expected a NumPy .npz archive or an image folder)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            if x_key not in keys:
                raise DataError(f"{path}: no '{x_key}' array in the .npz (found: {', '.join(keys) or 'nothing'})")
            x = archive[x_key]
            y = archive[y_key] if y_key in keys else None
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        # ValueError includes object arrays, which would need pickle (refused on purpose).
        raise DataError(f"{path}: unreadable .npz ({exc})") from exc
    x = _images_to_nhwc(x, path, x_key)
    if y is not None:
        y = _labels_to_int64(y, path, y_key)
    return Dataset(x, y, str(path))


def _images_to_nhwc(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Bring stored images to N×H×W×C with uint8 (or the stored float) values."""
    if x.dtype.kind not in "uif":
        raise DataError(f"{path}: '{key}' has dtype {x.dtype}; expected uint8 or float images")
    if x.ndim == 3:
        x = x[..., None]
    elif x.ndim == 4:
        if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
            x = x.transpose(0, 2, 3, 1)
    else:
        raise DataError(f"{path}: '{key}' has shape {x.shape}; expected N×H×W×C, N×C×H×W or N×H×W images")
    if x.dtype.kind == "f":
        if x.size and not np.isfinite(x).all():
            raise DataError(f"{path}: '{key}' contains NaN or infinite values")
    elif x.dtype != np.uint8:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{path}: '{key}' has integer values outside 0..255")
        x = x.astype(np.uint8)
    return np.ascontiguousarray(x)


def _labels_to_int64(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Integer class labels from 1-D labels, N×1 columns or one-hot / score rows (argmax)."""
    if y.ndim == 2:
        y = y[:, 0] if y.shape[1] == 1 else y.argmax(axis=1)
    elif y.ndim != 1:
        raise DataError(f"{path}: '{key}' has shape {y.shape}; expected 1-D labels or one-hot rows")
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DataError(f"{path}: '{key}' has non-integer labels")
    elif y.dtype.kind not in "ui":
        raise DataError(f"{path}: '{key}' has non-integer labels (dtype {y.dtype})")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{path}: '{key}' has negative labels (min {int(y.min())})")
    return y


def _load_folder(path: Path, limit: int | None, seed: int) -> Dataset:
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{path}: no class sub-folders (expected one sub-folder of images per class)")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.iterdir()):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(label)
    if not files:
        raise DataError(f"{path}: no images in the class sub-folders ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if limit is not None:
        keep = sample_indices(len(files), limit, seed)
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]

    size: tuple[int, int] | None = None  # Pillow (W, H) of the first image
    arrays: list[np.ndarray] = []
    for file in files:
        image = _read_image(file)
        size = size or image.size
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    if all(a.ndim == 2 for a in arrays):
        x = np.stack(arrays)[..., None]
    else:
        x = np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays])
    return Dataset(x, np.asarray(labels, dtype=np.int64), str(path))


def _read_image(file: Path) -> Image.Image:
    """Decode one image as 'L' (grayscale) or 'RGB'; any decoding problem names the file."""
    try:
        with Image.open(file) as image:
            image.load()
            return image.convert("L" if image.mode in _GRAY_MODES else "RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{file}: unreadable image ({exc})") from exc
