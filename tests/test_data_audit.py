"""The data audit on real photos: copies of tests/data/flowers-mini (flowers5 photos, CC BY 2.0,
its ATTRIBUTION.txt travels with every copy) with a training photo leaked into val as the same
bytes, as the same pixels in another format, re-encoded and resized; one put under another
class; one repeated; and a PNG cut short. Leaks and conflicts stop the run (exit 7) unless
allowed, the rest is warned about and recorded."""
from __future__ import annotations

import io
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataSpec
from pipeline.data import DataError, DataWarning, load_splits
from pipeline.data import imagefolder
from pipeline.data.perceptual import as_uint64, hamming, perceptual_hash

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "data" / "flowers-mini"
FLOWERS5 = REPO.parent / "shared" / "data" / "flowers5"
DAISY = "train/daisy/10437754174_22ec990b77_m.jpg"


@pytest.fixture
def root(tmp_path):
    imagefolder._checked.clear()
    out = tmp_path.resolve() / "photos"
    shutil.copytree(PHOTOS, out)
    return out


def _load(root: Path, **kw):
    """(splits, warning texts)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_splits(DataSpec(kind="imagefolder", root=str(root), **kw))
    return splits, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def _refused(root: Path, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_splits(DataSpec(kind="imagefolder", root=str(root), **kw))
    assert err.value.exit_code == 7
    return str(err.value)


def _saved(image: Image.Image, path: Path, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kw)
    return path


def test_untouched_copy_has_nothing_to_report(root):
    splits, warned = _load(root)
    assert warned == []
    assert splits.audit == {"images": 27, "leaked_val_images": 0,
                            "exact": {"leaks": [], "conflicts": [], "repeats": []},
                            "near": {"max_bits": 4, "pairs": []}}


def test_byte_copy_in_val_is_leakage_and_stops_the_run(root):
    shutil.copy(root / DAISY, root / "val/daisy/leaked.jpg")
    assert _refused(root) == (
        f"data.root '{root}': 1 val image(s) are copies of training images (train/val leakage: the "
        f"val accuracy would count images the model learnt): {DAISY} = val/daisy/leaked.jpg; delete "
        f"the val copy of each, or set data.allow_leakage: true to train anyway")
    splits, warned = _load(root, allow_leakage=True)
    assert len(warned) == 1 and warned[0].endswith("(data.allow_leakage: true)")
    assert splits.audit["leaked_val_images"] == 1
    assert splits.audit["exact"]["leaks"] == [{"images": [DAISY, "val/daisy/leaked.jpg"], "labels": ["daisy"],
                                               "same_bytes": True, "leak": True, "conflict": False}]


def test_same_pixels_in_another_format_is_leakage(root):
    pixels = Image.open(root / DAISY).convert("RGB")
    _saved(pixels, root / "val/daisy/as.png", "PNG")          # lossless: the same pixels, other bytes
    message = _refused(root)
    assert f"{DAISY} = val/daisy/as.png (same pixels, other bytes)" in message


@pytest.mark.parametrize("edit, most_bits", [
    (lambda im: (im, {"quality": 40}), 4),                                  # re-encoded at another quality
    (lambda im: (im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.Resampling.LANCZOS),
                 {"quality": 90}), 4),                                     # resized by 10%
])
def test_edited_copy_in_val_is_a_near_copy_warned_and_recorded(root, edit, most_bits):
    image, kw = edit(Image.open(root / DAISY).convert("RGB"))
    _saved(image, root / "val/daisy/edited.jpg", "JPEG", **kw)
    splits, warned = _load(root)
    [pair] = splits.audit["near"]["pairs"]
    assert pair["val"] == "val/daisy/edited.jpg" and pair["train"] == DAISY and pair["same_label"]
    assert 0 <= pair["bits"] <= most_bits
    assert splits.audit["leaked_val_images"] == 1 and splits.audit["exact"]["leaks"] == []
    assert len(warned) == 1 and f"val/daisy/edited.jpg ~ {DAISY} ({pair['bits']} bits)" in warned[0]


def test_photo_under_another_class_is_a_conflict(root):
    shutil.copy(root / DAISY, root / "val/roses/mislabelled.jpg")
    message = _refused(root)
    assert message.startswith(
        f"data.root '{root}': 1 image(s) under two labels, so one label is wrong for them: {DAISY} "
        f"(daisy) = val/roses/mislabelled.jpg (roses); keep each under its right class only, or set "
        f"data.allow_conflicting_labels: true to train anyway")
    # allowed as a conflict, it is still a leak; allowed as both, it trains with two warnings
    assert "train/val leakage" in _refused(root, allow_conflicting_labels=True)
    splits, warned = _load(root, allow_conflicting_labels=True, allow_leakage=True)
    assert len(warned) == 2 and splits.audit["exact"]["conflicts"][0]["labels"] == ["daisy", "roses"]


def test_conflict_within_train_stops_the_run_too(root):
    shutil.copy(root / DAISY, root / "train/sunflowers/copy.jpg")
    assert f"{DAISY} (daisy) = train/sunflowers/copy.jpg (sunflowers)" in _refused(root)


def test_repeats_within_one_class_are_counted_and_warned(root):
    shutil.copy(root / DAISY, root / "train/daisy/again.jpg")
    shutil.copy(root / DAISY, root / "train/daisy/and-again.jpg")
    splits, warned = _load(root)
    assert len(splits.train) == 20
    assert warned == [f"data.root '{root}': 2 extra cop(ies) of 1 image(s) within one split and class, "
                      f"which weigh them double: {DAISY} = train/daisy/again.jpg = "
                      f"train/daisy/and-again.jpg"]
    [group] = splits.audit["exact"]["repeats"]
    assert len(group["images"]) == 3 and splits.audit["leaked_val_images"] == 0


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _partial_png(photo: Path, rows: int) -> bytes:
    """The photo as a PNG whose compressed data ends cleanly after `rows` rows: valid chunk CRCs
    and IEND, as a cut-off upload closed by another tool leaves it."""
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def test_partial_png_is_named_not_decoded_with_black_rows(root):
    data = _partial_png(root / DAISY, 10)
    with Image.open(io.BytesIO(data)) as im:               # what Pillow alone makes of it
        im.load()
        black = int((np.asarray(im).reshape(im.height, -1).max(axis=1) == 0).sum())
    assert black == im.height - 10
    (root / "train/daisy/partial.png").write_bytes(data)
    message = _refused(root)
    assert message == (f"image '{root}/train/daisy/partial.png' cannot be read (PNG data ends after 10 "
                       f"of its {im.height} rows (the file was cut short; the decoder would fill the "
                       f"rest with black)); replace or delete it, or set data.skip_corrupt: true to "
                       f"leave unreadable images out")
    splits, _ = _load(root, skip_corrupt=True)
    assert splits.skipped == ["train/daisy/partial.png"] and len(splits.train) == 18


def test_whole_png_passes(root):
    _saved(Image.open(root / "train/roses/1540738662_7b4152e344_m.jpg").convert("RGB").rotate(90, expand=True),
           root / "train/daisy/whole.png", "PNG")
    splits, warned = _load(root)
    assert "train/daisy/whole.png" in splits.train.ids and warned == []


def test_scan_cache_keeps_the_fingerprints(root, tmp_path):
    shutil.copy(root / DAISY, root / "train/daisy/again.jpg")
    store = tmp_path / "runs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        cold = load_splits(DataSpec(kind="imagefolder", root=str(root)), store_root=store)
        imagefolder._checked.clear()                       # as a new process would start
        warm = load_splits(DataSpec(kind="imagefolder", root=str(root)), store_root=store)
    assert warm.audit == cold.audit and len(warm.audit["exact"]["repeats"]) == 1


@pytest.mark.skipif(not FLOWERS5.is_dir(), reason="the flowers5 development set is not beside the repo")
def test_flowers5_rose_under_two_filters_is_the_one_near_copy():
    imagefolder._checked.clear()
    splits, warned = _load(FLOWERS5)
    assert splits.audit["images"] == 525 and splits.audit["exact"] == {"leaks": [], "conflicts": [], "repeats": []}
    assert splits.audit["near"]["pairs"] == [{"val": "val/roses/12406418663_af20dc225f_n.jpg",
                                              "train": "train/roses/12407768513_3440238148_n.jpg",
                                              "bits": 4, "same_label": True}]
    assert len(warned) == 1


def test_perceptual_hash_bits():
    """Hamming distances between hashes are the bits that differ; a photo's hash survives
    re-encoding within 4 bits and differs from another photo's by far more."""
    a = Image.open(PHOTOS / DAISY).convert("RGB")
    buf = io.BytesIO()
    a.save(buf, "JPEG", quality=50)
    b = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    c = Image.open(PHOTOS / "train/roses/1540738662_7b4152e344_m.jpg").convert("RGB")
    h = as_uint64([perceptual_hash(x) for x in (a, b, c)])
    d = hamming(h, h)
    assert d[0, 0] == 0 and d[0, 1] <= 4 and d[0, 2] >= 16
    assert hamming(as_uint64(["ffffffffffffffff"]), as_uint64(["0"]))[0, 0] == 64


# ---------------------------------------------------------------- the command and the gate
def _audit_cli(root: Path, tmp_path: Path, *extra: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "pipeline", "audit", "-c", "configs/imagefolder.yaml",
                           "--set", f"data.root={root}", "--set", f"run.store={tmp_path / 'runs'}", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cli_audit_prints_every_finding_then_exits_7_on_a_leak(root, tmp_path):
    shutil.copy(root / DAISY, root / "val/daisy/leaked.jpg")
    shutil.copy(root / DAISY, root / "train/daisy/again.jpg")
    done = _audit_cli(root, tmp_path)
    assert done.returncode == 7, done.stderr
    assert done.stdout.splitlines() == [
        "audit: 29 images: 1 exact copies across train/val, 0 images under two labels, 0 repeated "
        "within a split, 0 near copies across train/val (perceptual hash within 4 bits); 1 val "
        "image(s) have a copy in train",
        f"  leak             {DAISY} (daisy) = train/daisy/again.jpg (daisy) = val/daisy/leaked.jpg "
        f"(daisy) (same bytes)"]
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"edgeship: data.root '{root}': 1 val image(s) are copies of training images")
    allowed = _audit_cli(root, tmp_path, "--set", "data.allow_leakage=true", "--json")
    assert allowed.returncode == 0, allowed.stderr
    import json
    assert json.loads(allowed.stdout)["leaked_val_images"] == 1


def test_cli_audit_of_a_clean_tree_exits_0(root, tmp_path):
    done = _audit_cli(root, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("audit: 27 images: 0 exact copies") and done.stdout.count("\n") == 1


def test_gate_counts_leaked_val_images(root, tmp_path):
    from pipeline.config_load import load_config
    from pipeline.gate.junit import to_junit
    from pipeline.stages.check import _leak_budget
    shutil.copy(root / DAISY, root / "val/daisy/leaked.jpg")
    image = Image.open(root / DAISY).convert("RGB")
    _saved(image, root / "val/daisy/edited.jpg", "JPEG", quality=40)
    sets = [f"data.root={root}", f"run.store={tmp_path / 'runs'}", "data.allow_leakage=true"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        [fail] = _leak_budget(load_config(REPO / "configs/imagefolder.yaml", sets + ["check.max_leaked_images=1"]))
        [ok] = _leak_budget(load_config(REPO / "configs/imagefolder.yaml", sets + ["check.max_leaked_images=2"]))
    assert (fail.status, fail.measured, ok.status) == ("fail", 2, "pass")
    assert fail.message == (f"FAIL max_leaked_images: 2 val image(s) with an exact or near copy in train, "
                            f"limit <= 1: val/daisy/leaked.jpg = {DAISY}, val/daisy/edited.jpg ~ {DAISY}")
    assert "max_leaked_images" in to_junit([fail, ok], "", inconclusive_fails=False)
    assert _leak_budget(load_config(None, ["check.max_leaked_images=0"]))[0].status == "skip"
    assert _leak_budget(load_config(REPO / "configs/imagefolder.yaml", sets)) == []


# ---------------------------------------------------------------- look-alikes in the frozen features
def test_lookalikes_rank_the_one_standing_out():
    from pipeline.train.lookalikes import lookalikes
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 64))
    val = rng.normal(size=(10, 64))
    val[3] = train[17] + 0.3 * rng.normal(size=64)       # a second shot of training image 17
    found = lookalikes(train, val, [f"t{i}" for i in range(40)], [f"v{i}" for i in range(10)])
    assert [(f["val"], f["train"]) for f in found] == [("v3", "t17")]
    # cosine of x and x + 0.3 noise in 64 dimensions: 1/sqrt(1 + 0.09) = 0.958; runners-up ~ 0.15
    assert 0.93 < found[0]["similarity"] < 0.97 and found[0]["margin"] > 0.7
    assert lookalikes(train[:1], val, ["t0"], [f"v{i}" for i in range(10)]) == []


@pytest.mark.slow
def test_finetune_manifest_records_the_audit_and_the_lookalikes(root, tmp_path):
    import json
    import subprocess
    import sys
    shutil.copy(root / DAISY, root / "val/daisy/leaked.jpg")
    args = [sys.executable, "-m", "pipeline", "run", "finetune", "-c", "configs/imagefolder.yaml"]
    for s in [f"data.root={root}", f"run.store={tmp_path / 'runs'}", "finetune.input_size=64",
              "finetune.strategy=linear_probe", "run.threads=2"]:
        args += ["--set", s]
    refused = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert refused.returncode == 7 and "train/val leakage" in refused.stderr
    assert not (tmp_path / "runs" / "finetune").exists()
    done = subprocess.run(args + ["--set", "data.allow_leakage=true"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    [manifest] = (tmp_path / "runs" / "finetune").glob("*/manifest.json")
    audit = json.loads(manifest.read_text())["metrics"]["data_audit"]
    assert audit["images"] == 28 and audit["leaked_val_images"] == 1
    # the leaked photo is its training original in the features too: the look-alike standing out
    # most (with 18 training photos the runners-up are few, so a same-class pair may follow it)
    first = audit["lookalikes"][0]
    assert (first["val"], first["train"]) == ("val/daisy/leaked.jpg", DAISY)
    assert first["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert all(p["margin"] < first["margin"] for p in audit["lookalikes"][1:])
    # the same features' mislabel check, and the images per class and split, are recorded beside
    assert {"method", "thresholds", "count", "suspects"} <= set(audit["mislabels"])
    assert sum(audit["class_counts"]["val"].values()) == 10 and audit["excluded"] == []


def test_report_section_and_warning_from_the_finetune_record(root):
    from pipeline.report.data_audit import audit_lines, audit_notes
    shutil.copy(root / DAISY, root / "val/daisy/leaked.jpg")
    splits, _ = _load(root, allow_leakage=True)
    record = {**splits.audit, "lookalikes": [{"val": "val/daisy/leaked.jpg", "train": DAISY,
                                              "similarity": 1.0, "margin": 0.8123}]}
    audit, warned = audit_notes({"data_audit": record})
    assert warned == ["1 val image(s) have an exact or near copy in train (data audit): every val "
                      "accuracy here counts them; delete the val copies, or gate with "
                      "check.max_leaked_images"]
    assert audit_lines(audit) == [
        "## Data audit", "",
        "28 images; 1 exact copies across train/val, 0 under two labels, 0 repeated within a split, "
        "0 near copies (perceptual hash within 4 of 64 bits), 1 look-alikes in the teacher's frozen "
        "features.", "",
        f"- leak: `{DAISY}` = `val/daisy/leaked.jpg`",
        f"- look-alike: `val/daisy/leaked.jpg` ~ `{DAISY}` (cosine 1.00, margin 0.81)", ""]
    assert audit_notes({}) == (None, []) and audit_lines(None) == []
