"""The benchmark itself: one row per artifact x runtime x device x batch size.

A measured row holds val top-1 in that runtime and device, top-1 agreement with the FP32 torch
model the artifact descends from and with the teacher, the harness's latency statistics, size on
disk, params and MACs, the runtime settings, and a sentence saying how it was measured. A pair
that cannot run here is a row too, with status "unavailable" and the reason; one that failed
says "failed" and the error, and the others are still measured.
"""
from __future__ import annotations

import logging
import time
import traceback

import numpy as np

from pipeline.config import Config
from pipeline.measure.accuracy_interval import paired_difference
from pipeline.measure.artifacts import TEACHER, Candidate, candidates
from pipeline.measure.scoring import ValImages, agreement, predict, top1
from pipeline.measure.targets import Target, device_family, is_reference, targets_for
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


def reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux: clear_refs 5), so the harness's
    peak RSS covers one artifact (load, scoring, timing) instead of everything run before it, the
    training stages included. False where the kernel does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _open(cand: Candidate, target: Target, cfg: Config, models: TorchModels):
    """Load `cand` on the target through the one execution path."""
    from runtimes.execution import open_model
    model = models.model(cand.name) if formats.get(cand.format).rebuilt_in_memory else cand.path
    return open_model(model, cand.format, target.runtime, target.device, cfg.benchmark.threads,
                      cand.precision, pin=cfg.benchmark.openvino_pin_precision)


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


def _methodology(cand: Candidate, target: Target, stats, val: ValImages, chunk: int,
                 settings: dict) -> str:
    pre = cand.preprocessing
    ov = ""
    if "requested_inference_precision" in settings:
        ov = (f" Inference precision requested: {settings['requested_inference_precision']}, "
              f"compiled: {settings.get('inference_precision_hint')}.")
    compiled = ""
    if settings.get("compile_seconds") is not None:
        compiled = (f" Compiling took {settings['compile_seconds']:.1f} s on the first call of each "
                    f"input shape, before timing; it is not in the latency.")
    return (f"Latency: {stats.methodology} Threads: {_threads_used(settings)}.{ov}{compiled} "
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


def measure_target(cand: Candidate, target: Target, cfg: Config, val: ValImages,
                   models: TorchModels, log=_log) -> list[dict]:
    """Rows of one artifact on one runtime and device: accuracy once, latency per batch size."""
    from runtimes.harness import measure
    bench = cfg.benchmark
    # References first, so their models are loaded and scored before the memory mark is reset;
    # a torch model scored on the CPU is its own reference and is scored once, below.
    models.counts(cand.reference)
    for name in {cand.reference, TEACHER}:
        if not (name == cand.name and is_reference(target.runtime, target.device)):
            models.predictions(name)
    peak_scope = ("this row: high-water mark reset before loading, includes the process baseline"
                  if reset_peak_rss() else "the whole process so far")
    loaded = _open(cand, target, cfg, models)
    fixed, chunk = loaded.fixed_batch, loaded.chunk(ACCURACY_CHUNK)
    t0 = time.perf_counter()
    preds = predict(loaded, val, cand.preprocessing, chunk).argmax(1)
    settings = {k: v for k, v in loaded.settings.items() if v is not None}
    if is_reference(target.runtime, target.device):
        models.remember(cand.name, preds)
    params, macs = models.counts(cand.reference)
    scored = {"accuracy": top1(preds, val.targets), "accuracy_images": val.count,
              "peak_rss_scope": peak_scope,
              "agreement_reference": agreement(preds, models.predictions(cand.reference)),
              "agreement_teacher": agreement(preds, models.predictions(TEACHER)),
              "accuracy_vs_teacher": (None if cand.name == TEACHER and is_reference(target.runtime, target.device)
                                      else _vs_teacher(preds, models.predictions(TEACHER), val.targets)),
              "params": params, "macs": macs, "settings": settings,
              "compile_s": settings.get("compile_seconds"),
              "val_split": val.fingerprint, "input_size": cand.preprocessing.input_size,
              "accuracy_seconds": round(time.perf_counter() - t0, 2)}
    rows = []
    for batch in bench.batch_sizes:
        if fixed and batch != fixed:
            rows.append(not_measured(cand, target, batch, bench.threads, "unavailable",
                                     f"exported with a fixed batch of {fixed}; set "
                                     f"export.dynamic_batch: true to measure batch {batch}"))
            continue
        stats = measure(loaded.session, val.batch(cand.preprocessing, batch), bench.warmup,
                        bench.min_iterations, bench.min_seconds,
                        cuda_events=hasattr(loaded.session, "cuda_stream"))
        latency = {k: v for k, v in stats.to_dict().items() if k in LATENCY_FIELDS}
        rows.append({**_base(cand, target, batch, bench.threads), "status": "ok", "reason": None,
                     **scored, **latency, **stats.sample_record(),
                     "methodology": _methodology(cand, target, stats, val, chunk, settings)
                     + f" Peak RSS scope: {peak_scope}."})
        log(f"{rows[-1]['id']:<40} top-1 {scored['accuracy']:6.2f}%  p50 {stats.p50_ms:8.3f} ms  "
            f"p90 {stats.p90_ms:8.3f} ms  {stats.throughput_ips:9.1f} img/s")
    return rows


def build_rows(inputs: dict[str, Manifest], cfg: Config, log=_log) -> list[dict]:
    """Benchmark every artifact of `inputs` (upstream manifests by stage) on every configured
    runtime and device; torch models first, since they are the references for agreement."""
    from pipeline.data import load_splits
    bench = cfg.benchmark
    val = ValImages(load_splits(cfg.data, cfg.run.seed).val, bench.accuracy_images)
    cands = candidates(inputs)
    models = TorchModels(cands, val, bench.threads)
    rows: list[dict] = []
    from runtimes.progress import progress
    for cand in progress(cands, desc="benchmark", unit="artifacts", log=_logger):
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
                rows.extend(measure_target(cand, target, cfg, val, models, log))
            except Exception as exc:  # one broken pair must not cost the others their numbers
                reason = f"{type(exc).__name__}: {exc}"
                rows.append(not_measured(cand, target, None, bench.threads, "failed", reason))
                log(f"{rows[-1]['id']:<40} FAILED: {reason}\n{traceback.format_exc()}")
    if cfg.targets:
        from pipeline.measure.remote_rows import remote_rows
        rows.extend(remote_rows(cands, cfg, val, log))
    return rows


def summary(rows: list[dict]) -> dict:
    """Row counts by status, and the device families measured."""
    out = {"rows": len(rows)}
    for status in ("ok", "unavailable", "failed"):
        out[status] = sum(r["status"] == status for r in rows)
    out["devices"] = sorted({device_family(r["device"]) for r in rows if r["status"] == "ok"})
    return out
