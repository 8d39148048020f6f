"""The ImageFolder scan cannot be fooled: links, loops, duplicates, images that fail to decode
(in the scan or later), and the scan cache (warm, changed, tampered, moved tree)."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataSpec
from pipeline.data import DataError, DataWarning, load_splits
from pipeline.data import decode, imagefolder

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "data" / "flowers-mini"
FIX = "(replace the link with a copy, or point data.root at the real folder)"


# ---------------------------------------------------------------- images and trees
def _noise(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _write(path: Path, seed: int, size=(24, 18)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise(*size, seed).save(path)
    return path


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def _broken_idat(how: str) -> bytes:
    """A PNG whose header and chunk CRCs are valid (verify() passes) but whose compressed pixel
    data is cut short or scrambled."""
    buf = io.BytesIO()
    _noise(60, 60, 3).save(buf, "PNG")
    chunks = []
    for kind, data in _png_chunks(buf.getvalue()):
        if kind == b"IDAT":
            data = data[:len(data) // 2] if how == "cut" else data[:2] + bytes(b ^ 0xFF for b in data[2:40]) + data[40:]
        chunks.append((kind, data))
    out = b"\x89PNG\r\n\x1a\n" + b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
                                          for k, d in chunks)
    with Image.open(io.BytesIO(out)) as im:
        im.verify()                    # the old scan's only check: it passes
    return out


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    _noise(80, 60, 11).save(buf, "JPEG", quality=95)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _tree(root: Path) -> Path:
    """cat/dog with two train and one val image each, and a pool folder outside the splits."""
    for i, rel in enumerate(["train/cat/1.png", "train/cat/2.jpg", "train/dog/1.png", "train/dog/2.jpg",
                             "val/cat/1.png", "val/dog/1.jpg", "pool/x.jpg", "pool/cats/p.png"]):
        _write(root / rel, i)
    return root


def _spec(root: Path, **kw) -> DataSpec:
    return DataSpec(kind="imagefolder", root=str(root), **kw)


def _error(root: Path, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_splits(_spec(root, **kw))
    assert err.value.exit_code == 7
    return str(err.value)


@pytest.fixture
def root(tmp_path):
    imagefolder._checked.clear()
    return _tree(tmp_path.resolve() / "data")


# ---------------------------------------------------------------- links: refused
def _link(root: Path, rel: str, target: str) -> None:
    os.symlink(target, root / rel)


REFUSED = [
    ("loop to its own folder", lambda r, t: _link(r, "train/cat/again", "."),
     "link '{r}/train/cat/again' -> '{r}/train/cat' is a loop: it points to its own folder or a folder "
     "above it, which would repeat every image below it under other names and labels " + FIX),
    ("loop to its parent", lambda r, t: _link(r, "train/cat/up", ".."),
     "link '{r}/train/cat/up' -> '{r}/train' is a loop: it points to its own folder or a folder "
     "above it, which would repeat every image below it under other names and labels " + FIX),
    ("loop to the root, deeper", lambda r, t: (os.mkdir(r / "train/dog/deep"), _link(r, "train/dog/deep/all", str(r))),
     "link '{r}/train/dog/deep/all' -> '{r}' is a loop: it points to its own folder or a folder "
     "above it, which would repeat every image below it under other names and labels " + FIX),
    ("link to itself", lambda r, t: _link(r, "train/cat/self", "self"),
     "link '{r}/train/cat/self' -> 'self' is a loop: it leads back to itself " + FIX),
    ("folder link out of the root", lambda r, t: (_write(t / "outside/o.jpg", 9), _link(r, "train/cat/more", str(t / "outside"))),
     "link '{r}/train/cat/more' -> '{t}/outside' points outside data.root '{r}'; the scan follows no "
     "link out of it " + FIX),
    ("image link out of the root", lambda r, t: (_write(t / "far.jpg", 9), _link(r, "train/dog/far.jpg", "../../../far.jpg")),
     "link '{r}/train/dog/far.jpg' -> '{t}/far.jpg' points outside data.root '{r}'; the scan follows no "
     "link out of it " + FIX),
    ("split folder linked out of the root", lambda r, t: (shutil.move(r / "val", t / "val"), _link(r, "val", str(t / "val"))),
     "link '{r}/val' -> '{t}/val' points outside data.root '{r}'; the scan follows no link out of it " + FIX),
    ("val class linked to the train class", lambda r, t: (shutil.rmtree(r / "val/cat"), _link(r, "val/cat", "../train/cat")),
     "folder '{r}/train/cat' is reached twice under data.root '{r}': as '{r}/train/cat' and as "
     "'{r}/val/cat' (link '{r}/val/cat' -> '{r}/train/cat'); its images would count twice, possibly "
     "under two labels or in both splits " + FIX),
    ("a class's sub-folder linked from another class", lambda r, t: (
        _write(r / "train/dog/deep/d.png", 8), _link(r, "train/cat/sub", "../dog/deep")),
     "folder '{r}/train/dog/deep' is reached twice under data.root '{r}': as '{r}/train/cat/sub' and as "
     "'{r}/train/dog/deep' (link '{r}/train/cat/sub' -> '{r}/train/dog/deep'); its images would count "
     "twice, possibly under two labels or in both splits " + FIX),
    ("one image through two links", lambda r, t: (_link(r, "train/cat/a.jpg", "../../pool/x.jpg"),
                                                  _link(r, "train/dog/b.jpg", "../../pool/x.jpg")),
     "image '{r}/pool/x.jpg' is reached twice under data.root '{r}': as '{r}/train/cat/a.jpg' and as "
     "'{r}/train/dog/b.jpg' (link '{r}/train/dog/b.jpg' -> '{r}/pool/x.jpg'); it would count twice, "
     "possibly under two labels or in both splits " + FIX),
    ("an image and a link to it", lambda r, t: _link(r, "val/dog/same.png", "../../train/cat/1.png"),
     "image '{r}/train/cat/1.png' is reached twice under data.root '{r}': as '{r}/train/cat/1.png' and "
     "as '{r}/val/dog/same.png' (link '{r}/val/dog/same.png' -> '{r}/train/cat/1.png'); it would count "
     "twice, possibly under two labels or in both splits " + FIX),
    ("dangling image link", lambda r, t: _link(r, "train/cat/gone.jpg", "../../nothing.jpg"),
     "link '{r}/train/cat/gone.jpg' -> '../../nothing.jpg' points to nothing (its target does not "
     "exist); fix the link or remove it"),
]


@pytest.mark.parametrize("make, expected", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_links_refused(root, make, expected):
    make(root, root.parent)
    assert _error(root) == expected.format(r=root, t=root.parent)


def test_links_inside_the_root_reached_once_are_followed(root):
    (root / "notes.txt").write_text("not an image")
    _link(root, "train/cat/x.jpg", "../../pool/x.jpg")               # an image, once
    _link(root, "train/dog/cats", "../../pool/cats")                  # a folder, once
    _link(root, "train/dog/readme.txt", "/etc/hostname")              # not an image: never followed
    splits = load_splits(_spec(root))
    assert splits.train.ids == ["train/cat/1.png", "train/cat/2.jpg", "train/cat/x.jpg",
                                "train/dog/1.png", "train/dog/2.jpg", "train/dog/cats/p.png"]
    assert splits.train.targets == [0, 0, 0, 1, 1, 1]
    assert splits.train.image(2).size == (24, 18)


def test_unlabelled_folder_walked_by_the_same_rules(root):
    from pipeline.data.imagefolder import load_unlabelled_folder
    _link(root, "pool/cats/back", "..")
    with pytest.raises(DataError) as err:
        load_unlabelled_folder(str(root / "pool"))
    assert str(err.value) == (
        f"link '{root}/pool/cats/back' -> '{root}/pool' is a loop: it points to its own folder or a folder "
        f"above it, which would repeat every image below it under other names and labels (replace the "
        f"link with a copy, or point distill.unlabelled_root at the real folder)")
    (root / "pool/cats/back").unlink()
    assert load_unlabelled_folder(str(root / "pool")).ids == ["cats/p.png", "x.jpg"]


def test_cli_refuses_a_loop_with_exit_7(root, tmp_path):
    _link(root, "train/cat/up", "..")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "finetune", "-c", "configs/imagefolder.yaml",
         "--set", f"data.root={root}", "--set", f"run.store={tmp_path / 'runs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 7, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"edgeship: link '{root}/train/cat/up' -> '{root}/train' is a loop: it points to its own folder "
        f"or a folder above it, which would repeat every image below it under other names and labels {FIX}")
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- images that do not decode
CORRUPT = [
    ("png with cut IDAT data", "train/cat/idat.png", lambda: _broken_idat("cut"),
     "OSError: image file is truncated (0 bytes not processed)"),
    ("png with scrambled IDAT data", "train/dog/idat.png", lambda: _broken_idat("scramble"),
     "OSError: broken data stream when reading image file"),
    ("truncated jpeg", "val/cat/cut.jpg", _truncated_jpeg,
     "OSError: image file is truncated (256 bytes not processed)"),
]


@pytest.mark.parametrize("rel, make, error", [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_undecodable_image_refused_with_its_path(root, rel, make, error):
    (root / rel).write_bytes(make())
    assert _error(root) == (f"image '{root}/{rel}' cannot be read ({error}); replace or delete it, "
                            f"or set data.skip_corrupt: true to leave unreadable images out")


@pytest.mark.parametrize("rel, make, error", [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_undecodable_image_skipped_with_a_warning(root, rel, make, error):
    (root / rel).write_bytes(make())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_splits(_spec(root, skip_corrupt=True))
    ours = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert ours == [f"skipped 1 unreadable image(s) under {root} (data.skip_corrupt: true): {rel}"]
    assert splits.skipped == [rel] and rel not in splits.train.ids + splits.val.ids
    assert (len(splits.train), len(splits.val)) == (4, 2)


def test_cli_names_a_broken_png_with_exit_7(root, tmp_path):
    (root / "train/cat/idat.png").write_bytes(_broken_idat("cut"))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "finetune", "-c", "configs/imagefolder.yaml",
         "--set", f"data.root={root}", "--set", f"run.store={tmp_path / 'runs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 7, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"edgeship: image '{root}/train/cat/idat.png' cannot be read (OSError: image file is truncated "
        f"(0 bytes not processed)); replace or delete it, or set data.skip_corrupt: true to leave "
        f"unreadable images out")


# ---------------------------------------------------------------- images that change after the scan
def _replaced(root: Path):
    splits = load_splits(_spec(root))
    assert splits.train.ids[0] == "train/cat/1.png"
    (root / "train/cat/1.png").write_bytes(b"no longer an image" * 10)
    path = root / "train/cat/1.png"
    prefix = f"image '{path}' cannot be read (UnidentifiedImageError: cannot identify image file '{path}')"
    suffix = ("although the data scan decoded it, so it changed since; run again (the scan checks "
              "changed images, and data.skip_corrupt: true leaves unreadable ones out) or restore the file")
    return splits, f"{prefix} {suffix}"


def test_image_replaced_after_the_scan_is_named(root):
    splits, message = _replaced(root)
    with pytest.raises(decode.ImageReadError) as err:
        splits.train.image(0)
    assert str(err.value) == message and err.value.exit_code == 7
    assert _error(root).startswith(f"image '{root}/train/cat/1.png' cannot be read (")   # rescanned


def test_image_replaced_after_the_scan_in_training_and_scoring(root):
    import torch
    from calibration.preprocess import Preprocessing
    from pipeline.data.torch_dataset import TorchImageSet
    from pipeline.measure.scoring import ValImages
    splits, message = _replaced(root)
    pre = Preprocessing(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0)
    loader = torch.utils.data.DataLoader(TorchImageSet(splits.train, pre, cache=False), batch_size=2,
                                         num_workers=1, multiprocessing_context="fork")
    with pytest.raises(DataError) as err:          # raised in a worker process, one line here
        list(loader)
    assert str(err.value) == message
    with pytest.raises(DataError) as err:
        next(ValImages(splits.train).chunks(pre, 2))
    assert str(err.value) == message


# ---------------------------------------------------------------- the scan cache
@pytest.fixture
def decodes(monkeypatch):
    """Counts images decoded by the scan."""
    calls = []
    real = decode.check_image
    monkeypatch.setattr(decode, "check_image", lambda data: calls.append(1) or real(data))
    return calls


def _scan(root: Path, store: Path):
    imagefolder._checked.clear()        # as a new process would start
    return load_splits(_spec(root), store_root=store)


def test_warm_scan_decodes_nothing_and_a_changed_image_alone(root, tmp_path, decodes):
    store = tmp_path / "runs"
    cold = _scan(root, store)
    assert len(decodes) == 6
    [entry] = list((store / "cache" / "scan").glob("*.json"))
    warm = _scan(root, store)
    assert len(decodes) == 6 and warm.fingerprint == cold.fingerprint
    _write(root / "train/dog/2.jpg", 77)
    changed = _scan(root, store)
    assert len(decodes) == 7 and changed.fingerprint != cold.fingerprint
    assert len(list((store / "cache" / "scan").glob("*.json"))) == 2 and entry.is_file()


def test_tampered_scan_cache_is_rebuilt(root, tmp_path, decodes, caplog):
    store = tmp_path / "runs"
    cold = _scan(root, store)
    [entry] = list((store / "cache" / "scan").glob("*.json"))
    doc = json.loads(entry.read_text())
    doc["files"][0][3] = "0" * 64                    # a forged sha256 for one image
    entry.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="pipeline.data.scan_cache"):
        again = _scan(root, store)
    assert again.fingerprint == cold.fingerprint and len(decodes) == 12
    assert f"scan cache {entry} does not match its recorded hash" in caplog.text
    assert json.loads(entry.read_text())["files"][0][3] != "0" * 64


def test_moved_tree_keeps_scan_cache_and_stage_key(root, tmp_path, decodes):
    from pipeline.config_load import load_config
    from pipeline.stages.common import data_params
    store = tmp_path / "runs"
    cfg = load_config(REPO / "configs" / "imagefolder.yaml",
                      [f"data.root={root}", f"run.store={store}"])
    before = data_params(cfg)
    moved = root.rename(tmp_path / "elsewhere")
    imagefolder._checked.clear()
    after = data_params(load_config(REPO / "configs" / "imagefolder.yaml",
                                    [f"data.root={moved}", f"run.store={store}"]))
    assert after == before and "root" not in after["data"]
    assert len(decodes) == 6


def test_moved_tree_reuses_the_finetune_stage(tmp_path, cli, tiny_args):
    data = tmp_path / "photos"
    shutil.copytree(PHOTOS, data)
    base = cli("run", "finetune", *tiny_args, "--set", "data.kind=imagefolder")
    first = subprocess.run([*base, "--set", f"data.root={data}"], cwd=REPO, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "finetune   running" in first.stderr
    assert f"data: decoded 27 of 27 images under {data} in " in first.stderr
    (tmp_path / "moved").mkdir()
    moved = data.rename(tmp_path / "moved" / "photos")
    second = subprocess.run([*base, "--set", f"data.root={moved}"], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "finetune   cached" in second.stderr and "decoded" not in second.stderr
