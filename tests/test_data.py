"""The data layer: ImageFolder errors, built-in datasets, determinism, transforms, fingerprints."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from calibration.preprocess import Preprocessing
from pipeline.config import Augment, DataSpec
from pipeline.data import DataError, DataWarning, load_splits
from pipeline.data.synthetic_digits import render_digit
from pipeline.data.torch_dataset import TorchImageSet, UnlabelledSet
from pipeline.data.transforms import TrainTransform, eval_transform

REPO = Path(__file__).resolve().parents[1]
PRE = Preprocessing(input_size=24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_pct=0.875)


# ---------------------------------------------------------------- tree builders
def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _write(path: Path, w: int, h: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = _noise(w, h, seed)
    if path.suffix.lower() == ".png":
        img = img.convert("RGBA")   # transparency must be flattened on load
    img.save(path)
    return path


def _tree(root: Path) -> Path:
    """cat/dog in train and val, jpg/png/webp of odd sizes, upper-case extension, junk files."""
    _write(root / "train/cat/001.jpg", 37, 23, 1)
    _write(root / "train/cat/002.PNG", 19, 41, 2)
    _write(root / "train/cat/sub/003.webp", 50, 17, 3)
    _write(root / "train/dog/001.jpeg", 13, 13, 4)
    _write(root / "train/dog/002.png", 64, 9, 5)
    _write(root / "val/cat/001.webp", 21, 33, 6)
    _write(root / "val/dog/001.jpg", 29, 31, 7)
    (root / "train/cat/notes.txt").write_text("not an image")
    (root / "train/dog/._001.jpeg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    return root


def _spec(root: Path, **kw) -> DataSpec:
    return DataSpec(kind="imagefolder", root=str(root), **kw)


def _error(root: Path, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_splits(_spec(root, **kw))
    return str(err.value)


def _image_hash(img: Image.Image) -> str:
    return hashlib.sha256(img.tobytes() + repr((img.mode, img.size)).encode()).hexdigest()


# ---------------------------------------------------------------- imagefolder
def test_imagefolder_loads_tree(tmp_path):
    splits = load_splits(_spec(_tree(tmp_path / "data")))
    assert splits.classes == ["cat", "dog"]
    assert splits.train.ids == ["train/cat/001.jpg", "train/cat/002.PNG", "train/cat/sub/003.webp",
                                "train/dog/001.jpeg", "train/dog/002.png"]
    assert splits.train.targets == [0, 0, 0, 1, 1]
    assert splits.val.ids == ["val/cat/001.webp", "val/dog/001.jpg"] and splits.val.targets == [0, 1]
    img = splits.train.image(1)
    assert img.mode == "RGB" and img.size == (19, 41)
    assert splits.val.image(0).size == (21, 33)
    assert DataError.__mro__[1] is ValueError


def test_missing_root(tmp_path):
    root = tmp_path / "nowhere"
    assert _error(root) == (f"data.root '{root}' does not exist (set data.root to a folder holding "
                            "train/<class>/<image> and val/<class>/<image>)")


def test_missing_val_folder(tmp_path):
    root = tmp_path / "data"
    _write(root / "train/cat/1.jpg", 10, 10, 0)
    assert _error(root) == f"data.root '{root}' has no 'val' folder (expected {root}/val/<class>/<image>)"


def test_cli_reports_a_data_error_without_a_traceback(tmp_path):
    root = tmp_path / "data"
    _write(root / "train/cat/1.jpg", 10, 10, 0)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "finetune", "-c", "configs/imagefolder.yaml",
         "--set", f"data.root={root}", "--set", f"run.store={tmp_path / 'runs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 7, done.stderr
    assert done.stderr.strip().endswith(f"edgeship: data.root '{root}' has no 'val' folder "
                                        f"(expected {root}/val/<class>/<image>)")
    assert "Traceback" not in done.stderr
    assert not any((tmp_path / "runs").glob("finetune/*/manifest.json"))


def test_no_class_folders(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    _write(root / "train/loose.jpg", 10, 10, 0)
    assert _error(root) == (f"data.root '{root}' has no class folders in {root}/train "
                            f"(expected {root}/train/<class>/<image>)")


def test_class_folder_without_images(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "train/bird").mkdir()
    (root / "train/bird/readme.md").write_text("empty")
    assert _error(root) == f"class folder '{root}/train/bird' holds no images (jpg, jpeg, png, webp)"


def test_val_class_missing_from_train(tmp_path):
    root = _tree(tmp_path / "data")
    _write(root / "val/fox/1.png", 12, 12, 9)
    msg = _error(root)
    assert msg.startswith(f"class 'fox' is in {root}/val but not in {root}/train")
    assert f"add {root}/train/fox/" in msg


def test_corrupt_images_named(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "train/dog/garbage.jpg").write_bytes(b"this is not a jpeg at all" * 20)
    buf = io.BytesIO()
    _noise(80, 60, 11).save(buf, "JPEG", quality=95)
    (root / "val/cat/truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    msg = _error(root)
    assert msg.startswith(f"image '{root}/train/dog/garbage.jpg' cannot be read (")
    assert "and 1 more: val/cat/truncated.jpg" in msg
    assert "set data.skip_corrupt: true" in msg


def test_truncated_png_is_corrupt(tmp_path):
    root = _tree(tmp_path / "data")
    buf = io.BytesIO()
    _noise(70, 70, 12).save(buf, "PNG")
    (root / "train/cat/cut.png").write_bytes(buf.getvalue()[:-200])
    assert _error(root).startswith(f"image '{root}/train/cat/cut.png' cannot be read")


def test_skip_corrupt_warns_once_and_drops(tmp_path):
    root = _tree(tmp_path / "data")
    for name in ("bad1.jpg", "bad2.png", "bad3.webp"):
        (root / "train/cat" / name).write_bytes(b"\x89PNG garbage" * 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_splits(_spec(root, skip_corrupt=True))
    ours = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert text.startswith(f"skipped 3 unreadable image(s) under {root}")
    assert "train/cat/bad1.jpg" in text and "train/cat/bad3.webp" in text
    assert len(splits.train) == 5 and not any("bad" in i for i in splits.train.ids)
    assert splits.skipped == ["train/cat/bad1.jpg", "train/cat/bad2.png", "train/cat/bad3.webp"]


def test_fingerprint_follows_content_not_location(tmp_path):
    root = _tree(tmp_path / "data")
    first = load_splits(_spec(root)).fingerprint
    assert load_splits(_spec(root)).fingerprint == first
    moved = root.rename(tmp_path / "elsewhere")
    assert load_splits(_spec(moved)).fingerprint == first
    path = moved / "train/dog/002.png"
    img = Image.open(path).convert("RGBA")
    img.putpixel((0, 0), (1, 2, 3, 255) if img.getpixel((0, 0)) != (1, 2, 3, 255) else (4, 5, 6, 255))
    img.save(path)
    changed = load_splits(_spec(moved))
    assert changed.fingerprint != first
    assert changed.val.fingerprint == load_splits(_spec(moved)).val.fingerprint


# ---------------------------------------------------------------- digits
def test_digits_split_fixed_and_stratified():
    spec = DataSpec(kind="digits", val_fraction=0.25)
    a, b = load_splits(spec, seed=0), load_splits(spec, seed=123)
    assert (len(a.train), len(a.val)) == (1347, 450)
    assert a.train.ids == b.train.ids and a.val.ids == b.val.ids and a.fingerprint == b.fingerprint
    assert a.classes == [str(d) for d in range(10)]
    assert not set(a.train.ids) & set(a.val.ids)
    train, val = Counter(a.train.targets), Counter(a.val.targets)
    for c in range(10):   # every class holds ~25% of its images in val
        assert abs(val[c] / (train[c] + val[c]) - 0.25) < 0.02
    assert load_splits(DataSpec(kind="digits", val_fraction=0.3)).fingerprint != a.fingerprint


def test_digits_pixels():
    from sklearn.datasets import load_digits
    splits = load_splits(DataSpec(kind="digits"))
    idx = int(splits.train.ids[5].split(":")[-1])
    img = splits.train.image(5)
    assert img.mode == "RGB" and img.size == (8, 8)
    arr = np.asarray(img)
    expected = np.round(load_digits().images[idx] * 255 / 16)
    assert np.array_equal(arr[..., 0], expected) and np.array_equal(arr[..., 0], arr[..., 2])
    assert splits.train.targets[5] == int(load_digits().target[idx])


# ---------------------------------------------------------------- synthetic digits
def test_synthetic_deterministic_balanced_distinct():
    spec = DataSpec(kind="synthetic-digits", synthetic_size=120, val_fraction=0.25)
    a, b = load_splits(spec, seed=3), load_splits(spec, seed=3)
    assert (len(a.train), len(a.val)) == (90, 30) and a.fingerprint == b.fingerprint
    assert set(Counter(a.train.targets).values()) == {9} and set(Counter(a.val.targets).values()) == {3}
    forward = [_image_hash(a.train.image(i)) for i in range(len(a.train))]
    backward = [_image_hash(b.train.image(i)) for i in reversed(range(len(b.train)))][::-1]
    assert forward == backward
    assert len(set(forward)) == len(forward)
    first = a.train.image(0)
    assert first.mode == "RGB" and first.size == (32, 32)
    assert np.asarray(first).std() > 10           # not a blank tile
    other = load_splits(spec, seed=4)
    assert other.fingerprint != a.fingerprint and _image_hash(other.train.image(0)) != forward[0]


def test_synthetic_identical_in_another_process():
    code = ("import hashlib; from pipeline.data.synthetic_digits import render_digit; "
            "print(hashlib.sha256(b''.join(render_digit(7, i).tobytes() for i in (0, 5, 77, 1234))).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    here = hashlib.sha256(b"".join(render_digit(7, i).tobytes() for i in (0, 5, 77, 1234))).hexdigest()
    assert out.stdout.strip() == here


# ---------------------------------------------------------------- transforms and torch datasets
def test_eval_transform_is_preprocessing(tmp_path):
    splits = load_splits(_spec(_tree(tmp_path / "data")))
    ds = TorchImageSet(splits.train, PRE, None, seed=0)
    assert ds.cache
    for i in range(len(ds)):
        expected = PRE(splits.train.image(i))
        for _ in range(2):   # second read comes from the cache
            x, y = ds[i]
            assert x.dtype == torch.float32 and tuple(x.shape) == (3, 24, 24)
            assert np.array_equal(x.numpy(), expected) and y == splits.train.targets[i]
        assert np.array_equal(eval_transform(PRE)(splits.train.image(i)), expected)


def test_augmentation_seeded_by_seed_epoch_index():
    images = load_splits(DataSpec(kind="digits")).train.subset(range(12))
    aug = Augment(random_resized_crop=(0.6, 1.0), hflip=True, rotation_deg=20, color_jitter=0.4)
    ds = TorchImageSet(images, PRE, aug, seed=5)
    ds.set_epoch(2)
    forward = [ds[i][0] for i in range(12)]
    backward = [ds[i][0] for i in reversed(range(12))][::-1]
    assert all(torch.equal(f, b) for f, b in zip(forward, backward))
    again = TorchImageSet(images, PRE, aug, seed=5)
    again.set_epoch(2)
    assert all(torch.equal(again[i][0], forward[i]) for i in range(12))
    ds.set_epoch(3)
    assert sum(not torch.equal(ds[i][0], forward[i]) for i in range(12)) == 12
    other = TorchImageSet(images, PRE, aug, seed=6)
    other.set_epoch(2)
    assert sum(not torch.equal(other[i][0], forward[i]) for i in range(12)) == 12
    tt = TrainTransform(PRE, aug, 5)
    assert np.array_equal(tt(images.image(4), 2, 4), forward[4].numpy())


def test_augmentation_same_in_worker_processes():
    images = load_splits(DataSpec(kind="synthetic-digits", synthetic_size=40)).train.subset(range(16))
    ds = TorchImageSet(images, PRE, Augment(rotation_deg=10, color_jitter=0.2), seed=1)
    ds.set_epoch(4)
    main = torch.stack([ds[i][0] for i in range(16)])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2,
                                         multiprocessing_context="fork")
    workers = torch.cat([x for x, _ in loader])
    assert torch.equal(main, workers)


def test_unlabelled_returns_images_only():
    images = load_splits(DataSpec(kind="digits")).val.subset(range(4))
    labelled = TorchImageSet(images, PRE, None)
    target = labelled.unlabelled()
    assert isinstance(target, UnlabelledSet) and len(target) == 4 and not hasattr(target, "targets")
    x = target[2]
    assert isinstance(x, torch.Tensor) and torch.equal(x, labelled[2][0])
    batch = next(iter(torch.utils.data.DataLoader(target, batch_size=4)))
    assert isinstance(batch, torch.Tensor) and tuple(batch.shape) == (4, 3, 24, 24)


def test_augmented_set_caches_decoded_images_without_changing_pixels():
    images = load_splits(DataSpec(kind="digits")).val.subset(range(3))
    cached = TorchImageSet(images, PRE, Augment(hflip=True, rotation_deg=15), seed=3).preload()
    fresh = TorchImageSet(images, PRE, Augment(hflip=True, rotation_deg=15), seed=3, cache=False)
    assert len(cached._pixels) == 3 and not fresh._pixels
    for epoch in (0, 1):
        cached.set_epoch(epoch), fresh.set_epoch(epoch)
        for i in range(3):
            assert np.array_equal(cached.array(i), fresh.array(i))


def test_large_photos_are_reduced_once_before_augmentation(tmp_path):
    from pipeline.data.imageset import ImageSet
    big = Image.new("RGB", (1200, 900), (10, 200, 30))
    images = ImageSet(ids=["a"], targets=[0], classes=["x"], load=lambda i: big, fingerprint="f")
    ds = TorchImageSet(images, PRE, Augment(), cache=False)   # PRE: 24 px, so crops need <= 48 px
    assert min(ds._source(0).size) < 900 and min(ds._source(0).size) >= 2 * PRE.input_size


def test_modes_become_rgb():
    from pipeline.data.imagefolder import to_rgb
    rgba = Image.new("RGBA", (2, 1), (200, 100, 50, 255))
    rgba.putpixel((1, 0), (255, 255, 255, 0))         # fully transparent: flattened onto black
    assert np.asarray(to_rgb(rgba)).tolist() == [[[200, 100, 50], [0, 0, 0]]]
    gray16 = Image.fromarray(np.array([[0, 65535, 257 * 100]], dtype=np.uint16))
    assert np.asarray(to_rgb(gray16)).tolist() == [[[0, 0, 0], [255, 255, 255], [100, 100, 100]]]
