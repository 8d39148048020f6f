"""Likely mislabels (confident learning on out-of-fold frozen-feature probes) and data.exclude.

The slow test flips the labels of five unmistakable flowers5 photos (a daisy, a dandelion clock,
a rose, a sunflower and a row of tulips, each moved into the next class's folder) in a copy of
the set and runs the probe the finetune stage runs; flowers5 has label problems of its own (a
lotus among the roses, bluebells filed as tulips), so the flipped photos share the top of the
list with those.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataSpec
from pipeline.data import DataWarning, load_splits
from pipeline.data import imagefolder

REPO = Path(__file__).resolve().parents[1]
FLOWERS5 = REPO.parent / "shared" / "data" / "flowers5"
DAISY = "train/daisy/10437754174_22ec990b77_m.jpg"
FLIPPED = {"train/daisy/100080576_f52e8ee070_n.jpg": "dandelion",
           "train/dandelion/11465213433_847c4fa261.jpg": "roses",
           "train/roses/14683774134_6367640585.jpg": "sunflowers",
           "train/sunflowers/1379256773_bb2eb0d95b_n.jpg": "tulips",
           "train/tulips/112428665_d8f3632f36_n.jpg": "daisy"}


# ---------------------------------------------------------------- the ranking
def test_confident_suspects_use_per_class_thresholds_and_rank_by_margin():
    from pipeline.train.mislabels import class_thresholds, confident_suspects
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([
        [0.9, 0.1], [0.9, 0.1], [0.8, 0.2],
        [0.3, 0.7],          # labelled 0, class 1 above its threshold: a suspect, margin 0.4
        [0.4, 0.6], [0.4, 0.6], [0.4, 0.6],
        [0.95, 0.05]])       # labelled 1, class 0 far above its threshold: margin 0.9, first
    t = class_thresholds(probs, labels)
    assert t == pytest.approx([0.725, 0.4625])
    assert [(i, j) for i, j, _, _ in confident_suspects(probs, labels)] == [(7, 0), (3, 1)]
    [(_, _, p, m), _] = confident_suspects(probs, labels)
    assert (p, m) == pytest.approx((0.95, 0.9))
    # class 1's images sit at 0.6: one fixed cut-off of 0.7 would flag all of them; its own
    # threshold (0.46) keeps them, and image 3 at 0.7 is the one that reaches class 1
    assert all(i not in (4, 5, 6) for i, *_ in confident_suspects(probs, labels))


def test_a_label_the_features_agree_with_is_not_a_suspect():
    from pipeline.train.mislabels import confident_suspects
    probs = np.array([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.3, 0.7]])
    assert confident_suspects(probs, np.array([0, 0, 1, 1])) == []


def test_out_of_fold_probe_finds_flipped_labels_in_separable_features():
    from pipeline.train.mislabels import fold_of, likely_mislabels
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32)) * 3
    y = np.repeat(np.arange(3), 40)
    x = centres[y] + rng.normal(size=(120, 32))
    flipped = [5, 50, 100]
    y_given = y.copy()
    y_given[flipped] = (y[flipped] + 1) % 3
    ids = [f"img{i}" for i in range(120)]
    rec = likely_mislabels((x[:90], y_given[:90]), (x[90:], y_given[90:]), (ids[:90], ids[90:]),
                           ["a", "b", "c"], l2=0.1)
    assert {s["path"] for s in rec["suspects"][:3]} == {"img5", "img50", "img100"}
    assert rec["suspects"][0]["confidence"] > 0.9 and rec["count"] == 3
    assert {"path", "label", "predicted", "confidence", "margin"} == set(rec["suspects"][0])
    folds = fold_of(y)
    assert all(np.bincount(folds[y == c]).tolist() == [8] * 5 for c in range(3))


@pytest.mark.slow
@pytest.mark.skipif(not FLOWERS5.is_dir(), reason="the flowers5 development set is not beside the repo")
def test_flipped_flowers5_labels_are_among_the_first_suspects(tmp_path):
    import torch
    from pipeline.config_load import load_config
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.models.registry import ModelSpec, build_model, model_preprocessing
    from pipeline.stages.finetune import data_audit
    from pipeline.train.probe import linear_probe
    root = tmp_path / "flowers5"
    shutil.copytree(FLOWERS5, root)                      # README (credits) travels with the copy
    for rel, to in FLIPPED.items():
        shutil.move(root / rel, root / "train" / to / Path(rel).name)
    imagefolder._checked.clear()
    torch.set_num_threads(2)
    cfg = load_config(REPO / "configs/imagefolder.yaml",
                      [f"data.root={root}", f"run.store={tmp_path / 'runs'}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)     # flowers5's one near copy
        splits = load_splits(cfg.data, 0, cfg.run.store)
        # lite0 at 160 px: a quarter of the teacher's cost, and the same ranking of these five
        spec = ModelSpec("efficientnet_lite0", len(splits.classes), 0.0, 0.0)
        model = build_model(spec, "pretrained")
        pre = model_preprocessing(spec, splits.classes, 160, None)
        probe = linear_probe(model, TorchImageSet(splits.train, pre, None, 0),
                             TorchImageSet(splits.val, pre, None, 0), torch.device("cpu"),
                             cfg.finetune.probe_l2, audit_data=True)
        record = data_audit(cfg, {"probe": probe.to_dict()})
    top = record["mislabels"]["suspects"][:10]
    moved = {f"train/{to}/{Path(rel).name}": rel.split("/")[1] for rel, to in FLIPPED.items()}
    found = [s for s in top if s["path"] in moved]
    assert len(found) >= 4, [(s["path"], s["label"], s["predicted"]) for s in top]
    assert all(s["predicted"] == moved[s["path"]] for s in found)   # the class it came from
    assert record["class_counts"]["train"]["daisy"] == 70 and record["excluded"] == []


# ---------------------------------------------------------------- data.exclude
from test_data_audit import root  # noqa: E402,F401  (the copied photo tree, one fixture for both files)


def test_excluded_images_leave_the_splits_and_are_named(root, tmp_path):
    whole = load_splits(DataSpec(kind="imagefolder", root=str(root)))
    val_one = whole.val.ids[0]
    splits = load_splits(DataSpec(kind="imagefolder", root=str(root), exclude=[DAISY, "./" + val_one]))
    assert DAISY not in splits.train.ids and val_one not in splits.val.ids
    assert len(splits.train) == len(whole.train) - 1 and len(splits.val) == len(whole.val) - 1
    assert splits.excluded == sorted([DAISY, val_one]) and whole.excluded == []
    assert splits.fingerprint != whole.fingerprint
    listing = tmp_path / "exclude.txt"
    listing.write_text(f"# wrong labels, checked by hand\n{DAISY}\n\n")
    from_file = load_splits(DataSpec(kind="imagefolder", root=str(root), exclude=str(listing)))
    assert from_file.excluded == [DAISY] and DAISY not in from_file.train.ids


def test_excluding_a_val_copy_settles_its_leak(root):
    shutil.copy(root / DAISY, root / "val/daisy/leaked.jpg")
    splits = load_splits(DataSpec(kind="imagefolder", root=str(root), exclude=["val/daisy/leaked.jpg"]))
    assert splits.audit["leaked_val_images"] == 0 and splits.audit["images"] == 27


def test_an_entry_matching_no_image_is_a_config_error(root, tmp_path):
    from runtimes.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        load_splits(DataSpec(kind="imagefolder", root=str(root), exclude=[DAISY, "train/daisy/nope.jpg"]))
    assert err.value.exit_code == 2
    assert str(err.value) == (f"data.exclude entry 'train/daisy/nope.jpg' matches no image under "
                              f"data.root '{root}' (entries are paths relative to it, like "
                              f"train/<class>/<file>); fix or remove the entry")
    with pytest.raises(ConfigError, match="data.exclude '.*missing.txt' is not a file"):
        load_splits(DataSpec(kind="imagefolder", root=str(root), exclude=str(tmp_path / "missing.txt")))
    with pytest.raises(ValueError, match="data.exclude names images of an ImageFolder tree"):
        DataSpec(kind="digits", exclude=["x.png"])


def test_exclude_changes_the_cache_key_by_what_it_leaves_out(root, tmp_path):
    from pipeline.config_load import load_config
    from pipeline.stages import finetune
    sets = [f"data.root={root}", f"run.store={tmp_path / 'runs'}"]
    plain = finetune.params(load_config(REPO / "configs/imagefolder.yaml", sets))
    assert "exclude" not in plain["data"]                 # keys from before the setting still match
    listing = tmp_path / "a.txt"
    listing.write_text(DAISY + "\n")
    moved = tmp_path / "b.txt"
    moved.write_text(DAISY + "\n")
    a = finetune.params(load_config(REPO / "configs/imagefolder.yaml", sets + [f"data.exclude={listing}"]))
    b = finetune.params(load_config(REPO / "configs/imagefolder.yaml", sets + [f"data.exclude={moved}"]))
    assert a == b != plain and a["data"]["exclude"] == [DAISY]


def test_cli_audit_leaves_excluded_images_out(root, tmp_path):
    import subprocess
    import sys
    shutil.copy(root / DAISY, root / "val/daisy/leaked.jpg")
    args = [sys.executable, "-m", "pipeline", "audit", "-c", "configs/imagefolder.yaml",
            "--set", f"data.root={root}", "--set", f"run.store={tmp_path / 'runs'}"]
    assert subprocess.run(args, cwd=REPO, capture_output=True, timeout=300).returncode == 7
    done = subprocess.run(args + ["--set", "data.exclude=[val/daisy/leaked.jpg]"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
