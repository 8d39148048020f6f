"""Distillation: the teacher-logit cache's hit/miss rules, the loss hook, and the stage end to end."""
import json
import subprocess

import numpy as np
import pytest
import torch

from pipeline.config import Augment, DataKind, DataSpec
from pipeline.data import load_splits
from pipeline.data.torch_dataset import TorchImageSet
from pipeline.models.registry import ModelSpec, build_model, model_preprocessing
from pipeline.train.distill_loss import DistillLoss, Renormalize
from pipeline.train.teacher_cache import TeacherLogitCache, augmentation_on, cache_key, teacher_logits

CLASSES = [str(d) for d in range(10)]


class CountingTeacher(torch.nn.Module):
    """A real (tiny) model that counts how many batches it was asked to score."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = build_model(ModelSpec("test_efficientnet", 10, 0.0), "none").eval()
        self.calls = 0
        self.eval()

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def _pre(name="test_efficientnet", size=16):
    return model_preprocessing(ModelSpec(name, 10), CLASSES, size, 1.0)


def _data(n=40):
    return load_splits(DataSpec(kind=DataKind.digits), 0).train.subset(range(n))


def test_teacher_cache_miss_then_hit(tmp_path):
    images, pre, teacher = _data(), _pre(), CountingTeacher()
    ds, logs = TorchImageSet(images, pre, None), []
    cache = TeacherLogitCache(tmp_path, log=logs.append)
    first = teacher_logits(cache, teacher, "sha-a", ds, images.fingerprint, pre, torch.device("cpu"))
    calls = teacher.calls
    assert (cache.hits, cache.misses) == (0, 1) and calls >= 1 and first.shape == (40, 10)
    again = TeacherLogitCache(tmp_path, log=logs.append)          # a later run, same store
    second = teacher_logits(again, teacher, "sha-a", ds, images.fingerprint, pre, torch.device("cpu"))
    assert (again.hits, again.misses) == (1, 0) and teacher.calls == calls   # teacher not run on a hit
    assert np.array_equal(first, second) and second.dtype == np.float32
    name = cache_key("sha-a", images.fingerprint, pre) + ".npy"                # no temp files left
    assert sorted(p.name for p in cache.folder.iterdir()) == [name, name + ".sha256"]
    assert "cache miss" in logs[0] and "cache hit" in logs[1]
    with torch.no_grad():
        direct = torch.cat([teacher.model(ds[i][0][None]) for i in range(3)]).numpy()
    assert np.allclose(first[:3], direct, atol=1e-5)                            # row i is sample i


def test_teacher_cache_key_follows_teacher_data_and_preprocessing(tmp_path):
    images, pre = _data(), _pre()
    base = cache_key("sha-a", images.fingerprint, pre)
    assert cache_key("sha-a", images.fingerprint, pre) == base
    assert cache_key("sha-b", images.fingerprint, pre) != base                  # retrained teacher
    assert cache_key("sha-a", _data(39).fingerprint, pre) != base               # other data
    assert cache_key("sha-a", images.fingerprint, _pre(size=24)) != base       # other pixels
    teacher, ds = CountingTeacher(), TorchImageSet(images, pre, None)
    cache = TeacherLogitCache(tmp_path, log=lambda m: None)
    teacher_logits(cache, teacher, "sha-a", ds, images.fingerprint, pre, torch.device("cpu"))
    teacher_logits(cache, teacher, "sha-b", ds, images.fingerprint, pre, torch.device("cpu"))
    small = _data(39)
    teacher_logits(cache, teacher, "sha-a", TorchImageSet(small, pre, None), small.fingerprint, pre,
                   torch.device("cpu"))
    teacher_logits(cache, teacher, "sha-b", ds, images.fingerprint, pre, torch.device("cpu"))
    assert (cache.hits, cache.misses) == (1, 3)
    assert len(list(cache.folder.glob("*.npy"))) == 3


def test_cache_with_wrong_row_count_is_recomputed(tmp_path):
    images, pre = _data(), _pre()
    cache = TeacherLogitCache(tmp_path, log=lambda m: None)
    cache.folder.mkdir(parents=True)
    np.save(cache.path(cache_key("sha-a", images.fingerprint, pre)), np.zeros((5, 10), np.float32))
    out = teacher_logits(cache, CountingTeacher(), "sha-a", TorchImageSet(images, pre, None),
                         images.fingerprint, pre, torch.device("cpu"))
    assert out.shape == (40, 10) and (cache.hits, cache.misses) == (0, 1)


def test_renormalize_maps_student_pixels_to_teacher_pixels():
    images = _data(4)
    student, teacher = _pre("efficientnet_lite0"), _pre("resnet18")        # 0.5/0.5 vs ImageNet mean/std
    assert student.mean != teacher.mean
    xs = torch.stack([TorchImageSet(images, student, None)[i][0] for i in range(4)])
    xt = torch.stack([TorchImageSet(images, teacher, None)[i][0] for i in range(4)])
    assert torch.allclose(Renormalize(student, teacher, "cpu")(xs), xt, atol=1e-5)
    assert Renormalize(student, student, "cpu")(xs) is xs


def test_distill_loss_uses_cache_or_runs_teacher_on_the_same_batch():
    teacher, pre = CountingTeacher(), _pre()
    student = build_model(ModelSpec("test_efficientnet", 10, 0.0), "none")
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    cached = torch.randn(10, 10)
    with_cache = DistillLoss(teacher, cached, Renormalize(pre, pre, "cpu"), 4.0, 0.7, 0.0)
    loss, logits = with_cache(student, x, y, torch.arange(6) + 2, 0.0)
    assert teacher.calls == 0 and with_cache.teacher_batches == 0 and logits.shape == (6, 10)
    from pipeline.train.distill_loss import kd_loss
    assert torch.allclose(loss, kd_loss(logits, cached[2:8], y, 4.0, 0.7))       # looked up by index
    live = DistillLoss(teacher, None, Renormalize(pre, pre, "cpu"), 4.0, 0.7, 0.0)
    loss, logits = live(student, x, y, torch.arange(6), 0.0)
    assert teacher.calls == 1 and live.teacher_batches == 1
    with torch.no_grad():
        assert torch.allclose(loss, kd_loss(logits, teacher.model(x), y, 4.0, 0.7))


def test_augmentation_on():
    assert augmentation_on(Augment())
    off = Augment(random_resized_crop=None, hflip=False, rotation_deg=0, color_jitter=0)
    assert not augmentation_on(off)
    assert augmentation_on(off.model_copy(update={"hflip": True}))
    assert augmentation_on(off.model_copy(update={"color_jitter": 0.1}))


TINY_DISTILL = ["distill.student=test_efficientnet", "distill.weights=none", "distill.train.epochs=1",
                "distill.train.batch_size=64", "distill.train.warmup_epochs=0", "distill.drop_rate=0.0",
                "distill.train.augment.random_resized_crop=null", "distill.train.augment.rotation_deg=0"]


@pytest.mark.slow
def test_distill_stage_end_to_end(cli, tiny_args, tmp_path):
    args = [*tiny_args, *[a for item in TINY_DISTILL for a in ("--set", item)]]
    first = subprocess.run(cli("run", "distill", *args), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    [path] = list((tmp_path / "runs" / "distill").glob("*/manifest.json"))
    m = json.loads(path.read_text())
    metrics = m["metrics"]
    assert metrics["teacher_logit_cache"] == {"used": True, "hits": 0, "misses": 1}
    assert metrics["teacher_batches_run"] == 0
    assert metrics["teacher_top1"] > 60.0 and 0 <= metrics["val_top1"] <= 100
    assert metrics["student_alone_top1"] is not None and len(metrics["history"]["alone"]) == 1
    gain, gap = metrics["distill_gain"], metrics["teacher_gap"]      # paired, image by image
    assert gain["points"] == pytest.approx(metrics["distill_gain_points"], abs=1e-3)
    assert gap["points"] == pytest.approx(metrics["val_top1"] - metrics["teacher_top1"], abs=1e-3)
    assert gain["low"] <= gain["points"] <= gain["high"] and gain["images"] == gap["images"]
    assert "distill: distilled vs alone " in first.stderr and f"on {gain['images']} val images" in first.stderr
    assert metrics["student"]["params"] < metrics["teacher"]["params"]
    assert metrics["student"]["macs"] < metrics["teacher"]["macs"]
    assert m["inputs"]["finetune"]["outputs"]["model"]
    meta = m["outputs"]["model"]["metadata"]
    assert meta["spec"]["name"] == "test_efficientnet"
    assert meta["preprocessing"]["input_size"] == 32                     # the teacher's input size
    assert list((tmp_path / "runs" / "cache" / "teacher-logits").glob("*.npy"))
    # a new student setting re-runs distill only; the teacher's logits come from the cache
    again = subprocess.run(cli("run", "distill", *args, "--set", "distill.alpha=0.5",
                               "--set", "distill.compare_alone=false"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finetune   cached" in again.stderr and "distill    running" in again.stderr
    assert "teacher logits: cache hit" in again.stderr
    newest = max((tmp_path / "runs" / "distill").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    second = json.loads(newest.read_text())["metrics"]
    assert second["teacher_logit_cache"]["hits"] == 1 and second["teacher_logit_cache"]["misses"] == 0
    assert second["student_alone_top1"] is None and second["teacher_top1"] == metrics["teacher_top1"]
