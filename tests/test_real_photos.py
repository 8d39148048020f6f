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


def _all_metrics(store: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text())["metrics"] for p in (store / stage).glob("*/manifest.json")]


def _metrics(store: Path, stage: str) -> dict:
    [metrics] = _all_metrics(store, stage)
    return metrics


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


@pytest.mark.slow
def test_student_auto_probes_the_cheapest_candidates_first(tmp_path):
    """The rule, restated: candidates by MACs, any as costly as the teacher left out, the first
    whose probe is within student_within of the teacher is the student (else the best probe)."""
    store = tmp_path / "runs"
    base = ("finetune.strategy=linear_probe", "finetune.negative_transfer_check=false",
            "distill.compare_alone=false", "distill.student=auto")
    done = _run(store, *base, "distill.student_candidates=[efficientnet_lite2, efficientnet_lite1, "
                "efficientnet_lite0]", "distill.student_within=0")
    assert done.returncode == 0, done.stderr[-3000:]
    d = _metrics(store, "distill")
    choice, teacher = d["student_choice"], d["teacher_top1"]
    macs = [c["macs"] for c in choice["candidates"]]
    assert [c["backbone"] for c in choice["candidates"]][-1] == "efficientnet_lite2" and macs == sorted(macs)
    assert "not fewer than the teacher's" in choice["candidates"][-1]["left_out"]
    probed = [c for c in choice["candidates"] if "probe_val_top1" in c]
    within = [c for c in probed if c["probe_val_top1"] >= teacher]
    expected = within[0] if within else max(probed, key=lambda c: c["probe_val_top1"])
    assert choice["chosen"] == expected["backbone"] == d["student"]["backbone"]
    assert probed[-1] is expected or not within        # nothing probed after the one chosen
    assert all("not probed" in c["left_out"] for c in choice["candidates"][len(probed):-1])
    assert f"student auto chose {expected['backbone']}" in done.stderr
    assert d["history"]["distilled"][0]["val_top1"] == expected["probe_val_top1"]   # its probe reused

    generous = _run(store, *base, "distill.student_within=100")        # the cheapest is always within
    assert generous.returncode == 0, generous.stderr[-3000:]
    [m] = [m for m in _all_metrics(store, "distill") if m["student_choice"]["within"] == 100]
    assert m["student_choice"]["chosen"] == "efficientnet_lite0"
    assert [c["backbone"] for c in m["student_choice"]["candidates"] if "probe_val_top1" in c] == [
        "efficientnet_lite0"]

    costly = _run(store, *base, "distill.student_candidates=[efficientnet_lite2]")
    assert costly.returncode == 2 and "Traceback" not in costly.stderr
    assert "none has fewer MACs than the teacher" in costly.stderr
    checkpoint = _run(store, *base, "distill.weights=/tmp/student.safetensors")
    assert checkpoint.returncode == 2 and "name that student instead" in checkpoint.stderr


def test_student_auto_without_a_candidate_within_takes_the_best_probe_and_warns(caplog):
    import torch

    from pipeline.config_load import load_config
    from pipeline.data import load_splits
    from pipeline.models.registry import ModelSpec, model_preprocessing
    from pipeline.train.student_choice import choose_student
    cfg = load_config(REPO / "configs" / "imagefolder.yaml", [f"data.root={PHOTOS}"])
    splits = load_splits(cfg.data, 0)
    teacher_pre = model_preprocessing(ModelSpec("efficientnet_lite2", 3), splits.classes, 64, 0.875)
    args = (cfg.distill, splits, teacher_pre)
    unreachable = choose_student(*args, 101.0, 10**12, torch.device("cpu"), [0.1])
    scores = {c["backbone"]: c["probe_val_top1"] for c in unreachable.record["candidates"]}
    assert list(scores) == ["efficientnet_lite0", "efficientnet_lite1"]          # both probed
    assert unreachable.name == max(scores, key=scores.get) and unreachable.probe.val_top1 == scores[unreachable.name]
    assert "no candidate's probe is within 1 points of the teacher (101.00%)" in caplog.text
    cheapest = choose_student(*args, 0.0, 10**12, torch.device("cpu"), [0.1])
    assert cheapest.name == "efficientnet_lite0" and "not probed" in cheapest.record["candidates"][1]["left_out"]
