"""Nothing served on trust: damaged store entries and caches are found, named and rebuilt; store
path problems end as one line with exit 4; random damage never yields a "cached" lie."""
import errno
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration import hash_record
from calibration.cache import load_or_build
from exporters.tensorrt_export import materialize_engine, trusted_timing_cache
from pipeline import cli, runner
from pipeline.artifact import Artifact, Format
from pipeline.config_load import load_config
from pipeline.hashing import sha256_tree
from pipeline.stages.base import Result, Stage
from pipeline.store import Store, StoreUnusable
from pipeline.train.teacher_cache import TeacherLogitCache
from pipeline.verify import verify_store
from runtimes.errors import EdgeshipError
from tests.conftest import TINY_FINETUNE

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


def _entry(cfg, stage: str) -> Path:
    [d] = (Path(cfg.run.store) / stage).iterdir()
    return d


def _edit_manifest(path: Path) -> None:
    d = json.loads(path.read_text())
    d["metrics"]["acc"] = 0.99             # valid JSON, plausible value, not what the stage wrote
    path.write_text(json.dumps(d, indent=2))


def _drop_key(path: Path) -> None:
    d = json.loads(path.read_text())
    del d["outputs"]
    path.write_text(json.dumps(d))


@dataclass
class EntryCase:
    id: str
    stage: str
    damage: Callable[[Path], None]      # given the entry folder
    file: str                           # the file the message names, relative to the entry
    reason: str


ENTRY_CASES = [
    EntryCase("byte-flip-mtime-kept", "finetune", lambda d: flip_byte(d / "model" / "weights.bin"),
              "model/weights.bin", "sha256 differs from the manifest (damaged)"),
    EntryCase("byte-flip-file-artifact", "distill", lambda d: flip_byte(d / "out.txt", 0.0),
              "out.txt", "sha256 differs from the manifest (damaged)"),
    EntryCase("truncated", "finetune", lambda d: (d / "model" / "weights.bin").write_bytes(b"x"),
              "model/weights.bin", "size 1 bytes differs from the manifest's 2048 (damaged)"),
    EntryCase("deleted-artifact", "finetune", lambda d: (d / "model" / "model.json").unlink(),
              "model/model.json", "missing (deleted from the store)"),
    EntryCase("deleted-file-artifact", "prune", lambda d: (d / "out.txt").unlink(),
              "out.txt", "missing (deleted from the store)"),
    EntryCase("file-added", "finetune", lambda d: (d / "model" / "extra.bin").write_bytes(b"1"),
              "model/extra.bin", "not in the manifest (a file was added to the entry)"),
    EntryCase("manifest-empty", "distill", lambda d: (d / "manifest.json").write_text(""),
              "manifest.json", "empty (damaged)"),
    EntryCase("manifest-invalid-json", "distill", lambda d: (d / "manifest.json").write_text('{"stage": '),
              "manifest.json", "not valid JSON (Expecting value at line 1) (damaged)"),
    EntryCase("manifest-not-object", "finetune", lambda d: (d / "manifest.json").write_text("[1, 2]"),
              "manifest.json", "holds a JSON list, not an object (damaged)"),
    EntryCase("manifest-missing-key", "distill", lambda d: _drop_key(d / "manifest.json"),
              "manifest.json", "missing key(s) 'outputs' (damaged)"),
    EntryCase("manifest-edited", "prune", lambda d: _edit_manifest(d / "manifest.json"),
              "manifest.json", "its content differs from its checksum (damaged)"),
    EntryCase("manifest-deleted", "distill", lambda d: (d / "manifest.json").unlink(),
              "manifest.json", "missing (the entry folder has no manifest)"),
]


@pytest.mark.parametrize("case", ENTRY_CASES, ids=lambda c: c.id)
def test_damaged_entry_is_named_rerun_and_never_cached(cfg, case, caplog, capsys, restore_logging):
    entry = _entry(cfg, case.stage)
    case.damage(entry)
    named = f"{entry / case.file}: {case.reason}"

    status = {o.stage: o for o in runner.status(cfg, STAGES)}
    assert status[case.stage].status == "damaged" and named in status[case.stage].damage

    assert cli.main(["verify", "--store", cfg.run.store]) == 4
    out, err = capsys.readouterr()
    assert named in out and "1 damaged" in out and err.count("\n") == 1 and named in err

    with caplog.at_level(logging.WARNING, logger="pipeline.runner"):
        outcomes = runner.run(cfg, stages=STAGES, log=lambda *_: None)
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.runner"] == \
        [f"{named}; re-running {case.stage}"]
    by = {o.stage: o.status for o in outcomes}
    assert by[case.stage] == "ran" and CALLS == [case.stage]    # rebuilt the same: later keys hold
    assert verify_store(cfg.run.store).damaged == []
    assert [o.status for o in runner.run(cfg, stages=STAGES, log=lambda *_: None)] == ["cached"] * 3


def test_forced_downstream_stage_never_reads_a_damaged_input(cfg):
    flip_byte(_entry(cfg, "finetune") / "model" / "weights.bin")
    out = runner.run(cfg, stages=STAGES, force=frozenset({"distill"}), log=lambda *_: None)
    assert [o.status for o in out] == ["ran", "ran", "cached"] and CALLS == ["finetune", "distill"]


@pytest.mark.parametrize("content", ["", "{", "[]", "null"])
def test_forced_rerun_over_an_unreadable_manifest_replaces_it(cfg, content):
    (_entry(cfg, "distill") / "manifest.json").write_text(content)
    out = runner.run(cfg, stages=STAGES, force=frozenset({"distill"}), log=lambda *_: None)
    assert [o.status for o in out] == ["cached", "ran", "cached"] and CALLS == ["distill"]
    assert verify_store(cfg.run.store).damaged == []


def test_input_changed_after_its_check_stops_the_stage(cfg, monkeypatch):
    """A file damaged between the cache check and its use (another writer) stops with one line."""
    flip_byte(_entry(cfg, "distill") / "out.txt")
    real = Store.lookup

    def lookup_then_damage(self, stage, key):
        found = real(self, stage, key)
        if stage == "finetune":
            flip_byte(_entry(cfg, "finetune") / "out.txt")
        return found
    monkeypatch.setattr(Store, "lookup", lookup_then_damage)
    with pytest.raises(EdgeshipError) as err:
        runner.run(cfg, stages=STAGES, log=lambda *_: None)
    assert err.value.exit_code == 4 and "\n" not in str(err.value) and CALLS == []
    assert "out.txt: sha256 differs from the manifest (damaged)" in str(err.value)
    assert "distill was not started" in str(err.value)


def test_old_manifests_without_size_or_checksum_still_serve(cfg):
    for stage in ("finetune", "distill", "prune"):
        path = _entry(cfg, stage) / "manifest.json"
        d = json.loads(path.read_text())
        d.pop("checksum")
        for art in d["outputs"].values():
            art.pop("size"), art.pop("files", None)
        path.write_text(json.dumps(d))
    assert [o.status for o in runner.run(cfg, stages=STAGES, log=lambda *_: None)] == ["cached"] * 3
    flip_byte(_entry(cfg, "finetune") / "model" / "weights.bin")        # still caught, by sha256
    assert [o.status for o in runner.run(cfg, stages=STAGES, log=lambda *_: None)][0] == "ran"


# ------------------------------------------------------------------ caches beside the entries
def _teacher(tmp: Path, computed: list) -> np.ndarray:
    from calibration.preprocess import Preprocessing
    pre = Preprocessing(input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, labels=("a", "b"))
    cache = TeacherLogitCache(tmp, log=lambda m: None)

    def compute():
        computed.append(1)
        return np.arange(12, dtype=np.float32).reshape(6, 2)
    return cache.get_or_compute("sha", "data", pre, compute, expected_rows=6)


def _calibration(tmp: Path, computed: list) -> np.ndarray:
    def build():
        computed.append(1)
        return np.ones((2, 3, 4, 4), np.float32)
    return load_or_build(tmp / "calibration", "ab" * 32, build)[0]


def _engine(tmp: Path, computed: list) -> bytes:
    def build(path):
        computed.append(1)
        path.write_bytes(b"serialized-engine" * 10)
    materialize_engine(tmp / "model.engine", tmp / "engines", "k" * 64, build, info={"gpu": "Orin"})
    return (tmp / "model.engine").read_bytes()


def _timing(tmp: Path, computed: list) -> bytes:
    path = tmp / "tensorrt" / "timing.cache"
    if not path.is_file():           # what a build leaves: the serialized cache, recorded
        computed.append(1)
        path.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "t.tmp").write_bytes(b"timings" * 10)
        hash_record.publish(tmp / "t.tmp", path)
    return trusted_timing_cache(path)


CACHE_CASES = [  # id, use the cache (counting builds), its file, the logger that warns, the warning
    ("teacher-logits", _teacher, "cache/teacher-logits/*.npy", "pipeline.train.teacher_cache", "recomputing"),
    ("calibration-tensors", _calibration, "calibration/*.npy", "calibration.cache", "rebuilding it"),
    ("tensorrt-engine", _engine, "engines/*.engine", "runtimes.tensorrt_build", "rebuilding the engine"),
    ("tensorrt-timing-cache", _timing, "tensorrt/timing.cache", "runtimes.tensorrt_build", "starting a new one"),
]


@pytest.mark.parametrize("damage", ["byte-flip", "record-flip", "record-garbled"])
@pytest.mark.parametrize("case", CACHE_CASES, ids=lambda c: c[0])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, case, damage, caplog):
    _, use, pattern, logger_name, words = case
    built: list = []
    first = use(tmp_path, built)
    [path] = tmp_path.glob(pattern)
    assert hash_record.problem(path) is None and len(built) == 1
    assert np.array_equal(use(tmp_path, built), first) and len(built) == 1        # a verified hit
    if damage == "record-garbled":
        hash_record.record_path(path).write_text("{not json")
    else:       # a flip in the record lands in its hex digest
        flip_byte(path if damage == "byte-flip" else hash_record.record_path(path), 0.3)
    with caplog.at_level(logging.WARNING, logger=logger_name):
        again = use(tmp_path, built)
    if case[0] == "tensorrt-timing-cache":             # a damaged timing cache: start afresh
        assert again == b"" and not path.exists()
    else:
        assert len(built) == 2 and np.array_equal(again, first) and hash_record.problem(path) is None
    reason = f"its hash record {path.name}.sha256 is unreadable (damaged)" if damage == "record-garbled" \
        else "sha256 differs from its record (damaged)"
    assert [r.getMessage() for r in caplog.records if r.name == logger_name] == \
        [f"{caplog.records[-1].getMessage().split(': ')[0]}: {reason}; {words}"]
    assert str(path) in caplog.records[-1].getMessage()


def test_verify_reports_damaged_cache_files(cfg, capsys, restore_logging):
    folder = Path(cfg.run.store) / "cache" / "calibration"
    load_or_build(folder, "cd" * 32, lambda: np.zeros((1, 3, 2, 2), np.float32))
    [npy] = folder.glob("*.npy")
    assert cli.main(["verify", "--store", cfg.run.store]) == 0
    flip_byte(npy)
    assert cli.main(["verify", "--store", cfg.run.store]) == 4
    out = capsys.readouterr().out
    assert f"{npy}: sha256 differs from its record (damaged)" in out
    assert "3 entries and 1 cache files checked, 1 damaged" in out


# ------------------------------------------------------------------ store path problems
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


# ------------------------------------------------------------------ random damage, real stages
@pytest.fixture(scope="module")
def prepared_store(tmp_path_factory):
    """finetune + distill at tiny settings, run once; each example damages a copy."""
    root = tmp_path_factory.mktemp("prepared") / "runs"
    cfg = _real_cfg(root)
    assert [o.status for o in runner.run(cfg, target="distill", log=lambda *_: None)] == ["ran", "ran"]
    assert list((root / "cache" / "teacher-logits").glob("*.npy.sha256"))   # the cache is exercised
    return root


def _real_cfg(root: Path):
    return load_config(None, [*TINY_FINETUNE, f"run.store={root}", "distill.student=efficientnet_lite0",
                              "distill.compare_alone=false", "distill.train.epochs=1",
                              "distill.train.warmup_epochs=0", "distill.train.augment.random_resized_crop=null"])


def _checked(stages):
    def wrap(run):
        def checked(ctx):
            inputs_match_manifests(ctx)
            return run(ctx)
        return checked
    return tuple(replace(s, run=wrap(s.run)) for s in stages)


def _meaningful(path: Path, before: bytes) -> bool:
    """Whether damage changed what the file says (a manifest re-spaced but equal says the same)."""
    if path.name != "manifest.json":
        return path.name != ".lock"
    try:
        return json.loads(path.read_bytes()) != json.loads(before)
    except ValueError:
        return True


@pytest.mark.slow
@settings(max_examples=4, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pick=st.floats(0, 1, exclude_max=True), at=st.floats(0, 1), mask=st.integers(1, 255))
def test_random_damage_is_rebuilt_or_refused_never_cached(prepared_store, pick, at, mask):
    from pipeline.stages import STAGES as REAL
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        shutil.copytree(prepared_store, root)
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 0)
        target = files[int(pick * len(files))]
        before = target.read_bytes()
        flip_byte(target, at, mask)
        rel = target.relative_to(root).parts
        try:
            outcomes = runner.run(_real_cfg(root), target="distill", log=lambda *_: None,
                                  stages=_checked(REAL))
        except EdgeshipError as err:          # refusing is allowed, in one line with its code
            assert "\n" not in str(err) and err.exit_code in (4, 6)
            return
        status = {o.stage: o.status for o in outcomes}
        if rel[0] in status and _meaningful(target, before):
            assert status[rel[0]] == "ran", f"{target} damaged, yet {rel[0]} was {status[rel[0]]}"
        left = verify_store(root).damaged
        for m in (Store(root).get(s, o.key) for s, o in zip(status, outcomes)):
            assert m is not None and all(sha256_tree(m.entry_dir / a.path) == a.sha256
                                         for a in m.outputs.values())
        if rel[0] == "cache" and status["distill"] == "cached":    # no stage read it: still flagged
            data = target if not hash_record.is_record(target) else target.with_suffix("")
            assert [d.path for d in left] == [data]
        else:
            assert left == []
