"""Calibration sources: seeded stratified sampling, fingerprints, the tensor cache, and adapters."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calibration.adapters import nncf_dataset, ort_reader
from calibration.cache import tensor_cache_path
from calibration.preprocess import Preprocessing
from calibration.source import CalibrationSource, ImageSet, stratified_sample

REPO = Path(__file__).resolve().parents[1]


class DigitsSet:
    """The scikit-learn handwritten digits as an ImageSet; counts image() reads."""

    def __init__(self, positions=None, ids=None):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self._images, all_targets = digits.images, digits.target
        self.positions = list(range(len(all_targets))) if positions is None else list(positions)
        self.ids = ids or [f"digits:{p}" for p in self.positions]
        self.targets = [int(all_targets[p]) for p in self.positions]
        self.reads = 0

    def image(self, i: int) -> Image.Image:
        self.reads += 1
        pixels = (self._images[self.positions[i]] * (255.0 / 16.0)).astype(np.uint8)
        return Image.fromarray(pixels).convert("RGB")


PRE = Preprocessing(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), labels=tuple("0123456789"))


@pytest.fixture(scope="module")
def digits() -> DigitsSet:
    return DigitsSet()


def test_digits_set_is_an_imageset(digits):
    assert isinstance(digits, ImageSet)


def test_same_seed_same_sample_and_bytes_other_seed_other_sample(digits):
    a = CalibrationSource.from_imageset(digits, PRE, size=40, seed=3)
    b = CalibrationSource.from_imageset(digits, PRE, size=40, seed=3)
    c = CalibrationSource.from_imageset(digits, PRE, size=40, seed=4)
    assert a.ids == b.ids and len(set(a.ids)) == 40
    assert a.tensors().tobytes() == b.tensors().tobytes()
    assert a.tensors().shape == (40, 3, 16, 16) and a.tensors().dtype == np.float32
    assert c.ids != a.ids


def test_sample_does_not_depend_on_listing_order(digits):
    a = stratified_sample(digits.ids, digits.targets, 30, seed=1)
    rev_ids, rev_targets = digits.ids[::-1], digits.targets[::-1]
    b = stratified_sample(rev_ids, rev_targets, 30, seed=1)
    assert sorted(digits.ids[p] for p in a) == sorted(rev_ids[p] for p in b)


def test_sample_does_not_depend_on_pythonhashseed():
    code = (
        "from calibration.source import stratified_sample\n"
        "ids=[f'img/{c}/{k}.png' for c in 'abc' for k in range(40)]\n"
        "targets=[i // 40 for i in range(120)]\n"
        "print(stratified_sample(ids, targets, 17, seed=5))\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1


def test_stratified_counts_are_proportional(digits):
    src = CalibrationSource.from_imageset(digits, PRE, size=50, seed=0)
    counts = Counter(digits.targets[p] for p in src.data)
    assert sorted(counts) == list(range(10))
    assert all(4 <= n <= 6 for n in counts.values()), counts


def test_stratified_counts_imbalanced_keep_every_class():
    # class 0: 100 images, class 1: 10, class 2: 2 -> quotas 17.9 / 1.8 / 0.4 of 20
    base = DigitsSet()
    pick = [p for p in range(1797) if base.targets[p] == 0][:100]
    pick += [p for p in range(1797) if base.targets[p] == 1][:10]
    pick += [p for p in range(1797) if base.targets[p] == 2][:2]
    imbalanced = DigitsSet(positions=pick)
    src = CalibrationSource.from_imageset(imbalanced, PRE, size=20, seed=0)
    assert Counter(imbalanced.targets[p] for p in src.data) == {0: 18, 1: 1, 2: 1}


def test_size_larger_than_set_names_both():
    small = DigitsSet(positions=range(12))
    with pytest.raises(ValueError, match=r"calibration size 13 .* 12 images"):
        CalibrationSource.from_imageset(small, PRE, size=13)


def test_fingerprint_changes_with_seed_size_preprocessing_and_files(digits):
    base = CalibrationSource.from_imageset(digits, PRE, size=20, seed=0)
    same = CalibrationSource.from_imageset(digits, PRE, size=20, seed=0)
    renamed = DigitsSet(ids=[f"other/{k}.png" for k in range(1797)])
    variants = [
        CalibrationSource.from_imageset(digits, PRE, size=20, seed=1),
        CalibrationSource.from_imageset(digits, PRE, size=21, seed=0),
        CalibrationSource.from_imageset(digits, PRE.with_(interpolation="bicubic"), size=20, seed=0),
        CalibrationSource.from_imageset(digits, PRE.with_(mean=[0.4, 0.5, 0.5]), size=20, seed=0),
        CalibrationSource.from_imageset(renamed, PRE, size=20, seed=0),
    ]
    assert base.fingerprint == same.fingerprint and len(base.fingerprint) == 64
    assert len({base.fingerprint, *(v.fingerprint for v in variants)}) == 1 + len(variants)


def test_tensors_are_the_preprocessing_of_the_sampled_images(digits):
    src = CalibrationSource.from_imageset(digits, PRE, size=8, seed=2)
    t = src.tensors()
    for k, p in enumerate(src.data):
        np.testing.assert_array_equal(t[k], PRE(digits.image(p)))
        np.testing.assert_array_equal(src.transform(p), t[k][None])


def test_cache_hit_reads_no_images(tmp_path):
    first_set, second_set = DigitsSet(), DigitsSet()
    first = CalibrationSource.from_imageset(first_set, PRE, size=25, seed=0, cache_dir=tmp_path)
    t1 = first.tensors()
    assert first.cache_hit is False and first_set.reads == 25
    assert tensor_cache_path(tmp_path, first.fingerprint).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{first.fingerprint}.npy",   # no temp files left
                                                          f"{first.fingerprint}.npy.sha256"]

    second = CalibrationSource.from_imageset(second_set, PRE, size=25, seed=0, cache_dir=tmp_path)
    t2 = second.tensors()
    assert second.cache_hit is True and second_set.reads == 0
    assert t1.tobytes() == t2.tobytes()


def test_corrupt_cache_is_rebuilt(tmp_path):
    images = DigitsSet()
    src = CalibrationSource.from_imageset(images, PRE, size=5, seed=0, cache_dir=tmp_path)
    tensor_cache_path(tmp_path, src.fingerprint).write_bytes(b"not a numpy file")
    t = src.tensors()
    assert src.cache_hit is False and images.reads == 5 and t.shape == (5, 3, 16, 16)


def test_ort_reader_yields_batches_then_none_and_rewinds(digits):
    src = CalibrationSource.from_imageset(digits, PRE, size=10, seed=0)
    reader = ort_reader(src, "input", batch_size=4)
    shapes = []
    while (batch := reader.get_next()) is not None:
        assert list(batch) == ["input"] and batch["input"].dtype == np.float32
        shapes.append(batch["input"].shape)
    assert shapes == [(4, 3, 16, 16), (4, 3, 16, 16), (2, 3, 16, 16)] and len(reader) == 3
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input"], src.tensors()[:4])

    single = ort_reader(src, "x")
    assert sum(1 for _ in single) == 10


def test_nncf_dataset_iterates_all_items(digits):
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'edgeship[nncf]')")
    src = CalibrationSource.from_imageset(digits, PRE, size=6, seed=0)
    ds = nncf_dataset(src, "input")
    items = list(ds.get_inference_data())
    assert len(items) == 6 and ds.get_length() == 6
    for k, item in enumerate(items):
        assert list(item) == ["input"] and item["input"].shape == (1, 3, 16, 16)
        np.testing.assert_array_equal(item["input"][0], src.tensors()[k])
