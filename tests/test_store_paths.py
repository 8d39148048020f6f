"""A store path that is a file, is read-only or runs out of space: one line, exit 4, nothing
committed."""
import errno
import os
import subprocess
from pathlib import Path

import pytest

from pipeline import cli, runner
from pipeline.config_load import load_config
from pipeline.stages.base import Stage
from pipeline.store import StoreUnusable
from store_damage import STAGES


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot write: chmod, or (as root, which ignores modes) a read-only mount."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    mounted = False
    try:
        (d / "probe").write_text("x")
    except OSError:
        pass
    else:
        (d / "probe").unlink()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("cannot make a folder unwritable here (root ignores modes and mount failed)")
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], check=True)
    d.chmod(0o755)


def _no_space_stage(exc: Exception) -> Stage:
    def run(ctx):
        (ctx.out_dir / "model.safetensors").write_bytes(b"half a model")
        raise exc
    return Stage("finetune", 1, (), lambda c: {}, run)


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "model.safetensors")
# what safetensors raises on a full disk: no OSError, only the text
WRAPPED = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

PATH_CASES = [  # id, store path (from tmp_path and the unwritable folder), stages or None for the CLI, message
    ("store-is-a-file", lambda t, ro: _file(t), None, "is not a folder: {store} is a file"),
    ("store-under-a-file", lambda t, ro: _file(t) / "runs", None, "is not a folder: {parent} is a file"),
    ("store-read-only", lambda t, ro: ro(), None, "artifact store '{store}' is not writable"),
    ("no-space-while-writing", lambda t, ro: t / "runs", (_no_space_stage(ENOSPC),),
     "no space left on the disk of artifact store '{store}' while finetune wrote its files"),
    ("no-space-wrapped-by-a-library", lambda t, ro: t / "runs", (_no_space_stage(WRAPPED),),
     "no space left on the disk of artifact store '{store}'"),
]


def _file(tmp: Path) -> Path:
    (tmp / "afile").write_text("not a store")
    return tmp / "afile"


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: c[0])
def test_store_path_problems_are_one_line_with_exit_4(tmp_path, case, request, capsys, restore_logging):
    _, where, stages, message = case
    store = where(tmp_path, lambda: request.getfixturevalue("unwritable"))
    text = message.format(store=store, parent=store.parent)
    if stages is None:
        for command in (["run", "finetune"], ["status"], ["verify"]):
            if command[0] != "run" and "read-only" in case[0]:
                assert cli.main([*command, "--set", f"run.store={store}"]) == 0   # reading is fine
                continue
            capsys.readouterr()
            assert cli.main([*command, "--set", f"run.store={store}"]) == 4
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and text in err and "Traceback" not in err
        return
    cfg = load_config(None, [f"run.store={store}"])
    with pytest.raises(StoreUnusable) as err:
        runner.run(cfg, stages=stages, log=lambda *_: None)
    assert err.value.exit_code == 4 and text in str(err.value) and "\n" not in str(err.value)
    assert "nothing was committed" in str(err.value)
    assert not list((store / "finetune").iterdir())           # staging removed, no entry


def test_no_space_while_committing_leaves_nothing(tmp_path, monkeypatch):
    cfg = load_config(None, [f"run.store={tmp_path / 'runs'}"])
    real = Path.write_text

    def full(self, *a, **k):
        if self.name == "manifest.json.tmp":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(StoreUnusable, match=r"no space left on the disk of artifact store .* while committing"):
        runner.run(cfg, stages=STAGES[:1], log=lambda *_: None)
    assert not list((tmp_path / "runs" / "finetune").iterdir())


def test_read_only_store_can_be_verified(tmp_path, unwritable, capsys, restore_logging):
    assert cli.main(["verify", "--store", str(unwritable)]) == 0
    assert "0 entries and 0 cache files checked, 0 damaged" in capsys.readouterr().out


