"""Real photographs through the imagefolder path: the auto strategy, LP-FT and distillation with
mixed views, end to end through the CLI, on 27 Flickr photos (tests/data/flowers-mini, CC BY 2.0,
credits in its ATTRIBUTION.txt)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "tests" / "data" / "flowers-mini"

# The shipped config for users' photos, made small: 64 px, one short epoch per training run.
SMALL = ["finetune.input_size=64", "finetune.train.epochs=1", "finetune.train.batch_size=9",
         "distill.train.epochs=1", "distill.train.batch_size=9", "run.threads=2"]


def _run(store: Path, *sets: str, stage: str = "distill") -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "pipeline", "run", stage, "-c", "configs/imagefolder.yaml",
            "--set", f"data.root={PHOTOS}", "--set", f"run.store={store}"]
    for s in (*SMALL, *sets):
        args += ["--set", s]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)


def _metrics(store: Path, stage: str) -> dict:
    [path] = list((store / stage).glob("*/manifest.json"))
    return json.loads(path.read_text())["metrics"]


def test_fixture_credits_every_photo():
    photos = sorted(str(p.relative_to(PHOTOS)) for p in PHOTOS.rglob("*.jpg"))
    credited = sorted(line.split("\t")[0] for line in (PHOTOS / "ATTRIBUTION.txt").read_text().splitlines()
                      if "\tCC-BY by " in line)
    assert len(photos) == 27 and photos == credited


@pytest.mark.slow
def test_auto_probes_and_picks_the_linear_probe_for_six_photos_per_class(tmp_path):
    done = _run(tmp_path / "runs", stage="finetune")
    assert done.returncode == 0, done.stderr[-3000:]
    m = _metrics(tmp_path / "runs", "finetune")
    st = m["strategy"]
    assert st["configured"] == "auto" and st["chosen"] == "linear_probe" and st["kept"] == "linear_probe"
    assert "only 6 training images" in st["reason"] and st["inputs"]["min_train_per_class"] == 6
    assert st["candidates"] == [{"strategy": "linear_probe", "val_top1": st["probe"]["val_top1"]}]
    assert m["val_top1"] == st["probe"]["val_top1"] > 100 / 3          # better than chance on 9 photos
    nt = m["negative_transfer"]                                         # shipped on in this config
    assert nt["scratch_budget_seconds"] >= 1.0 and "scratch_top1" in nt


@pytest.mark.slow
def test_lp_ft_then_distillation_with_mixed_views(tmp_path):
    store = tmp_path / "runs"
    done = _run(store, "finetune.strategy=lp_ft", "finetune.negative_transfer_check=false")
    assert done.returncode == 0, done.stderr[-3000:]
    ft = _metrics(store, "finetune")
    probe = ft["strategy"]["probe"]["val_top1"]
    assert ft["strategy"]["chosen"] == "lp_ft" and [r["epoch"] for r in ft["history"]] == [0, 1]
    assert ft["history"][0]["val_top1"] == probe and ft["val_top1"] >= probe   # never below its probe
    d = _metrics(store, "distill")
    assert d["augmentation"] is True and d["teacher_logit_cache"]["used"] is False
    assert d["teacher_batches_run"] == 2             # 18 training photos, batches of 9, one epoch
    for run in ("distilled", "alone"):               # both students start from their own probe
        assert [r["epoch"] for r in d["history"][run]] == [0, 1]
    assert "linear probe on 1280 frozen features of 18 images" in done.stderr
    assert d["unlabelled_images"] == 0


@pytest.mark.slow
def test_unlabelled_folder_adds_teacher_matched_batches(tmp_path):
    """A folder of unlabelled photos (the fixture's val tree, labels unused): every distillation
    step also runs the teacher on a batch of them; a broken folder is one clear line."""
    store = tmp_path / "runs"
    base = ("finetune.strategy=linear_probe", "finetune.negative_transfer_check=false",
            "distill.compare_alone=false", "distill.probe_init=false")
    done = _run(store, *base, f"distill.unlabelled_root={PHOTOS / 'val'}")
    assert done.returncode == 0, done.stderr[-3000:]
    d = _metrics(store, "distill")
    assert d["unlabelled_images"] == 9
    assert d["teacher_batches_run"] == 4              # 2 labelled steps, each with an unlabelled batch
    missing = _run(store, *base, f"distill.unlabelled_root={tmp_path / 'nowhere'}")
    assert missing.returncode == 7 and "Traceback" not in missing.stderr
    assert f"distill.unlabelled_root '{tmp_path / 'nowhere'}' is not a folder" in missing.stderr
