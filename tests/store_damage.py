"""Shared by the store-damage tests: a byte flip that keeps size and mtime, and three fast
stages (finetune, distill, prune) that check what they read against its manifest."""
import json
import os
from pathlib import Path

import pytest

from pipeline import runner
from pipeline.artifact import Artifact, Format
from pipeline.config_load import load_config
from pipeline.hashing import sha256_tree
from pipeline.stages.base import Result, Stage

CALLS: list[str] = []


def flip_byte(path: Path, at: float = 0.5, mask: int = 0x5A) -> None:
    """XOR one byte of `path`, keeping its size and mtime (a change a stat-based check would miss)."""
    st_ = path.stat()
    with open(path, "r+b") as f:
        f.seek(int(at * (st_.st_size - 1)))
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ mask]))
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))


def inputs_match_manifests(ctx) -> None:
    """What a stage is about to read equals what its manifest recorded (hashed independently)."""
    for m in ctx.inputs.values():
        for art in m.outputs.values():
            assert sha256_tree(m.entry_dir / art.path) == art.sha256, f"{m.stage} input is damaged"


def _make(name, deps):
    """A fast stage writing a folder (finetune) or a file from its inputs' content."""
    def run(ctx):
        inputs_match_manifests(ctx)
        CALLS.append(name)
        text = f"{name}:" + ",".join(ctx.input(d).path_of("out").read_text()[:40] for d in deps)
        if not deps:
            folder = ctx.out_dir / "model"
            folder.mkdir()
            (folder / "weights.bin").write_bytes(bytes(range(256)) * 8)
            (folder / "model.json").write_text(json.dumps({"arch": name}))
            (ctx.out_dir / "out.txt").write_text(text)
            return Result({"model": Artifact.of(ctx.out_dir, folder, Format.torch),
                           "out": Artifact.of(ctx.out_dir, ctx.out_dir / "out.txt", Format.data)}, {"acc": 0.5})
        (ctx.out_dir / "out.txt").write_text(text)
        return Result({"out": Artifact.of(ctx.out_dir, ctx.out_dir / "out.txt", Format.data)}, {"acc": 0.5})
    return Stage(name, 1, tuple(deps), lambda cfg: {}, run)


STAGES = (_make("finetune", []), _make("distill", ["finetune"]), _make("prune", ["distill"]))


@pytest.fixture
def cfg(tmp_path):
    CALLS.clear()
    c = load_config(None, [f"run.store={tmp_path / 'runs'}"])
    runner.run(c, stages=STAGES, log=lambda *_: None)
    CALLS.clear()
    return c


def entry_dir(cfg, stage: str) -> Path:
    [d] = (Path(cfg.run.store) / stage).iterdir()
    return d

