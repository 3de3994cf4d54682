"""Tests for onnx_onp.data: loading, preprocessing, triggers, specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_onp.data import (
    BlendTrigger,
    Dataset,
    PatchTrigger,
    Preprocess,
    SigTrigger,
    Spec,
    WaNetTrigger,
    check_labels,
    load_dataset,
    poison,
    trigger_from_dict,
)
from onnx_onp.errors import DataError

from .conftest import need

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_SPECS = sorted((SHARED / "real_models").glob("*.json"))


def _images(n: int = 6, h: int = 8, w: int = 8, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# ----- npz loading ---------------------------------------------------------------------------------


def test_load_npz_nhwc(tmp_path):
    x, y = _images(), np.arange(6, dtype=np.uint8) % 3
    ds = load_dataset(_save_npz(tmp_path / "d.npz", x=x, y=y))
    assert ds.x.shape == (6, 8, 8, 3) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.x, x)
    assert ds.y.dtype == np.int64 and ds.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.source == str(tmp_path / "d.npz") and len(ds) == 6


def test_load_npz_nchw_is_transposed(tmp_path):
    x = _images(h=10, w=12)
    ds = load_dataset(_save_npz(tmp_path / "d.npz", x=x.transpose(0, 3, 1, 2), y=np.zeros(6, np.int64)))
    assert ds.x.shape == (6, 10, 12, 3)
    np.testing.assert_array_equal(ds.x, x)
    assert ds.x.flags.c_contiguous


def test_load_npz_grayscale_gets_channel_axis(tmp_path):
    x = _images(c=1)[..., 0]
    ds = load_dataset(_save_npz(tmp_path / "d.npz", x=x, y=np.zeros(6, np.uint8)))
    assert ds.x.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(ds.x[..., 0], x)


def test_load_npz_label_forms(tmp_path):
    labels = np.array([2, 0, 1, 1, 0, 2])
    one_hot = np.eye(3, dtype=np.float32)[labels]
    assert load_dataset(_save_npz(tmp_path / "a.npz", x=_images(), y=one_hot)).y.tolist() == labels.tolist()
    column = labels[:, None]
    assert load_dataset(_save_npz(tmp_path / "b.npz", x=_images(), y=column)).y.tolist() == labels.tolist()
    floats = labels.astype(np.float64)
    assert load_dataset(_save_npz(tmp_path / "c.npz", x=_images(), y=floats)).y.tolist() == labels.tolist()


def test_load_npz_without_labels_and_other_dtypes(tmp_path):
    ds = load_dataset(_save_npz(tmp_path / "d.npz", x=_images().astype(np.int64)))
    assert ds.y is None and ds.x.dtype == np.uint8
    floats = _images().astype(np.float32) / 255
    ds = load_dataset(_save_npz(tmp_path / "f.npz", x=floats))
    assert ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.x, floats)


def test_load_npz_custom_keys_and_limit(tmp_path):
    path = _save_npz(tmp_path / "d.npz", images=_images(20), labels=np.arange(20))
    ds = load_dataset(path, x_key="images", y_key="labels", limit=5, seed=3)
    again = load_dataset(path, x_key="images", y_key="labels", limit=5, seed=3)
    assert len(ds) == 5 and ds.y.tolist() == again.y.tolist()
    assert ds.y.tolist() == sorted(set(ds.y.tolist()))  # distinct, original order
    assert load_dataset(path, x_key="images", y_key="labels", limit=5, seed=4).y.tolist() != ds.y.tolist()
    assert len(load_dataset(path, x_key="images", limit=100)) == 20


# ----- folder loading ------------------------------------------------------------------------------


def _write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_load_folder_rgb_with_mixed_sizes(tmp_path):
    first = _images(1, 6, 5)[0]
    _write_image(tmp_path / "cat" / "a.png", first)
    _write_image(tmp_path / "cat" / "b.PNG", _images(1, 12, 10)[0])
    _write_image(tmp_path / "dog" / "c.bmp", _images(1, 6, 5, 1)[0, ..., 0])  # grayscale becomes RGB
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(tmp_path)
    assert ds.x.shape == (3, 6, 5, 3) and ds.x.dtype == np.uint8
    assert ds.y.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(ds.x[0], first)
    assert (ds.x[2, ..., 0] == ds.x[2, ..., 2]).all()


def test_load_folder_grayscale(tmp_path):
    gray = _images(4, 7, 7, 1)[..., 0]
    for i, image in enumerate(gray):
        _write_image(tmp_path / f"class{i % 2}" / f"{i}.png", image)
    ds = load_dataset(tmp_path)
    assert ds.x.shape == (4, 7, 7, 1) and ds.y.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(ds.x[0, ..., 0], gray[0])
    assert len(load_dataset(tmp_path, limit=2, seed=1)) == 2


# ----- bad data ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((2, 4, 4, 3), np.uint8)}, "no 'x' array"),
        ({"x": np.zeros((3, 4, 4, 3), np.uint8), "y": np.zeros(2, np.int64)}, "3 images but 2 labels"),
        ({"x": np.zeros((0, 4, 4, 3), np.uint8), "y": np.zeros(0, np.int64)}, "empty (0 images)"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0.5, 1.0])}, "non-integer labels"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array(["a", "b"])}, "non-integer labels"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, -1])}, "negative labels"),
        ({"x": np.zeros((2, 48), np.uint8)}, "expected N×H×W×C"),
        ({"x": np.zeros((2, 4, 4, 3, 1), np.uint8)}, "expected N×H×W×C"),
        ({"x": np.full((2, 4, 4, 3), np.nan, np.float32)}, "NaN"),
        ({"x": np.full((2, 4, 4, 3), 300, np.int32)}, "outside 0..255"),
    ],
)
def test_bad_npz(tmp_path, arrays, message):
    path = _save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match="bad.npz") as info:
        load_dataset(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"text\.npz: not an \.npz file"):
        load_dataset(tmp_path / "text.npz")
    np.save(tmp_path / "plain.npy", np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="not an .npz file"):
        load_dataset(tmp_path / "plain.npy")
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickled.npz: unreadable .npz"):
        load_dataset(tmp_path / "pickled.npz")
    _save_npz(tmp_path / "ok.npz", x=_images())
    with pytest.raises(DataError, match="limit must be at least 1"):
        load_dataset(tmp_path / "ok.npz", limit=0)


def test_bad_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    _write_image(tmp_path / "flat" / "a.png", _images(1)[0])
    with pytest.raises(DataError, match="flat: no class sub-folders"):
        load_dataset(tmp_path / "flat")
    (tmp_path / "empty" / "class0").mkdir(parents=True)
    (tmp_path / "empty" / "class0" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty: no images"):
        load_dataset(tmp_path / "empty")
    _write_image(tmp_path / "broken" / "c0" / "good.png", _images(1)[0])
    (tmp_path / "broken" / "c0" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"bad\.png: unreadable image"):
        load_dataset(tmp_path / "broken")


def test_check_labels():
    ds = Dataset(_images(3), np.array([0, 12, 3]), "d.npz")
    check_labels(ds, 13)
    with pytest.raises(DataError, match="d.npz: labels out of range: max label 12 but the model has 10 classes"):
        check_labels(ds, 10)
    with pytest.raises(DataError, match="min label -1"):
        check_labels(Dataset(_images(2), np.array([0, -1]), "d"), 10)
    check_labels(Dataset(_images(2), None, "d"), 10)


# ----- Dataset methods -----------------------------------------------------------------------------


def test_dataset_take_split_filter_batches():
    ds = Dataset(_images(10), np.arange(10) % 3, "d")
    assert ds.take(4, seed=1).y.tolist() == ds.take(4, seed=1).y.tolist()
    np.testing.assert_array_equal(ds.subset([2, 0]).x, ds.x[[2, 0]])

    first, second = ds.split(7, seed=5)
    assert (len(first), len(second)) == (7, 3)
    together = np.concatenate([first.x, second.x]).reshape(10, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, ds.x.reshape(10, -1)))
    assert first.y.tolist() == ds.split(7, seed=5)[0].y.tolist()
    with pytest.raises(DataError, match="cannot split 10 images"):
        ds.split(11)

    assert 0 not in ds.filter_labels(exclude=0).y and len(ds.filter_labels(exclude=0)) == 6
    assert sorted(set(ds.filter_labels(exclude=[0, 1]).y.tolist())) == [2]
    with pytest.raises(DataError, match="no labels"):
        Dataset(_images(2), None, "d").filter_labels(exclude=0)

    sizes = [(len(xb), len(yb)) for xb, yb in ds.batches(4)]
    assert sizes == [(4, 4), (4, 4), (2, 2)]
    assert all(yb is None for _, yb in Dataset(_images(3), None, "d").batches(2))


# ----- preprocessing -------------------------------------------------------------------------------


def test_preprocess_numbers_match_hand_computation():
    x = np.array([[[[0, 128, 255], [10, 20, 30]]]], dtype=np.uint8)  # 1×1×2×3
    pre = Preprocess(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.2), layout="NHWC")
    out = pre.apply(x)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 3) and out.flags.c_contiguous
    # pixel (0, 128, 255): ((v / 255) - mean) / std per channel
    expected = [(0 - 0.5) / 0.5, (128 / 255 - 0.4) / 0.25, (1 - 0.3) / 0.2]
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6)
    expected = [(10 / 255 - 0.5) / 0.5, (20 / 255 - 0.4) / 0.25, (30 / 255 - 0.3) / 0.2]
    np.testing.assert_allclose(out[0, 0, 1], expected, rtol=1e-6)


def test_preprocess_layouts_and_input_untouched():
    x = _images(2, 4, 5, 3)
    copy = x.copy()
    nchw = Preprocess(mean=(0.5,), std=(0.5,)).apply(x)
    nhwc = Preprocess(mean=(0.5,), std=(0.5,), layout="nhwc").apply(x)
    assert nchw.shape == (2, 3, 4, 5) and nhwc.shape == (2, 4, 5, 3)
    assert nchw.flags.c_contiguous and nchw.dtype == np.float32
    np.testing.assert_array_equal(nchw, nhwc.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(x, copy)
    floats = x.astype(np.float32)
    np.testing.assert_allclose(Preprocess(scale=1.0).apply(floats), floats.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(floats, x)


def test_preprocess_resize():
    x = np.full((2, 6, 6, 1), 100, dtype=np.uint8)
    x[1] = 7
    out = Preprocess(scale=1.0, resize=(4, 8)).apply(x)
    assert out.shape == (2, 1, 4, 8)
    np.testing.assert_allclose(out[0], 100)
    np.testing.assert_allclose(out[1], 7)
    ramp = np.tile(np.arange(8, dtype=np.float32) * 10, (8, 1))[None, :, :, None]
    half = Preprocess(scale=1.0, resize=(8, 16), layout="NHWC").apply(ramp)
    assert half.shape == (1, 8, 16, 1) and np.all(np.diff(half[0, 0, :, 0]) >= 0)


def test_preprocess_channel_mismatch():
    with pytest.raises(DataError, match="'mean' has 3 values but the images have 1 channel"):
        Preprocess(mean=(0.1, 0.2, 0.3)).apply(_images(1, c=1))


def test_preprocess_dicts_and_files(tmp_path):
    spec = json.loads(REAL_SPECS[0].read_text()) if REAL_SPECS else {"preprocess": {"mean": [0.5], "std": [0.5]}}
    from_spec = Preprocess.from_dict(spec)
    assert from_spec.mean is not None and from_spec.layout == "NCHW"
    plain = Preprocess.from_dict({"scale": 1, "mean": 0.5, "std": [0.5], "layout": "NHWC", "resize": 32})
    assert plain.mean == (0.5,) and plain.resize == (32, 32) and plain.scale == 1.0
    assert plain.to_dict() == {"layout": "NHWC", "scale": 1.0, "mean": [0.5], "std": [0.5], "resize": [32, 32]}
    plain.save(tmp_path / "p.json")
    assert Preprocess.load(tmp_path / "p.json") == plain
    assert Preprocess.from_dict({}) == Preprocess()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"scael": 1}', "unknown preprocess key 'scael'"),
        ('{"layout": "CHW"}', "'layout' must be NCHW or NHWC"),
        ('{"std": [0.5, 0, 0.5]}', "'std' must be positive"),
        ('{"mean": []}', "'mean' must not be empty"),
        ('{"scale": "1/255"}', "'scale' must be a finite number"),
        ('{"resize": [32]}', "'resize' must be [height, width]"),
    ],
)
def test_preprocess_load_errors(tmp_path, content, message):
    path = tmp_path / "pre.json"
    path.write_text(content)
    with pytest.raises(DataError, match="pre.json") as info:
        Preprocess.load(path)
    assert message in str(info.value)


def test_preprocess_load_missing(tmp_path):
    with pytest.raises(DataError, match="nope.json: no such file"):
        Preprocess.load(tmp_path / "nope.json")


def test_fit_to_input():
    Preprocess().fit_to_input((5, 32, 32, 3), [None, 3, 32, 32])
    Preprocess().fit_to_input((5, 32, 32, 3), ["N", 3, "H", "W"])
    Preprocess(layout="NHWC").fit_to_input((5, 32, 32, 3), ["N", 32, 32, 3])
    Preprocess(resize=(32, 32)).fit_to_input((5, 28, 28, 3), [1, 3, 32, 32])
    with pytest.raises(DataError) as info:
        Preprocess().fit_to_input((5, 28, 28, 1), [None, 3, 32, 32])
    assert str(info.value) == (
        "data images are 28×28×1 but the model expects 3×32×32 (NCHW); set \"resize\": [H, W] or check "
        "\"layout\" in the preprocess JSON (--preprocess or --spec)"
    )
    with pytest.raises(DataError, match=r'expects 3×32×32 \(NHWC\); set "layout": "NCHW" in the preprocess JSON'):
        Preprocess(layout="NHWC").fit_to_input((5, 32, 32, 3), [None, 3, 32, 32])
    with pytest.raises(DataError, match=r'expects 32×32×3 \(NCHW\); set "layout": "NHWC" in the preprocess JSON'):
        Preprocess().fit_to_input((5, 32, 32, 3), [None, 32, 32, 3])
    with pytest.raises(DataError, match=r"resized to 16×16×3"):
        Preprocess(resize=(16, 16)).fit_to_input((5, 32, 32, 3), [None, 3, 32, 32])
    with pytest.raises(DataError, match=r"shape \[\?, 784\]"):
        Preprocess().fit_to_input((5, 28, 28, 1), [None, 784])
    with pytest.raises(DataError, match="'std' has 3 values"):
        Preprocess(std=(1, 1, 1)).fit_to_input((5, 28, 28, 1), [None, 1, 28, 28])


def test_infer_layout():
    assert Preprocess.infer_layout([None, 3, 32, 32]) == "NCHW"
    assert Preprocess.infer_layout(["N", 32, 32, 3]) == "NHWC"
    assert Preprocess.infer_layout(["N", 28, 28, 1]) == "NHWC"
    assert Preprocess.infer_layout(["N", 3, 3, 3]) == "NCHW"
    assert Preprocess.infer_layout(["N", "C", "H", "W"]) == "NCHW"


# ----- triggers ------------------------------------------------------------------------------------


def test_patch_trigger_fixed_and_negative_offsets():
    x = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    out = PatchTrigger(size=2, value=255, row=1, col=3).apply(x)
    assert (out[:, 1:3, 3:5] == 255).all() and out.sum() == 2 * 4 * 3 * 255
    assert (x == 0).all()
    corner = PatchTrigger(size=3, value=[10, 20, 30], row=-3, col=-3).apply(x)
    np.testing.assert_array_equal(corner[:, 5:, 5:], np.broadcast_to([10, 20, 30], (2, 3, 3, 3)))
    assert corner[:, :5].sum() == 0 and corner[:, :, :5].sum() == 0
    wide = PatchTrigger(value=1, row=0, col=0, width=4, height=1).apply(x)
    assert wide[0, ..., 0].sum() == 4 and wide[0, 0, :4, 0].tolist() == [1, 1, 1, 1]


def test_patch_trigger_errors():
    with pytest.raises(DataError, match="does not fit 8×8 images"):
        PatchTrigger(size=5, value=255, row=-3, col=0).apply(np.zeros((1, 8, 8, 1), np.uint8))
    with pytest.raises(DataError, match="2 values but the images have 3 channels"):
        PatchTrigger(size=1, value=[1, 2], row=0, col=0).apply(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="within 0..255"):
        PatchTrigger(size=1, value=256, row=0, col=0)
    with pytest.raises(DataError, match="raw uint8"):
        PatchTrigger(size=1, value=1, row=0, col=0).apply(np.zeros((1, 8, 8, 3), np.float32))


def test_blend_trigger_seeded():
    x = _images(3)
    trigger = BlendTrigger(alpha=0.2, pattern_seed=7)
    out = trigger.apply(x)
    np.testing.assert_array_equal(out, BlendTrigger(alpha=0.2, pattern_seed=7).apply(x))
    assert not np.array_equal(out, BlendTrigger(alpha=0.2, pattern_seed=8).apply(x))
    pattern = np.random.default_rng(7).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    expected = np.clip(np.rint(0.8 * x.astype(float) + 0.2 * pattern), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_blend_trigger_pattern_file(tmp_path):
    np.save(tmp_path / "hello_kitty.npy", np.full((8, 8), 200, dtype=np.uint8))
    trigger = trigger_from_dict({"kind": "blend", "alpha": 0.5, "pattern_file": "hello_kitty.npy"}, tmp_path)
    out = trigger.apply(np.zeros((1, 8, 8, 3), np.uint8))
    assert (out == 100).all()
    assert trigger.to_dict() == {"kind": "blend", "alpha": 0.5, "pattern_file": "hello_kitty.npy"}
    with pytest.raises(DataError, match="blend pattern is 8×8×1 but the images are 4×4×3"):
        trigger.apply(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="missing.npy: cannot read blend pattern"):
        trigger_from_dict({"kind": "blend", "alpha": 0.5, "pattern_file": "missing.npy"}, tmp_path)
    with pytest.raises(DataError, match="exactly one of"):
        BlendTrigger(alpha=0.5)


def test_sig_trigger_formula():
    x = np.full((1, 2, 6, 1), 100, dtype=np.uint8)
    out = SigTrigger(delta=20, f=1).apply(x)
    expected = np.rint(100 + 20 * np.sin(2 * np.pi * np.arange(6) / 6)).astype(np.uint8)
    assert out[0, 0, :, 0].tolist() == expected.tolist() == out[0, 1, :, 0].tolist()
    assert SigTrigger(delta=20, f=6).apply(np.full((1, 2, 8, 3), 250, np.uint8)).max() == 255


def test_wanet_trigger_deterministic_and_identity():
    x = _images(4, 16, 16, 3)
    trigger = WaNetTrigger(k=4, s=0.5, grid_seed=1)
    out = trigger.apply(x)
    np.testing.assert_array_equal(out, WaNetTrigger(k=4, s=0.5, grid_seed=1).apply(x))
    assert not np.array_equal(out, x) and out.dtype == np.uint8
    assert not np.array_equal(out, WaNetTrigger(k=4, s=0.5, grid_seed=2).apply(x))
    np.testing.assert_array_equal(WaNetTrigger(k=4, s=0.0, grid_seed=1).apply(x), x)
    grid = trigger.grid(16, 12)
    assert grid.shape == (16, 12, 2) and np.abs(grid).max() <= 1
    identity = WaNetTrigger(k=4, s=0.0, grid_seed=1).grid(16, 12)
    np.testing.assert_allclose(identity[0, :, 0], np.linspace(-1, 1, 12))
    np.testing.assert_allclose(identity[:, 0, 1], np.linspace(-1, 1, 16))
    assert 0 < np.abs(grid - identity).max() < 0.5 * 4 / 16  # noise is bounded by s * max|noise| / H


def test_wanet_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    x = _images(2, 12, 10, 3)
    trigger = WaNetTrigger(k=4, s=0.5, grid_seed=3)
    grid = torch.from_numpy(trigger.grid(12, 10)[None]).float().expand(2, -1, -1, -1)
    ref = torch.nn.functional.grid_sample(
        torch.from_numpy(x).permute(0, 3, 1, 2).float(), grid, mode="bilinear", align_corners=True
    )
    ref = np.clip(np.rint(ref.permute(0, 2, 3, 1).numpy()), 0, 255).astype(np.uint8)
    assert np.abs(trigger.apply(x).astype(int) - ref).max() <= 1


@pytest.mark.parametrize(
    "d",
    [
        {"kind": "patch", "size": 5, "value": 255, "row": 27, "col": 27},
        {"kind": "patch", "value": [1, 2, 3], "row": -2, "col": 0, "width": 3, "height": 2},
        {"kind": "blend", "alpha": 0.2, "pattern_seed": 0},
        {"kind": "sig", "delta": 20, "f": 6},
        {"kind": "wanet", "k": 4, "s": 0.5, "grid_seed": 0},
    ],
)
def test_trigger_round_trip(d):
    assert trigger_from_dict(d).to_dict() == d


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"kind": "lightning"}, "unknown trigger kind 'lightning'"),
        ({"size": 3}, "unknown trigger kind None"),
        ({"kind": "patch", "size": 3, "value": 1, "row": 0}, "missing 'col'"),
        ({"kind": "patch", "size": 3, "value": 1, "row": 0, "col": 0, "colr": 1}, "unknown patch trigger key 'colr'"),
        ({"kind": "patch", "value": 1, "row": 0, "col": 0}, "needs 'size'"),
        ({"kind": "blend", "alpha": 1.5, "pattern_seed": 0}, "'alpha' must be at most 1.0"),
        ({"kind": "wanet", "k": 2.5, "s": 0.5, "grid_seed": 0}, "'k' must be an integer"),
        ("patch", "trigger must be a JSON object"),
    ],
)
def test_trigger_errors(d, message):
    with pytest.raises(DataError) as info:
        trigger_from_dict(d)
    assert message in str(info.value)


# ----- specs and poisoning -------------------------------------------------------------------------


# Where shared/real_models is missing, one case that need() skips, or fails under ONP_REQUIRE_DATA=1.
@pytest.mark.parametrize("path", REAL_SPECS or [SHARED / "real_models" / "any.json"], ids=lambda p: p.stem)
def test_real_specs_load_and_round_trip(path, tmp_path):
    need(path)
    spec = Spec.load(path)
    raw = json.loads(path.read_text())
    assert spec.name == path.stem
    assert isinstance(spec.trigger, PatchTrigger) and spec.trigger.size == 5
    assert spec.target == raw["target"] and 0 <= spec.clean_accuracy <= 1
    assert spec.preprocess.layout == "NCHW" and spec.preprocess.scale == pytest.approx(1 / 255)
    assert spec.extra == {"source": raw["source"], "attack": raw["attack"]}
    assert spec.to_dict() == raw
    spec.save(tmp_path / "copy.json")
    assert Spec.load(tmp_path / "copy.json") == spec


def test_spec_defaults_and_pattern_file(tmp_path):
    np.save(tmp_path / "pattern.npy", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "case.json").write_text(
        json.dumps({"trigger": {"kind": "blend", "alpha": 0.1, "pattern_file": "pattern.npy"}, "target": 2, "note": 1})
    )
    spec = Spec.load(tmp_path / "case.json")
    assert spec.preprocess == Preprocess() and spec.name is None and spec.extra == {"note": 1}
    assert spec.trigger.apply(np.full((1, 4, 4, 3), 100, np.uint8)).max() == 90


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"target": "1"}', "'target' must be an integer"),
        ('{"target": 1.5}', "'target' must be an integer"),
        ('{"target": -1}', "'target' must be at least 0"),
        ('{"clean_accuracy": 98.1}', "'clean_accuracy' must be at most 1.0"),
        ('{"name": 3}', "'name' must be a string"),
        ('{"trigger": {"kind": "star"}}', "unknown trigger kind 'star'"),
        ('{"preprocess": {"layout": "HWC"}}', "'layout' must be NCHW or NHWC"),
    ],
)
def test_spec_errors(tmp_path, content, message):
    path = tmp_path / "case.json"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        Spec.load(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_poison_drops_target_and_keeps_true_labels():
    x = np.zeros((6, 8, 8, 3), np.uint8)
    ds = Dataset(x, np.array([0, 1, 2, 1, 0, 1]), "d")
    stamped = poison(ds, PatchTrigger(size=2, value=255, row=-2, col=-2), target=1)
    assert stamped.y.tolist() == [0, 2, 0]
    assert (stamped.x[:, 6:, 6:] == 255).all() and stamped.x[:, :6].sum() == 0
    assert (x == 0).all()
    with pytest.raises(DataError, match="no images outside the target class 1"):
        poison(Dataset(x[:2], np.array([1, 1]), "d"), PatchTrigger(size=1, value=1, row=0, col=0), 1)


# ----- real data -----------------------------------------------------------------------------------


def test_real_mnist_and_gtsrb():
    mnist = load_dataset(need(SHARED / "data" / "mnist_test.npz"), limit=200, seed=0)
    assert mnist.x.shape == (200, 28, 28, 1) and mnist.y.dtype == np.int64
    check_labels(mnist, 10)
    Preprocess(mean=(0.5,), std=(0.5,)).fit_to_input(mnist.x.shape, ["N", 1, 28, 28])
    train, test = load_dataset(need(SHARED / "data" / "gtsrb_test.npz")).split(10_000, seed=0)
    assert (len(train), len(test)) == (10_000, 2_630)
    check_labels(train, 43)


def test_missing_shared_data_skips_locally_and_fails_when_required(monkeypatch, tmp_path):
    """CI sets ONP_REQUIRE_DATA=1: a missing ../shared must fail the suite there, not skip every data test."""
    missing = tmp_path / "absent.npz"
    monkeypatch.delenv("ONP_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception):
        need(missing)
    monkeypatch.setenv("ONP_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="ONP_REQUIRE_DATA"):
        need(missing)
    assert need(tmp_path) == tmp_path
