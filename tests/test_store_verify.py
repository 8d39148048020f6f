"""Nothing served on trust: damaged store entries are found, named and re-run, never reported
"cached"; random damage to a real store is rebuilt or refused."""
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration import hash_record
from pipeline import cli, runner
from pipeline.config_load import load_config
from pipeline.hashing import sha256_tree
from pipeline.store import Store
from pipeline.verify import verify_store
from runtimes.errors import EdgeshipError
from tests.conftest import TINY_FINETUNE
from store_damage import (CALLS, STAGES, cfg, entry_dir, flip_byte,  # noqa: F401 (cfg: a fixture)
                          inputs_match_manifests)


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
    entry = entry_dir(cfg, case.stage)
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
    flip_byte(entry_dir(cfg, "finetune") / "model" / "weights.bin")
    out = runner.run(cfg, stages=STAGES, force=frozenset({"distill"}), log=lambda *_: None)
    assert [o.status for o in out] == ["ran", "ran", "cached"] and CALLS == ["finetune", "distill"]


@pytest.mark.parametrize("content", ["", "{", "[]", "null"])
def test_forced_rerun_over_an_unreadable_manifest_replaces_it(cfg, content):
    (entry_dir(cfg, "distill") / "manifest.json").write_text(content)
    out = runner.run(cfg, stages=STAGES, force=frozenset({"distill"}), log=lambda *_: None)
    assert [o.status for o in out] == ["cached", "ran", "cached"] and CALLS == ["distill"]
    assert verify_store(cfg.run.store).damaged == []


def test_input_changed_after_its_check_stops_the_stage(cfg, monkeypatch):
    """A file damaged between the cache check and its use (another writer) stops with one line."""
    flip_byte(entry_dir(cfg, "distill") / "out.txt")
    real = Store.lookup

    def lookup_then_damage(self, stage, key):
        found = real(self, stage, key)
        if stage == "finetune":
            flip_byte(entry_dir(cfg, "finetune") / "out.txt")
        return found
    monkeypatch.setattr(Store, "lookup", lookup_then_damage)
    with pytest.raises(EdgeshipError) as err:
        runner.run(cfg, stages=STAGES, log=lambda *_: None)
    assert err.value.exit_code == 4 and "\n" not in str(err.value) and CALLS == []
    assert "out.txt: sha256 differs from the manifest (damaged)" in str(err.value)
    assert "distill was not started" in str(err.value)


def test_old_manifests_without_size_or_checksum_still_serve(cfg):
    for stage in ("finetune", "distill", "prune"):
        path = entry_dir(cfg, stage) / "manifest.json"
        d = json.loads(path.read_text())
        d.pop("checksum")
        for art in d["outputs"].values():
            art.pop("size"), art.pop("files", None)
        path.write_text(json.dumps(d))
    assert [o.status for o in runner.run(cfg, stages=STAGES, log=lambda *_: None)] == ["cached"] * 3
    flip_byte(entry_dir(cfg, "finetune") / "model" / "weights.bin")        # still caught, by sha256
    assert [o.status for o in runner.run(cfg, stages=STAGES, log=lambda *_: None)][0] == "ran"




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
