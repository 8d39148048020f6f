"""The benchmark itself: one row per artifact x runtime x device x batch size.

A measured row holds val top-1 in that runtime and device, top-1 agreement with the FP32 torch
model the artifact descends from and with the teacher, its latency from interleaved rounds
(pipeline.measure.rounds) with each round's p50/p90, size on disk, params and MACs, the runtime
settings, the worker process that ran it, and a sentence saying how it was measured. Every row is
loaded, scored and timed in its runtime's worker process (pipeline.measure.workers). A pair
that cannot run here is a row too, with status "unavailable" and the reason; one that failed
says "failed" and the error, and the others are still measured.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass

import numpy as np

from pipeline.config import Config
from pipeline.measure.accuracy_interval import paired_difference
from pipeline.measure.artifacts import TEACHER, Candidate, candidates
from pipeline.measure.scoring import ValImages, agreement, predict, top1
from pipeline.measure.targets import Target, device_family, is_reference, targets_for
from pipeline.measure.workers import RemoteModel, Workers
from pipeline.store import Manifest
from runtimes import formats

ACCURACY_CHUNK = 64   # images per call when scoring a model with a dynamic batch axis
LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "min_ms", "max_ms",
                  "throughput_ips", "iterations", "total_s", "peak_rss_mb", "peak_gpu_mb", "timer")


_logger = logging.getLogger(__name__)


def _log(msg: str) -> None:
    _logger.info("  benchmark: %s", msg)


def row_id(artifact: str, runtime: str, device: str, batch: int | None) -> str:
    """The key a row is known by in tables and comparisons: artifact@runtime/device/bN."""
    return f"{artifact}@{runtime}/{device}/b{batch if batch is not None else '-'}"


class TorchModels:
    """The FP32 torch models (teacher, student, pruned), loaded once: parameter and MAC counts,
    and their CPU predictions, the references every other row's agreement is measured against."""

    def __init__(self, cands: list[Candidate], val: ValImages, threads: int):
        self._cands = {c.name: c for c in cands if formats.get(c.format).rebuilt_in_memory}
        self._val, self._threads = val, threads
        self._models: dict = {}
        self._predictions: dict[str, np.ndarray] = {}
        self._counts: dict[str, tuple[int, int]] = {}

    def model(self, name: str):
        if name not in self._models:
            from pipeline.models.loading import load_model
            cand = self._cands[name]
            self._models[name] = load_model(cand.manifest, cand.output)[0]
        return self._models[name]

    def counts(self, name: str | None) -> tuple[int | None, int | None]:
        """(params, MACs per image) of a torch model; (None, None) when it is not an input."""
        if name not in self._cands:
            return None, None
        if name not in self._counts:
            from pipeline.models.cost import count_macs, count_params
            model = self.model(name)
            self._counts[name] = (count_params(model), count_macs(model, self._cands[name].preprocessing))
        return self._counts[name]

    def remember(self, name: str, predictions: np.ndarray) -> None:
        self._predictions[name] = predictions

    def predictions(self, name: str | None) -> np.ndarray | None:
        """Predicted classes of torch model `name` on the CPU (computed on first use)."""
        if name not in self._cands:
            return None
        if name not in self._predictions:
            from runtimes.execution import open_model
            loaded = open_model(self.model(name), self._cands[name].format, threads=self._threads)
            logits = predict(loaded, self._val, self._cands[name].preprocessing, ACCURACY_CHUNK)
            self._predictions[name] = logits.argmax(1)
        return self._predictions[name]


def open_in_worker(cand: Candidate, target: Target, cfg: Config, models: TorchModels, workers: Workers,
                   process: str | None = None) -> RemoteModel:
    """Load `cand` for `target` in the worker process of its runtime (or `process`), through the
    one execution path; a torch model travels to its worker pickled."""
    model = models.model(cand.name) if formats.get(cand.format).rebuilt_in_memory else str(cand.path)
    return workers.open(process or target.runtime, model, cand.format.value, target.runtime,
                        target.device, cfg.benchmark.threads, cand.precision,
                        cfg.benchmark.openvino_pin_precision)


def _base(cand: Candidate, target: Target, batch: int | None, threads: int) -> dict:
    import runtimes
    return {"id": row_id(cand.name, target.runtime, target.device, batch), "artifact": cand.name,
            "stage": cand.stage, "output": cand.output, "format": cand.format.value,
            "precision": cand.precision, "runtime": target.runtime,
            "runtime_version": runtimes.get(target.runtime).version(), "device": target.device,
            "batch": batch, "threads": threads, "sha256": cand.sha256,
            "size_bytes": formats.get(cand.format).size_bytes(cand.path) if cand.path else None,
            "reference": cand.reference, "not_deployable": cand.not_deployable}


def not_measured(cand: Candidate, target: Target, batch: int | None, threads: int, status: str,
                 reason: str) -> dict:
    """A row for a pair that cannot run here ("unavailable") or broke ("failed"), with why."""
    return {**_base(cand, target, batch, threads), "status": status, "reason": reason}


def _methodology(cand: Candidate, target: Target, val: ValImages, chunk: int, settings: dict) -> str:
    """How the row's accuracy was measured and how its runtime ran; the latency part is added
    once the rounds are done (pipeline.measure.rounds.methodology)."""
    pre = cand.preprocessing
    ov = ""
    if "requested_inference_precision" in settings:
        ov = (f" Inference precision requested: {settings['requested_inference_precision']}, "
              f"compiled: {settings.get('inference_precision_hint')}.")
    compiled = ""
    if settings.get("compile_seconds") is not None:
        compiled = (f" Compiling took {settings['compile_seconds']:.1f} s on the first call of each "
                    f"input shape, before timing; it is not in the latency.")
    return (f"Threads: {_threads_used(settings)}.{ov}{compiled} "
            f"Accuracy: top-1 over the first {val.count} val images (split {val.fingerprint[:12]}), "
            f"preprocessed with the artifact's own metadata ({pre.input_size} px, crop {pre.crop_pct:g}, "
            f"{pre.interpolation}), predicted in {target.runtime} on {target.device}, {chunk} "
            f"image{'s' if chunk != 1 else ''} per call. Agreement: share of those images whose top-1 "
            f"equals that of {_whom(cand.reference)} in PyTorch eager FP32 on the CPU.")


def _whom(reference: str | None) -> str:
    if reference in (None, TEACHER):
        return "the teacher"
    return f"{reference} (its FP32 torch source) and of the teacher"


def _vs_teacher(preds: np.ndarray, teacher: np.ndarray | None, targets: np.ndarray) -> dict | None:
    """This row's top-1 minus the teacher's (PyTorch eager FP32, CPU), image by image, with its
    interval: what the val split can and cannot tell apart."""
    if teacher is None:
        return None
    return paired_difference(preds == targets, teacher == targets)


def _threads_used(settings: dict) -> str:
    for key in ("torch_threads", "inference_num_threads", "threads"):
        if settings.get(key) is not None:
            return str(settings[key])
    return "?"


@dataclass
class Pending:
    """A scored row waiting for its latency: its model, loaded in a worker, and the timed input."""

    row: dict
    model: RemoteModel
    batch: np.ndarray

    def time(self, warmup: int, min_iterations: int, min_seconds: float):
        return self.model.time(self.batch, warmup, min_iterations, min_seconds)


def score_target(cand: Candidate, target: Target, cfg: Config, val: ValImages, models: TorchModels,
                 workers: Workers) -> list[dict | Pending]:
    """One artifact on one runtime and device: loaded in its runtime's worker and scored on val
    once; one Pending per batch size to be timed (or a row saying why that batch cannot be)."""
    bench = cfg.benchmark
    # References are scored in this process first (PyTorch eager FP32 on the CPU is the reference).
    models.counts(cand.reference)
    for name in {cand.reference, TEACHER}:
        if not (name == cand.name and is_reference(target.runtime, target.device)):
            models.predictions(name)
    loaded = open_in_worker(cand, target, cfg, models, workers)
    chunk = loaded.chunk(ACCURACY_CHUNK)
    t0 = time.perf_counter()
    preds = predict(loaded, val, cand.preprocessing, chunk).argmax(1)
    settings = {k: v for k, v in loaded.settings.items() if v is not None}
    if is_reference(target.runtime, target.device):
        models.remember(cand.name, preds)
    params, macs = models.counts(cand.reference)
    scored = {"accuracy": top1(preds, val.targets), "accuracy_images": val.count,
              "peak_rss_scope": loaded.peak_rss_scope, "process": loaded.worker.name,
              "agreement_reference": agreement(preds, models.predictions(cand.reference)),
              "agreement_teacher": agreement(preds, models.predictions(TEACHER)),
              "accuracy_vs_teacher": (None if cand.name == TEACHER and is_reference(target.runtime, target.device)
                                      else _vs_teacher(preds, models.predictions(TEACHER), val.targets)),
              "params": params, "macs": macs, "settings": settings,
              "compile_s": settings.get("compile_seconds"),
              "val_split": val.fingerprint, "input_size": cand.preprocessing.input_size,
              "accuracy_seconds": round(time.perf_counter() - t0, 2),
              "predictions": preds.tolist(),      # class id per val image, for the per-class view
              "methodology": _methodology(cand, target, val, chunk, settings)}
    out: list[dict | Pending] = []
    for batch in bench.batch_sizes:
        if loaded.fixed_batch and batch != loaded.fixed_batch:
            out.append(not_measured(cand, target, batch, bench.threads, "unavailable",
                                    f"exported with a fixed batch of {loaded.fixed_batch}; set "
                                    f"export.dynamic_batch: true to measure batch {batch}"))
            continue
        row = {**_base(cand, target, batch, bench.threads), "status": "ok", "reason": None, **scored}
        out.append(Pending(row, loaded, val.batch(cand.preprocessing, batch)))
    return out


def _timed(row: dict, stats: list, rounds_id: str, method: str) -> None:
    """Fill `row` with its latency from its rounds (pooled statistics, each round's record)."""
    from pipeline.measure.rounds import pooled, round_record
    total = pooled(stats)
    row.update({k: v for k, v in total.to_dict().items() if k in LATENCY_FIELDS})
    row.update(total.sample_record())
    row["rounds"], row["rounds_id"] = round_record(stats), rounds_id
    row["methodology"] = (f"Latency: {method} Each round: {stats[0].methodology} "
                          f"{row['methodology']} Peak RSS scope: {row['peak_rss_scope']}.")


def time_rows(pending: list[Pending], cfg: Config, workers: Workers, models: TorchModels,
              inputs: dict[str, Manifest], log=_log) -> dict | None:
    """Time every pending row in interleaved rounds (pipeline.measure.rounds), together with the
    A/A pair's second half loaded in a second worker process; fill the rows in place and return
    the noise floor record (None when there is no row to repeat)."""
    from pipeline.measure import rounds as R
    from pipeline.measure.noise import aa_row, noise_floor_record
    bench = cfg.benchmark
    seed = R.new_seed()
    rounds_id = f"{int(time.time())}-{seed}"
    timers = {p.row["id"]: p.time for p in pending}
    first = aa_row([p.row for p in pending])
    second = None
    if first is not None:
        p = next(p for p in pending if p.row is first)
        cand = next(c for c in candidates(inputs) if c.name == first["artifact"])
        target = next(t for t in targets_for(cand.format, bench)
                      if t.runtime == first["runtime"] and t.device == first["device"])
        try:
            model = open_in_worker(cand, target, cfg, models, workers, f"{target.runtime} (second process)")
            second = Pending({"id": first["id"], "process": model.worker.name}, model, p.batch)
            timers[R.AA_SECOND] = second.time
        except Exception as exc:  # the rows stand without their noise floor
            log(f"could not load {first['id']} in a second process for the noise floor "
                f"({type(exc).__name__}: {exc}); comparisons carry no noise margin")
    from runtimes.progress import progress
    bar = progress(range(bench.rounds), desc="benchmark rounds", unit="rounds", log=_logger)
    ticks = iter(bar)
    runs, orders, errors = R.measure_rounds(timers, bench.rounds, bench.warmup, bench.min_iterations,
                                            bench.min_seconds, seed, on_round=lambda r: next(ticks, None))
    for p in pending:
        row, stats = p.row, runs[p.row["id"]]
        if row["id"] in errors or not stats:
            row.update(status="failed", reason=errors.get(row["id"], "not timed"))
            log(f"{row['id']:<40} FAILED while timing: {row['reason']}")
            continue
        _timed(row, stats, rounds_id, R.methodology(bench.rounds, bench.warmup, bench.min_iterations,
                                                     bench.min_seconds, seed, p.model.worker.name))
        log(f"{row['id']:<40} top-1 {row['accuracy']:6.2f}%  p50 {row['p50_ms']:8.3f} ms  "
            f"p90 {row['p90_ms']:8.3f} ms  {row['throughput_ips']:9.1f} img/s  ({len(stats)} rounds)")
    if second is None or first.get("status") != "ok" or not runs.get(R.AA_SECOND):
        return None
    method = R.methodology(bench.rounds, bench.warmup, bench.min_iterations, bench.min_seconds, seed,
                           second.model.worker.name)
    second.row["methodology"], second.row["peak_rss_scope"] = "", second.model.peak_rss_scope
    _timed(second.row, runs[R.AA_SECOND], rounds_id, method)
    return noise_floor_record(first, second.row, seed, orders)


def build_rows(inputs: dict[str, Manifest], cfg: Config, log=_log) -> tuple[list[dict], dict | None]:
    """Benchmark every artifact of `inputs` (upstream manifests by stage) on every configured
    runtime and device: scored one by one (torch models first, since they are the references for
    agreement), then timed together in interleaved rounds. Returns the rows and the noise floor."""
    from pipeline.data import load_splits
    bench = cfg.benchmark
    val = ValImages(load_splits(cfg.data, cfg.run.seed).val, bench.accuracy_images)
    cands = candidates(inputs)
    models = TorchModels(cands, val, bench.threads)
    rows: list[dict] = []
    pending: list[Pending] = []
    from runtimes.progress import progress
    with Workers() as workers:
        for cand in progress(cands, desc="benchmark: scoring", unit="artifacts", log=_logger):
            for target in targets_for(cand.format, bench):
                if cand.failed:
                    rows.append(not_measured(cand, target, None, bench.threads, "failed", cand.failed))
                    log(f"{rows[-1]['id']:<40} FAILED at export: {cand.failed}")
                    continue
                reason = cand.unavailable or target.unavailable
                if reason:
                    rows.append(not_measured(cand, target, None, bench.threads, "unavailable", reason))
                    log(f"{rows[-1]['id']:<40} unavailable: {reason}")
                    continue
                try:
                    for item in score_target(cand, target, cfg, val, models, workers):
                        rows.append(item.row if isinstance(item, Pending) else item)
                        if isinstance(item, Pending):
                            pending.append(item)
                except Exception as exc:  # one broken pair must not cost the others their numbers
                    reason = f"{type(exc).__name__}: {exc}"
                    rows.append(not_measured(cand, target, None, bench.threads, "failed", reason))
                    log(f"{rows[-1]['id']:<40} FAILED: {reason}\n{traceback.format_exc()}")
        floor = time_rows(pending, cfg, workers, models, inputs, log) if pending else None
    if cfg.targets:
        from pipeline.measure.remote_rows import remote_rows
        rows.extend(remote_rows(cands, cfg, val, log))
    return rows, floor


def summary(rows: list[dict]) -> dict:
    """Row counts by status, and the device families measured."""
    out = {"rows": len(rows)}
    for status in ("ok", "unavailable", "failed"):
        out[status] = sum(r["status"] == status for r in rows)
    out["devices"] = sorted({device_family(r["device"]) for r in rows if r["status"] == "ok"})
    return out
