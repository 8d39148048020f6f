"""The cache rules of the runner: hits, downstream invalidation, --force, lineage, the lock."""
import json
import subprocess
import sys

import pytest

from pipeline import runner
from pipeline.artifact import Artifact, Format
from pipeline.config_load import load_config
from pipeline.stages.base import Result, Stage
from pipeline.store import Store, StoreLocked

CALLS: list[str] = []


def _make(name, deps, param):
    """A small stage that writes a file from its parameter and its inputs' content."""
    def run(ctx):
        CALLS.append(name)
        text = f"{name}:{param(ctx.cfg)}:" + ",".join(
            ctx.input(d).path_of("out").read_text() for d in deps)
        path = ctx.out_dir / "out.txt"
        path.write_text(text)
        return Result({"out": Artifact.of(ctx.out_dir, path, Format.data)}, {"len": len(text)})
    return Stage(name, 1, tuple(deps), lambda cfg: {"p": param(cfg)}, run)


STAGES = (
    _make("finetune", [], lambda c: c.finetune.train.epochs),
    _make("distill", ["finetune"], lambda c: c.distill.temperature),
    _make("prune", ["distill"], lambda c: c.prune.ratio),
)


@pytest.fixture
def cfg(tmp_path):
    CALLS.clear()
    return load_config(None, [f"run.store={tmp_path / 'runs'}"])


def test_second_run_is_all_cache_hits(cfg):
    first = runner.run(cfg, stages=STAGES, log=lambda *_: None)
    assert [o.status for o in first] == ["ran"] * 3 and CALLS == ["finetune", "distill", "prune"]
    second = runner.run(cfg, stages=STAGES, log=lambda *_: None)
    assert [o.status for o in second] == ["cached"] * 3 and len(CALLS) == 3
    assert [o.key for o in first] == [o.key for o in second]


def test_changing_a_param_reruns_that_stage_and_later_only(cfg):
    runner.run(cfg, stages=STAGES, log=lambda *_: None)
    CALLS.clear()
    cfg.distill.temperature = 7.0
    out = runner.run(cfg, stages=STAGES, log=lambda *_: None)
    assert [o.status for o in out] == ["cached", "ran", "ran"] and CALLS == ["distill", "prune"]


def test_force_reruns_one_stage_and_downstream_stays_cached_when_content_equal(cfg):
    runner.run(cfg, stages=STAGES, log=lambda *_: None)
    CALLS.clear()
    out = runner.run(cfg, stages=STAGES, force=frozenset({"distill"}), log=lambda *_: None)
    # the re-run produced identical content, so prune's key (content-based) is unchanged
    assert [o.status for o in out] == ["cached", "ran", "cached"] and CALLS == ["distill"]


def test_the_same_bytes_with_other_metadata_rerun_their_readers(cfg):
    # An INT8 file marked not deployable has the bytes of the same file within its budget.
    def distill(ctx):
        CALLS.append("distill")
        path = ctx.out_dir / "out.txt"
        path.write_text("the same bytes")
        note = {"note": f"temperature {ctx.cfg.distill.temperature}"}
        return Result({"out": Artifact.of(ctx.out_dir, path, Format.data, note)}, {})
    stages = (STAGES[0], Stage("distill", 1, ("finetune",), lambda c: {"p": c.distill.temperature}, distill),
              STAGES[2])
    runner.run(cfg, stages=stages, log=lambda *_: None)
    CALLS.clear()
    cfg.distill.temperature = 7.0
    out = runner.run(cfg, stages=stages, log=lambda *_: None)
    assert [o.status for o in out] == ["cached", "ran", "ran"] and CALLS == ["distill", "prune"]


def test_target_runs_only_what_it_needs(cfg):
    out = runner.run(cfg, target="distill", stages=STAGES, log=lambda *_: None)
    assert [o.stage for o in out] == ["finetune", "distill"]


def test_manifest_records_lineage_and_hashes(cfg):
    out = runner.run(cfg, stages=STAGES, log=lambda *_: None)
    store = Store(cfg.run.store)
    prune = store.get("prune", out[2].key)
    distill = store.get("distill", out[1].key)
    assert prune.inputs == {"distill": {"key": distill.key,
                                        "outputs": {"out": distill.outputs["out"].sha256}}}
    raw = json.loads((prune.entry_dir / "manifest.json").read_text())
    assert raw["params"] == {"p": 0.5} and raw["metrics"]["len"] > 0 and raw["timings"]["seconds"] >= 0


def test_status_reports_cached_stale_and_not_run(cfg):
    assert [o.status for o in runner.status(cfg, STAGES)][:3] == ["not run", "waiting", "waiting"]
    runner.run(cfg, stages=STAGES, log=lambda *_: None)
    assert [o.status for o in runner.status(cfg, STAGES)][:3] == ["cached"] * 3
    cfg.prune.ratio = 0.3
    assert [o.status for o in runner.status(cfg, STAGES)][:3] == ["cached", "cached", "stale"]


def test_failed_stage_commits_nothing(cfg):
    def boom(ctx):
        (ctx.out_dir / "half.txt").write_text("half")
        raise RuntimeError("boom")
    broken = (STAGES[0], Stage("distill", 1, ("finetune",), lambda c: {}, boom))
    with pytest.raises(RuntimeError):
        runner.run(cfg, stages=broken, log=lambda *_: None)
    root = Store(cfg.run.store).root / "distill"
    assert not list(root.glob("*/manifest.json")) and not list(root.glob(".staging-*"))


def test_lock_refuses_a_second_writer_naming_the_holder(cfg):
    with Store(cfg.run.store):
        with pytest.raises(StoreLocked, match=r"is in use by pid \d+ on"):
            Store(cfg.run.store).__enter__()
        proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "finetune",
                               "--set", f"run.store={cfg.run.store}"], capture_output=True, text=True)
        assert proc.returncode == 4 and "is in use by pid" in proc.stderr
        assert "wait for that run to finish" in proc.stderr
    with Store(cfg.run.store):  # released on exit
        pass


def test_sweeps_staging_left_by_killed_run(cfg):
    store = Store(cfg.run.store)
    leftover = store.root / "finetune" / ".staging-abc-999"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_text("half")
    runner.run(cfg, stages=STAGES, log=lambda *_: None)
    assert not leftover.exists()


def test_publish_runs_on_cache_hits_too(cfg):
    published = []
    stage = Stage("finetune", 1, (), lambda c: {}, STAGES[0].run,
                  publish=lambda manifest, c: published.append(manifest.key))
    first = runner.run(cfg, stages=(stage,), log=lambda *_: None)
    second = runner.run(cfg, stages=(stage,), log=lambda *_: None)
    assert [o.status for o in first + second] == ["ran", "cached"]
    assert published == [first[0].key, first[0].key]
