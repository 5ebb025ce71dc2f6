"""Data: preprocessing, MedMNIST .npz loading, image files and folders, procedural lesions with known evidence."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR, needs_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medcam_fast.data.images import IMAGE_SUFFIXES, ImageSet, list_images, load_folder, load_image
from medcam_fast.data.lesions import make_lesions
from medcam_fast.data.medmnist import DATASETS, load_npz, resolve_data
from medcam_fast.data.preprocess import Preprocess
from medcam_fast.errors import DataError, UsageError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared(name: str) -> Path:
    """A file of the shared data folder, or skip the test when the folder is absent."""
    path = SHARED / DATASETS[name]
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def raises_naming(path: Path, func, *args, **kwargs) -> DataError:
    """Call ``func`` expecting a one-line DataError whose message names ``path``."""
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    err = info.value
    assert err.path is not None and Path(err.path).name == Path(path).name, str(err)
    assert Path(path).name in str(err)
    assert "\n" not in str(err)
    return err


# ------------------------------------------------------------------------------------------------ Preprocess


def test_preprocess_dict_round_trip_through_json():
    p = Preprocess(size=(28, 32), channels=3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    d = p.to_dict()
    assert Preprocess.from_dict(d) == p
    assert Preprocess.from_dict(json.loads(json.dumps(d))) == p
    assert d == {"size": [28, 32], "channels": 3, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 0.125]}


@pytest.mark.parametrize("kwargs", [
    dict(size=(0, 4), channels=1, mean=(0.0,), std=(1.0,)),
    dict(size=(4, 4), channels=2, mean=(0.0, 0.0), std=(1.0, 1.0)),
    dict(size=(4, 4), channels=3, mean=(0.0,), std=(1.0,)),
    dict(size=(4, 4), channels=1, mean=(0.0,), std=(0.0,)),
])
def test_preprocess_rejects_invalid_fields(kwargs):
    with pytest.raises(UsageError):
        Preprocess(**kwargs)
    with pytest.raises(UsageError):
        Preprocess.from_dict({"size": [4, 4]})


def test_dtype_scaling_exact():
    ident = Preprocess.identity((1, 3), 1)
    u8 = np.array([[0, 51, 255]], dtype=np.uint8)
    u16 = np.array([[0, 13107, 65535]], dtype=np.uint16)
    f32 = np.array([[0.0, 0.2, 1.0]], dtype=np.float32)
    for x in (u8, u16, f32):
        out = ident(x)
        assert out.dtype == np.float32 and out.shape == (1, 1, 1, 3)
        np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.2, 1.0], rtol=0, atol=1e-7)
    norm = Preprocess((1, 3), 1, mean=(0.5,), std=(0.25,))
    np.testing.assert_allclose(norm(u8)[0, 0, 0], [-2.0, -1.2, 2.0], atol=1e-6)


def test_channel_conversions_exact():
    rgb = np.array([[[10, 20, 30], [255, 0, 0]]], dtype=np.uint8)  # 1 x 2 x 3
    grey = Preprocess.identity((1, 2), 1)(rgb)
    expected = [(0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 255, 0.299]
    np.testing.assert_allclose(grey[0, 0, 0], expected, atol=1e-6)

    g = np.array([[0, 128]], dtype=np.uint8)
    out = Preprocess.identity((1, 2), 3)(g)
    assert out.shape == (1, 3, 1, 2)
    for c in range(3):
        np.testing.assert_allclose(out[0, c, 0], [0.0, 128 / 255], atol=1e-7)

    rgba = np.array([[[200, 100, 50, 51], [10, 10, 10, 255]]], dtype=np.uint8)
    out = Preprocess.identity((1, 2), 3)(rgba)  # composited on black: colour * alpha
    np.testing.assert_allclose(out[0, :, 0, 0], np.array([200, 100, 50]) / 255 * 0.2, atol=1e-6)
    np.testing.assert_allclose(out[0, :, 0, 1], [10 / 255] * 3, atol=1e-6)


def test_shapes_batches_and_resizing():
    p = Preprocess.identity((8, 8), 1)
    assert p(np.zeros((8, 8), np.uint8)).shape == (1, 1, 8, 8)  # HW
    assert p(np.zeros((8, 8, 3), np.uint8)).shape == (1, 1, 8, 8)  # HWC
    assert p(np.zeros((5, 8, 8), np.uint8)).shape == (5, 1, 8, 8)  # NHW
    assert p(np.zeros((5, 8, 8, 4), np.uint8)).shape == (5, 1, 8, 8)  # NHWC
    assert p(np.zeros((3, 8, 4), np.uint8), batched=True).shape == (3, 1, 8, 8)  # NHW with width 4
    assert p([np.zeros((4, 6), np.uint8), np.zeros((20, 9, 3), np.uint16)]).shape == (2, 1, 8, 8)
    assert p(Image.new("RGB", (3, 5))).shape == (1, 1, 8, 8)
    assert p(np.zeros((0, 8, 8), np.uint8)).shape == (0, 1, 8, 8)
    # same size: values untouched; different size: constant stays constant
    x = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(p(x)[0, 0], x.astype(np.float32) / 255)
    np.testing.assert_allclose(p(np.full((13, 5), 0.25, np.float32)), 0.25, atol=1e-6)


@pytest.mark.parametrize("bad", [
    np.zeros((2, 2, 2, 2, 2), np.uint8),
    np.zeros((4, 4, 2), np.uint8).reshape(1, 4, 4, 2),
    np.zeros((4, 0), np.uint8),
    np.array([[0.0, np.nan]], np.float32),
    np.array([[0.0, np.inf]], np.float64),
    np.array([[0.0, 3.0]], np.float32),
    np.array([[0, 1]], np.int32),
])
def test_preprocess_rejects_bad_input(bad):
    with pytest.raises(DataError):
        Preprocess.identity((4, 4), 3)(bad)


def test_denormalize_inverts_and_fit_measures():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)
    p = Preprocess.fit(images)
    assert p.size == (10, 12) and p.channels == 3
    unit = images.astype(np.float64) / 255
    np.testing.assert_allclose(p.mean, unit.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(p.std, unit.std(axis=(0, 1, 2)), atol=1e-6)
    x = p(images)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    np.testing.assert_allclose(p.denormalize(x), unit.transpose(0, 3, 1, 2), atol=1e-6)
    grey = Preprocess.fit(images[..., 0], size=(5, 6))
    assert grey.size == (5, 6) and grey.channels == 1 and len(grey.mean) == 1
    assert Preprocess.fit(np.full((2, 4, 4), 7, np.uint8)).std == (1.0,)  # constant images: no division by 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 40), w=st.integers(1, 40), dtype=st.sampled_from(["uint8", "uint16", "float32"]),
       chans=st.sampled_from([None, 1, 3, 4]), out_h=st.integers(1, 24), out_w=st.integers(1, 24),
       out_c=st.sampled_from([1, 3]), seed=st.integers(0, 2**32 - 1), poison=st.booleans())
def test_preprocess_property(h, w, dtype, chans, out_h, out_w, out_c, seed, poison):
    rng = np.random.default_rng(seed)
    shape = (h, w) if chans is None else (h, w, chans)
    if dtype == "float32":
        x = rng.random(shape, dtype=np.float32)
        if poison:
            x.flat[rng.integers(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
    else:
        x = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    p = Preprocess((out_h, out_w), out_c, mean=(0.5,) * out_c, std=(0.2,) * out_c)
    try:
        out = p(x)
    except DataError:
        assert dtype == "float32" and poison
        return
    assert not (dtype == "float32" and poison)
    assert out.dtype == np.float32 and out.shape == (1, out_c, out_h, out_w)
    assert np.isfinite(out).all()
    unit = p.denormalize(out)
    assert unit.min() >= -1e-4 and unit.max() <= 1 + 1e-4  # bilinear never overshoots


# ------------------------------------------------------------------------------------------------ ImageSet


def test_imageset_subset_and_properties():
    s = ImageSet(np.zeros((5, 4, 6, 3), np.uint8), np.arange(5) % 2, ["a", "b"], "x",
                 masks=np.zeros((5, 4, 6), bool))
    assert len(s) == 5 and s.channels == 3 and s.size == (4, 6) and s.labels.dtype == np.int64
    sub = s.subset([4, 0])
    assert len(sub) == 2 and list(sub.labels) == [0, 0] and sub.masks.shape == (2, 4, 6)
    assert len(s.subset(s.labels == 1)) == 2
    with pytest.raises(DataError):
        ImageSet(np.zeros((3, 4, 4), np.uint8), np.zeros(2), ["a"], "bad")


# ------------------------------------------------------------------------------------------------ .npz files


def test_official_layout_breast():
    path = shared("breast")
    test = load_npz(path)
    assert test.images.shape == (156, 64, 64) and test.images.dtype == np.uint8
    assert test.labels.shape == (156,) and test.labels.dtype == np.int64
    assert test.classes == ["malignant", "normal or benign"] and test.name == "breastmnist_64"
    assert len(load_npz(path, "train")) == 546 and len(load_npz(path, "val")) == 78
    assert len(load_npz(path, "all")) == 780
    assert test.channels == 1 and test.size == (64, 64)


def test_official_layout_pneumonia_classes():
    s = load_npz(shared("pneumonia"), "val")
    assert s.images.shape == (524, 28, 28) and s.classes == ["normal", "pneumonia"]
    assert set(np.unique(s.labels)) == {0, 1}


def test_flat_layout_blood_split_is_stratified_disjoint_covering_and_seeded():
    path = shared("blood")
    splits = {k: load_npz(path, k, seed=0) for k in ("train", "val", "test", "all")}
    full = splits["all"]
    assert full.images.shape == (800, 64, 64, 3) and full.channels == 3
    assert full.classes[:3] == ["basophil", "eosinophil", "erythroblast"] and len(full.classes) == 8
    for k, per_class in (("train", 70), ("val", 10), ("test", 20)):
        assert np.bincount(splits[k].labels, minlength=8).tolist() == [per_class] * 8
    # identify rows by content to check disjointness and coverage
    keys = {k: {s.images[i].tobytes() for i in range(len(s))} for k, s in splits.items()}
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    assert keys["train"] | keys["val"] | keys["test"] == keys["all"]
    again = load_npz(path, "test", seed=0)
    np.testing.assert_array_equal(again.images, splits["test"].images)
    other = load_npz(path, "test", seed=1)
    assert not np.array_equal(other.images, splits["test"].images)


def test_flat_layout_path_uses_class_table():
    s = load_npz(shared("path"), "all")
    assert s.images.shape == (1000, 28, 28, 3) and len(s.classes) == 9 and s.classes[0] == "adipose"
    counts = np.bincount(s.labels, minlength=9)
    test = np.bincount(load_npz(shared("path"), "test").labels, minlength=9)
    np.testing.assert_array_equal(test, np.round(0.2 * counts).astype(int))


@needs_data()
def test_short_name_brain_resolves_and_loads_mri():
    path = resolve_data("brain", data_dir=str(DATA_DIR))
    assert path.name == DATASETS["brain"] == "brain_tumor_mri4_128.npz"
    sets = {k: load_npz(path, k) for k in ("train", "val", "test")}
    assert [len(v) for v in sets.values()] == [897, 128, 256]
    for s in sets.values():
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (128, 128)
        assert s.channels == 1 and s.size == (128, 128) and s.name == "brain_tumor_mri4_128"
        assert s.classes == ["glioma", "meningioma", "no tumour", "pituitary"]
        assert set(np.unique(s.labels)) == {0, 1, 2, 3}
    with np.load(path, allow_pickle=False) as npz:  # the table's names follow the file's own, in order
        assert npz["class_names"].tolist() == ["glioma", "meningioma", "notumor", "pituitary"]


def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_flat_generic_names_and_classes_key(tmp_path):
    imgs = np.zeros((10, 4, 4), np.uint8)
    labels = np.arange(10) % 3
    p = _write_npz(tmp_path / "mine.npz", images=imgs, labels=labels)
    assert load_npz(p, "all").classes == ["class_0", "class_1", "class_2"]
    p = _write_npz(tmp_path / "named.npz", images=imgs, labels=labels, classes=np.array(["x", "y", "z"]))
    s = load_npz(p, "all")
    assert s.classes == ["x", "y", "z"] and s.name == "named"
    floats = _write_npz(tmp_path / "f.npz", images=np.full((10, 4, 4), 1.0, np.float32), labels=labels)
    assert load_npz(floats, "all").images.max() == 255


def test_npz_errors_name_the_file(tmp_path):
    ok_imgs, ok_labels = np.zeros((10, 4, 4), np.uint8), np.zeros((10, 1), np.uint8)
    raises_naming(tmp_path / "missing.npz", load_npz, tmp_path / "missing.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    raises_naming(tmp_path / "empty.npz", load_npz, tmp_path / "empty.npz")
    (tmp_path / "text.npz").write_text("hello, I am not a zip archive\n")
    raises_naming(tmp_path / "text.npz", load_npz, tmp_path / "text.npz")
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.random.default_rng(0).integers(0, 255, (50, 16, 16), dtype=np.uint8),
                        labels=np.zeros(50, np.uint8))
    (tmp_path / "cut.npz").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    raises_naming(tmp_path / "cut.npz", load_npz, tmp_path / "cut.npz")
    nan = ok_imgs.astype(np.float32)
    nan[3, 1, 1] = np.nan
    for name, arrays, words in [
        ("nan.npz", dict(images=nan, labels=ok_labels), "NaN"),
        ("neg.npz", dict(images=ok_imgs, labels=ok_labels - 1.0), "labels"),
        ("pneumoniamnist_x.npz", dict(test_images=ok_imgs, test_labels=ok_labels + 7, train_images=ok_imgs,
                         train_labels=ok_labels), "labels"),
        ("breastmnist_bad.npz", dict(images=ok_imgs, labels=ok_labels + 2), "labels"),  # table has 2 classes
        ("classes.npz", dict(images=ok_imgs, labels=ok_labels + 1, classes=np.array(["only"])), "labels"),
        ("short.npz", dict(images=ok_imgs, labels=ok_labels[:9]), "labels"),
        ("keys.npz", dict(pixels=ok_imgs, targets=ok_labels), "layout"),
        ("shape.npz", dict(images=np.zeros((10, 4), np.uint8), labels=ok_labels), "shape"),
        ("multi.npz", dict(images=ok_imgs, labels=np.zeros((10, 3), np.uint8)), "single-label"),
    ]:
        err = raises_naming(tmp_path / name, load_npz, _write_npz(tmp_path / name, **arrays), "all")
        assert words in err.cause, err.cause
    p = _write_npz(tmp_path / "ok.npz", test_images=ok_imgs, test_labels=ok_labels)
    assert "unknown split" in raises_naming(p, load_npz, p, "validation").cause
    assert "no 'train' split" in raises_naming(p, load_npz, p, "train").cause
    np.save(tmp_path / "single.npy", ok_imgs)
    assert ".npy" in raises_naming(tmp_path / "single.npy", load_npz, tmp_path / "single.npy").cause


def test_resolve_data(tmp_path, monkeypatch):
    f = tmp_path / "given.npz"
    f.write_bytes(b"x")
    assert resolve_data(str(f)) == f
    (tmp_path / DATASETS["breast"]).write_bytes(b"x")
    assert resolve_data("breast", data_dir=str(tmp_path)) == tmp_path / DATASETS["breast"]
    monkeypatch.setenv("MEDCAM_DATA_DIR", str(tmp_path))
    assert resolve_data("breast") == tmp_path / DATASETS["breast"]
    assert resolve_data(DATASETS["breast"]) == tmp_path / DATASETS["breast"]
    err = raises_naming(Path("pneumonia"), resolve_data, "pneumonia")
    assert str(tmp_path) in err.cause and "MEDCAM_DATA_DIR" in err.cause
    raises_naming(Path("nope.npz"), resolve_data, str(tmp_path / "sub" / "nope.npz"))
    monkeypatch.delenv("MEDCAM_DATA_DIR")
    if SHARED.exists():  # the default: ../shared/data beside the source tree
        assert resolve_data("blood").resolve() == (SHARED / DATASETS["blood"]).resolve()


# ------------------------------------------------------------------------------------------------ image files


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_load_image_modes(tmp_path):
    grey = np.array([[0, 64], [128, 255]], np.uint8)
    out = load_image(_save(Image.fromarray(grey), tmp_path / "l.png"))
    assert out.dtype == np.uint8 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, grey)

    bits = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1")
    np.testing.assert_array_equal(load_image(_save(bits, tmp_path / "b.png")), [[0, 255], [255, 0]])

    pal_grey = Image.new("P", (2, 2))
    pal_grey.putpalette([0, 0, 0, 100, 100, 100, 200, 200, 200] + [0] * 759)
    pal_grey.putdata([0, 1, 2, 1])
    out = load_image(_save(pal_grey, tmp_path / "pg.png"))
    assert out.shape == (2, 2)
    np.testing.assert_array_equal(out, [[0, 100], [200, 100]])
    pal_col = Image.new("P", (2, 1))
    pal_col.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal_col.putdata([0, 1])
    np.testing.assert_array_equal(load_image(_save(pal_col, tmp_path / "pc.png")), [[[255, 0, 0], [0, 0, 255]]])

    rgb = np.array([[[1, 2, 3], [250, 128, 0]]], np.uint8)
    out = load_image(_save(Image.fromarray(rgb), tmp_path / "rgb.png"))
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out, rgb)

    rgba = Image.fromarray(np.array([[[200, 100, 50, 51], [9, 9, 9, 255]]], np.uint8), mode="RGBA")
    out = load_image(_save(rgba, tmp_path / "rgba.png"))
    assert out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out, [[[40, 20, 10], [9, 9, 9]]])
    la = Image.fromarray(np.array([[[200, 51]]], np.uint8), mode="LA")
    np.testing.assert_array_equal(load_image(_save(la, tmp_path / "la.png")), [[40]])

    cmyk = Image.new("CMYK", (2, 1), (255, 0, 0, 0))
    out = load_image(_save(cmyk, tmp_path / "c.tif"))
    assert out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out[0, 0], [0, 255, 255])

    deep = np.array([[0, 1000], [65535, 7]], np.uint16)
    out = load_image(_save(Image.fromarray(deep), tmp_path / "i16.png"))
    assert out.dtype == np.uint16 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, deep)

    i32 = np.array([[-100, 0], [100_000, 7]], np.int32)
    out = load_image(_save(Image.fromarray(i32), tmp_path / "i32.tif"))
    assert out.dtype == np.uint16 and out[0, 0] == 0 and out[1, 0] == 65535

    f = np.array([[0.0, 0.5], [2.0, -1.0]], np.float32)
    out = load_image(_save(Image.fromarray(f), tmp_path / "f.tif"))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[0, 16384], [65535, 0]])

    jpg = load_image(_save(Image.fromarray(rgb), tmp_path / "x.jpg", quality=95))
    assert jpg.shape == (1, 2, 3) and jpg.dtype == np.uint8


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares a size but holds no pixel data (cheap stand-in for a huge image)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_load_image_refuses_too_many_pixels(tmp_path):
    small = _save(Image.new("L", (100, 100)), tmp_path / "small.png")
    err = raises_naming(small, load_image, small, max_pixels=5000)
    assert "5000" in err.cause
    huge = _png_header_only(tmp_path / "huge.png", 20000, 20000)  # beyond Pillow's own bomb limit too
    err = raises_naming(huge, load_image, huge)
    assert "50000000" in err.cause
    # with a higher limit the header passes, and the missing pixel data is reported as corrupt
    before = Image.MAX_IMAGE_PIXELS
    err = raises_naming(huge, load_image, huge, max_pixels=10**9)
    assert "truncated or corrupt" in err.cause
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global limit is restored


def test_load_image_errors_name_the_file(tmp_path):
    raises_naming(tmp_path / "missing.png", load_image, tmp_path / "missing.png")
    (tmp_path / "zero.png").write_bytes(b"")
    assert "empty" in raises_naming(tmp_path / "zero.png", load_image, tmp_path / "zero.png").cause
    (tmp_path / "text.png").write_text("this is not an image\n")
    assert "not an image" in raises_naming(tmp_path / "text.png", load_image, tmp_path / "text.png").cause
    (tmp_path / "dir.png").mkdir()
    assert "folder" in raises_naming(tmp_path / "dir.png", load_image, tmp_path / "dir.png").cause
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for suffix in ("png", "jpg"):
        full = _save(noise, tmp_path / f"full.{suffix}")
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        assert "truncated or corrupt" in raises_naming(cut, load_image, cut).cause


def test_list_images(tmp_path):
    (tmp_path / "b").mkdir()
    for rel in ("z.png", "a.JPG", "b/c.tif", "notes.txt", ".hidden.png"):
        (tmp_path / rel).write_bytes(b"x")
    found = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.JPG", "b/c.tif", "z.png"]
    assert list_images(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]
    assert list_images(str(tmp_path / "**" / "*.tif")) == [tmp_path / "b" / "c.tif"]
    (tmp_path / "empty").mkdir()
    assert "no images found" in raises_naming(tmp_path / "empty", list_images, tmp_path / "empty").cause
    raises_naming(tmp_path / "gone", list_images, tmp_path / "gone")
    with pytest.raises(DataError, match="no images found"):
        list_images(str(tmp_path / "*.bmp"))
    assert {".png", ".jpg", ".tif", ".tiff", ".bmp"} <= IMAGE_SUFFIXES


def test_load_folder(tmp_path):
    root = tmp_path / "set"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.new("RGB", (10, 8), (255, 0, 0)).save(root / "cats" / "1.png")
    Image.new("L", (20, 16), 128).save(root / "cats" / "2.png")
    Image.new("RGB", (5, 4), (0, 0, 255)).save(root / "dogs" / "1.png")
    s = load_folder(root)
    assert s.classes == ["cats", "dogs"] and s.labels.tolist() == [0, 0, 1] and s.name == "set"
    assert s.images.shape == (3, 8, 10, 3) and s.images.dtype == np.uint8  # RGB majority, first image's size
    np.testing.assert_array_equal(s.images[1], 128)
    np.testing.assert_array_equal(s.images[2, 3, 3], [0, 0, 255])
    (root / "empty").mkdir()
    assert "no images found" in raises_naming(root / "empty", load_folder, root).cause
    raises_naming(tmp_path / "none", load_folder, tmp_path / "none")
    (tmp_path / "flat").mkdir()
    raises_naming(tmp_path / "flat", load_folder, tmp_path / "flat")


def test_a_folder_of_12_bit_scans_is_read_for_training_as_explain_reads_each_scan(tmp_path):
    from medcam_fast.data.images import decode

    values = np.arange(0, 4000, 10, dtype=np.uint16).reshape(20, 20)
    for k, name in enumerate(["benign", "malignant"]):
        (tmp_path / "set" / name).mkdir(parents=True)
        Image.fromarray(values + k).save(tmp_path / "set" / name / "ct.png")
    s = load_folder(tmp_path / "set")
    at_inference = decode(tmp_path / "set" / "benign" / "ct.png").pixels  # windowed over 0..4095
    np.testing.assert_array_equal(s.images[0], np.round(at_inference * 255).astype(np.uint8))
    assert s.images[0].max() == 248  # 3990 / 4095 · 255; divided by 257 it was 16: a black training set


# ------------------------------------------------------------------------------------------------ lesions


def test_make_lesions_deterministic_and_prefix_consistent():
    a = make_lesions(12, size=32, seed=5)
    b = make_lesions(12, size=32, seed=5)
    c = make_lesions(30, size=32, seed=5)
    for x, y in ((a, b), (a, c.subset(range(12)))):
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_array_equal(x.masks, y.masks)
    assert not np.array_equal(a.images, make_lesions(12, size=32, seed=6).images)
    assert a.classes == ["benign", "lesion"] and a.images.dtype == np.uint8 and a.masks.dtype == bool
    rgb = make_lesions(4, size=16, seed=5, channels=3)
    assert rgb.images.shape == (4, 16, 16, 3) and rgb.channels == 3
    assert make_lesions(3, size=48, positive_fraction=1.0).labels.tolist() == [1, 1, 1]
    for bad in (dict(n=-1), dict(n=2, size=15), dict(n=2, channels=2), dict(n=2, positive_fraction=1.5)):
        with pytest.raises(UsageError):
            make_lesions(**bad)


def test_make_lesions_erase_changes_only_the_candidate():
    a = make_lesions(40, size=32, seed=2)
    e = make_lesions(40, size=32, seed=2, erase_candidate=True)
    np.testing.assert_array_equal(a.labels, e.labels)
    np.testing.assert_array_equal(a.masks, e.masks)
    outside = ~a.masks
    np.testing.assert_array_equal(a.images[outside], e.images[outside])
    diff = np.abs(a.images.astype(int) - e.images.astype(int))
    assert all(diff[i][a.masks[i]].mean() > 10 for i in range(len(a)))


def test_make_lesions_balance_area_and_no_global_shortcut():
    s = make_lesions(400, size=32, seed=0)
    y = s.labels.astype(bool)
    assert 0.4 < y.mean() < 0.6
    area = s.masks.mean(axis=(1, 2))
    assert area.min() >= 0.03 and area.max() <= 0.13
    assert abs(area[y].mean() - area[~y].mean()) < 0.005  # no size shortcut
    unit = s.images.astype(np.float64) / 255
    mean, std = unit.mean(axis=(1, 2)), unit.std(axis=(1, 2))
    assert abs(mean[y].mean() - mean[~y].mean()) < 0.015  # no brightness shortcut (per-image sd ~0.06)
    assert abs(std[y].mean() - std[~y].mean()) < 0.005  # no contrast shortcut (per-image sd ~0.014)

    def best_threshold_accuracy(feature: np.ndarray) -> float:
        return max(max(((feature > t) == y).mean(), ((feature <= t) == y).mean()) for t in np.unique(feature))

    for feature in (mean, std, area):
        assert best_threshold_accuracy(feature) < 0.62

    # paired: the same images rendered all-negative and all-positive differ only at the candidate
    neg = make_lesions(100, size=32, seed=9, positive_fraction=0.0)
    pos = make_lesions(100, size=32, seed=9, positive_fraction=1.0)
    pu, nu = pos.images / 255.0, neg.images / 255.0
    assert abs((pu.mean(axis=(1, 2)) - nu.mean(axis=(1, 2))).mean()) < 0.001
    assert abs((pu.std(axis=(1, 2)) - nu.std(axis=(1, 2))).mean()) < 0.002
    either = neg.masks | pos.masks
    np.testing.assert_array_equal(pos.images[~either], neg.images[~either])


def _train_tiny_cnn(data: ImageSet, n_train: int, epochs: int = 5) -> float:
    """Train a small CNN on the first ``n_train`` images; return accuracy on the rest."""
    torch = pytest.importorskip("torch")
    from torch import nn

    pre = Preprocess.fit(data.images[:n_train])
    x = torch.from_numpy(pre(data.images, batched=True))
    y = torch.from_numpy(data.labels)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 2),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(n_train, generator=gen)
        for start in range(0, n_train, 32):
            idx = order[start:start + 32]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return float((net(x[n_train:]).argmax(1) == y[n_train:]).float().mean())


@pytest.mark.slow
def test_lesion_label_is_learnable_only_from_the_candidate():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: one thread is fastest, and the machine is shared
    try:
        normal = _train_tiny_cnn(make_lesions(800, size=32, seed=0), n_train=600)
        erased = _train_tiny_cnn(make_lesions(800, size=32, seed=0, erase_candidate=True), n_train=600)
    finally:
        torch.set_num_threads(threads)
    print(f"held-out accuracy: with candidate {normal:.3f}, candidate erased {erased:.3f}")
    assert normal > 0.85
    assert erased < 0.65


def test_an_unused_npz_member_is_never_decompressed(tmp_path):
    """A 2 MB .npz holding a large unused array of zeros was decompressed whole (2.3 GB RSS)."""
    import subprocess
    import sys

    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 0, 1]),
                        padding=np.zeros(400 * 1024**2, np.uint8))  # 400 MB of zeros, ~0.4 MB on disk
    assert path.stat().st_size < 2 * 1024**2
    code = ("from pathlib import Path\nfrom medcam_fast.data.medmnist import load_npz\n"
            f"s = load_npz({str(path)!r}, 'all')\n"  # VmHWM: this process's peak (ru_maxrss can carry the parent's)
            "hwm = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')]\n"
            "print(len(s), int(hwm[0].split()[1]) // 1024)")
    n, peak_mib = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                          check=True).stdout.split())
    assert n == 4 and peak_mib < 300, peak_mib


def test_a_layout_member_over_the_limit_is_refused_before_decompressing(tmp_path):
    from medcam_fast.data.medmnist import load_npz

    path = tmp_path / "big.npz"
    np.savez_compressed(path, images=np.zeros((64, 64, 64), np.uint8), labels=np.zeros(64, int))
    with pytest.raises(DataError, match="more than the limit of 1000") as e:
        load_npz(path, "all", max_bytes=1000)
    assert e.value.path == str(path) and "'images'" in e.value.cause
    assert len(load_npz(path, "all")) == 64
