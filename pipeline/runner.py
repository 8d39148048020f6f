"""Run the stages in order through the cache: a stage runs only when its key has no committed entry
whose manifest and outputs check out; a damaged entry is named in one log line and re-run."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config
from pipeline.hashing import sha256_json
from pipeline.stage_order import STAGE_NAMES
from pipeline.stages import STAGES
from pipeline.stages.base import Context, Stage
from pipeline.store import NO_SPACE, Manifest, Store, StoreDamaged, unusable
from runtimes.environment import machine_fingerprint, software_environment

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    stage: str
    status: str          # "cached" | "ran" | "stale" | "not run" | "waiting" | "damaged"
    key: str | None
    finished: float | None = None
    seconds: float | None = None
    damage: str | None = None    # for "damaged": the file and why


def _stage(name: str, stages: tuple[Stage, ...] = STAGES) -> Stage:
    for s in stages:
        if s.name == name:
            return s
    raise ValueError(f"unknown stage '{name}' (stages: {', '.join(STAGE_NAMES)})")


def plan(target: str | None, stages: tuple[Stage, ...] = STAGES) -> list[Stage]:
    """The stages needed to produce `target` (all when None), in pipeline order."""
    if target is None:
        return list(stages)
    needed, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(_stage(name, stages).deps)
    return [s for s in stages if s.name in needed]


def stage_key(stage: Stage, cfg: Config, inputs: dict[str, Manifest]) -> str:
    """Content key: stage name + version, its params, its inputs' hashes and metadata (+ environment).

    The metadata counts: the same INT8 bytes, once within the quantize budget and once marked
    not deployable, must not share a benchmark and report."""
    material = {
        "stage": stage.name, "version": stage.version, "params": stage.params(cfg),
        "inputs": {d: {k: [a.sha256, a.metadata] for k, a in sorted(m.outputs.items())}
                   for d, m in sorted(inputs.items())},
    }
    if stage.machine_dependent:
        material["environment"] = machine_fingerprint()
    return sha256_json(material)[:16]


def _execute(stage: Stage, cfg: Config, store: Store, key: str, inputs: dict[str, Manifest],
             main_process: bool) -> Manifest | None:
    _check_inputs(stage, inputs)
    staging = (store.staging_dir(stage.name, key) if main_process
               else Path(tempfile.mkdtemp(prefix=f"edgeship-{stage.name}-")))
    started = time.time()
    try:
        result = stage.run(Context(cfg=cfg, inputs=inputs, out_dir=staging, store_root=store.root))
    except BaseException as exc:
        full = _no_space(exc, staging) if isinstance(exc, Exception) else None
        shutil.rmtree(staging, ignore_errors=True)
        if full is not None:
            raise unusable(store.root, full, f"{stage.name} wrote its files") from exc
        raise
    if not main_process:
        shutil.rmtree(staging, ignore_errors=True)
        return None
    finished = time.time()
    manifest = Manifest(
        stage=stage.name, version=stage.version, key=key, params=stage.params(cfg),
        inputs={d: {"key": m.key, "outputs": {k: a.sha256 for k, a in m.outputs.items()}}
                for d, m in inputs.items()},
        outputs=result.outputs, metrics=result.metrics, environment=software_environment(),
        timings={"started": started, "finished": finished, "seconds": round(finished - started, 3)})
    return store.commit(staging, manifest)


def _check_inputs(stage: Stage, inputs: dict[str, Manifest]) -> None:
    """Every input artifact, hashed again right before the stage reads it: an entry checked (or
    written) earlier in this run may have been changed since by something else."""
    for manifest in inputs.values():
        damage = manifest.damage()
        if damage:
            raise StoreDamaged(damage, f"it changed after this run checked it, so {stage.name} was not "
                                       "started; make sure nothing else writes the store, then run again")


def _no_space(exc: BaseException, staging: Path) -> OSError | None:
    """The out-of-space error behind `exc`, or None. Libraries wrap it (safetensors says "os error
    28", torch only "file write failed"), so the disk's free space is asked as well."""
    texts, seen = [], 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc
        texts.append(str(exc))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    said = any(os.strerror(e) in t or f"os error {e}" in t for t in texts for e in NO_SPACE)
    try:
        empty = shutil.disk_usage(staging).free < (1 << 20)
    except OSError:
        empty = False
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if said or empty else None


def run(cfg: Config, target: str | None = None, force: frozenset[str] = frozenset(),
        log=None, stages: tuple[Stage, ...] = STAGES) -> list[Outcome]:
    """Run (or reuse) every stage up to `target`, reporting each through `log` (default: this
    module's logger at INFO). Under torchrun only rank 0 writes the store."""
    log = log or logger.info
    from pipeline.train.distributed import barrier, world
    w = world()
    store = Store(cfg.run.store)
    todo = plan(target, stages)
    for name in force:
        _stage(name, stages)
    outcomes: list[Outcome] = []
    with store if w.is_main else _NoLock():
        manifests: dict[str, Manifest] = {}
        for stage in todo:
            inputs = {d: manifests[d] for d in stage.deps}
            key = stage_key(stage, cfg, inputs)
            hit = None
            if stage.name not in force:
                hit, damage = store.lookup(stage.name, key)
                if damage:
                    logger.warning(f"{damage}; re-running {stage.name}")
            if hit:
                log(f"{stage.name:<10} cached   key {key}  ({_when(hit.timings.get('finished'))})")
                outcomes.append(Outcome(stage.name, "cached", key, hit.timings.get("finished")))
                manifests[stage.name] = hit
                if stage.publish and w.is_main:
                    stage.publish(hit, cfg)
                continue
            log(f"{stage.name:<10} running  key {key}")
            t0 = time.time()
            manifest = _execute(stage, cfg, store, key, inputs, w.is_main)
            barrier()
            if not w.is_main:
                manifest = store.get(stage.name, key)
            seconds = time.time() - t0
            log(f"{stage.name:<10} done     key {key}  in {seconds:.1f}s")
            outcomes.append(Outcome(stage.name, "ran", key, time.time(), seconds))
            manifests[stage.name] = manifest
            if stage.publish and w.is_main:
                stage.publish(manifest, cfg)
    return outcomes


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "?"


def status(cfg: Config, stages: tuple[Stage, ...] = STAGES) -> list[Outcome]:
    """For each stage: cached (its current key is committed and checks out), damaged (it does not:
    the file and why), stale (only other keys), or not run."""
    store = Store(cfg.run.store)
    store.check_root()
    manifests: dict[str, Manifest] = {}
    out = []
    for stage in stages:
        name = stage.name
        if any(d not in manifests for d in stage.deps):
            older = store.entries(name)
            out.append(Outcome(name, "stale" if older else "waiting", None,
                               older[0].timings.get("finished") if older else None))
            continue
        key = stage_key(stage, cfg, {d: manifests[d] for d in stage.deps})
        hit, damage = store.lookup(name, key)
        if damage:
            out.append(Outcome(name, "damaged", key, damage=str(damage)))
        elif hit:
            manifests[name] = hit
            out.append(Outcome(name, "cached", key, hit.timings.get("finished")))
        else:
            older = store.entries(name)
            out.append(Outcome(name, "stale" if older else "not run", key,
                               older[0].timings.get("finished") if older else None))
    return out


def print_status(outcomes: list[Outcome], stream=sys.stdout) -> None:
    for o in outcomes:
        when = _when(o.finished) if o.finished else "-"
        tail = f"  {o.damage}" if o.damage else ""
        print(f"{o.stage:<10} {o.status:<9} key {o.key or '-':<16}  last run {when}{tail}", file=stream)
