"""Rows measured on the configured targets: every export bundle x target runtime x target device.

Per target: probe it (reachable, Python, numpy, runtimes), ship what it lacks (the runner, the
bundles, one val sample per distinct preprocessing), run the device runner once, and turn its
result into rows whose device is '<target>/<device>'. Whatever goes wrong on one target becomes
that target's rows ("unavailable" or "failed", with the reason); other targets and the local rows
are untouched, and a broken run keeps no number.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import numpy as np

import runtimes
from pipeline.config import Config
from pipeline.config_targets import Target
from pipeline.measure.artifacts import Candidate
from pipeline.measure.scoring import ValImages
from pipeline.targets.probe import probe_once
from pipeline.targets.remote import run_job
from pipeline.targets.ship import Upload, ship
from pipeline.targets.ssh import TargetError, Transport
from runtimes import formats

_logger = logging.getLogger(__name__)
RUNNER_FILE = Path(runtimes.__file__).with_name("device_runner.py")
LATENCY = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "min_ms", "max_ms", "throughput_ips",
           "iterations", "total_s", "energy_mj", "mean_power_w", "idle_power_w", "throttled",
           "telemetry_summary", "samples_us", "samples_total", "started", "finished")
NO_RUNNER = ("the device runner runtimes/device_runner.py is not in this edgeship checkout; "
             "update edgeship to measure on targets")


def remote_formats(runtime: str) -> tuple[str, ...]:
    """The formats a runtime takes on a target: those it runs, and those it builds its own from
    there (TensorRT builds its engine on the device from the ONNX)."""
    module = runtimes.get(runtime)
    return (*module.FORMATS, *getattr(module, "BUILDS_FROM", ()))


def runner_sha(package: Path | None = None) -> str:
    """Content hash of the runtimes package that is shipped (sources only, no bytecode)."""
    package = package or RUNNER_FILE.parent
    h = hashlib.sha256()
    for f in sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts):
        h.update(str(f.relative_to(package)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def target_params(cfg: Config) -> list[dict]:
    """The benchmark key's part for targets: each one's settings, the runner's hash and the device
    fingerprint it reports now (None when unreachable), so a changed power mode re-measures."""
    return [{**t.model_dump(mode="json", exclude={"timeout_s", "connect_timeout_s"}),
             "fingerprint": probe_once(t).fingerprint, "runner": runner_sha()} for t in cfg.targets]


def _bundle_sha(cand: Candidate) -> str | None:
    if cand.manifest is None or cand.path is None or cand.output not in cand.manifest.outputs:
        return None
    return cand.manifest.outputs[cand.output].metadata.get("bundle_sha256")


def plan(cands: list[Candidate], target: Target, cfg: Config) -> list[dict]:
    """The items to measure: (candidate, runtime, device, precision) for every sealed bundle."""
    trt_fp16 = "fp16" in cfg.export.tensorrt.precisions
    out = []
    for cand in cands:
        sha = _bundle_sha(cand)
        if not sha or cand.unavailable:
            continue
        for runtime in (r.value for r in target.runtimes):
            if cand.format.value not in remote_formats(runtime):
                continue
            precision = ("fp16" if runtime == "tensorrt" and cand.precision == "fp32" and trt_fp16
                         else cand.precision)
            for device in target.devices:
                out.append({"cand": cand, "sha": sha, "runtime": runtime, "device": device,
                            "precision": precision,
                            "name": f"{cand.name}--{runtime}--{device.replace(':', '_')}"})
    return out


def _base(item: dict, target: Target, batch, threads: int, fingerprint: str | None) -> dict:
    cand, device = item["cand"], f"{target.name}/{item['device']}"
    # rows.row_id's format (rows imports this module, so it is not imported back)
    rid = f"{cand.name}@{item['runtime']}/{device}/b{batch if batch is not None else '-'}"
    return {"id": rid, "artifact": cand.name,
            "stage": cand.stage, "output": cand.output, "format": cand.format.value,
            "precision": item["precision"], "runtime": item["runtime"], "runtime_version": None,
            "device": device, "batch": batch, "threads": threads, "sha256": cand.sha256,
            "size_bytes": formats.get(cand.format).size_bytes(cand.path),
            "reference": cand.reference, "target": target.name, "target_required": target.required,
            "target_fingerprint": fingerprint}


def _not_measured(items, target, threads, status, reason, fingerprint=None) -> list[dict]:
    return [{**_base(i, target, None, threads, fingerprint), "status": status, "reason": reason}
            for i in items]


def _val_sample(val: ValImages, pre, folder: Path) -> tuple[str, Path]:
    """val/<sha12>.npz of the scored val images at `pre`, named by the content of its arrays."""
    images = np.ascontiguousarray(np.concatenate(list(val.chunks(pre, 256))), dtype=np.float32)
    labels = np.ascontiguousarray(val.targets, dtype=np.int64)
    h = hashlib.sha256(repr((images.shape, labels.shape)).encode())
    h.update(images.tobytes())
    h.update(labels.tobytes())
    path = folder / f"{h.hexdigest()[:12]}.npz"
    if not path.exists():
        np.savez(path, images=images, labels=labels)
    return f"val/{path.name}", path


def _request(items: list[dict], cfg: Config, vals: dict) -> dict:
    b, trt = cfg.benchmark, cfg.export.tensorrt
    return {"version": 1, "items": [
        {"name": i["name"], "bundle": f"bundles/{i['sha'][:12]}/{i['cand'].name}",
         "model_sha256": i["sha"], "runtime": i["runtime"], "device": i["device"],
         "precision": i["precision"], "val": vals[i["name"]]} for i in items],
        "batch_sizes": list(b.batch_sizes), "warmup": b.warmup, "min_iterations": b.min_iterations,
        "min_seconds": b.min_seconds, "threads": b.threads, "telemetry": True,
        "tensorrt": {"engine_cache": "engines", "timing_cache": "engines/timing.cache",
                     "optimization_level": trt.optimization_level, "workspace_mb": trt.workspace_mb}}


def _measured_rows(item: dict, res: dict, target: Target, threads: int, fp: str | None,
                   where: str, val_name: str, val_split: str) -> list[dict]:
    rows = []
    for r in res["rows"]:
        latency = {k: r.get(k) for k in LATENCY}
        method = (f"Measured on target '{target.name}' ({where}, device fingerprint {(fp or '?')[:12]}) "
                  f"by the device runner in {res.get('runtime')} {res.get('runtime_version')}: "
                  f"{r.get('methodology') or 'no methodology given'} Accuracy: top-1 over "
                  f"{res.get('accuracy_images')} val images shipped as {val_name}, preprocessed "
                  "here with the artifact's own metadata. Agreement: not computed for target rows "
                  "(the runner returns accuracy, not per-image predictions).")
        rows.append({**_base(item, target, r["batch"], threads, fp), "status": "ok", "reason": None,
                     "runtime_version": res.get("runtime_version"),
                     "accuracy": float(res["accuracy"]), "accuracy_images": res.get("accuracy_images"),
                     # what the baseline gate compares: the same val split at the same input size
                     "val_split": val_split, "input_size": item["cand"].preprocessing.input_size,
                     "agreement_reference": None, "agreement_teacher": None,
                     "accuracy_vs_teacher": None, "params": None,
                     "macs": None, "settings": {}, "compile_s": (res.get("build") or {}).get("seconds"),
                     "load_s": res.get("load_s"), "first_inference_ms": res.get("first_inference_ms"),
                     "build": res.get("build"), "bundle_check": res.get("bundle_check"),
                     **latency, "methodology": method})
    return rows


def target_rows(cands: list[Candidate], target: Target, cfg: Config, val: ValImages, log) -> list[dict]:
    """Rows of every bundle on one target; never raises for the target's own faults."""
    threads = cfg.benchmark.threads
    items = plan(cands, target, cfg)
    if not items:
        return []
    found = probe_once(target)
    fp = found.fingerprint
    if found.problem:
        return _not_measured(items, target, threads, "unavailable", found.problem)
    if not RUNNER_FILE.exists():
        return _not_measured(items, target, threads, "unavailable", NO_RUNNER, fp)
    rows = [r for i in items if i["runtime"] in found.runtime_problems
            for r in _not_measured([i], target, threads, "unavailable",
                                   found.runtime_problems[i["runtime"]], fp)]
    items = [i for i in items if i["runtime"] not in found.runtime_problems]
    if not items:
        return rows
    transport = Transport(target)
    try:
        with tempfile.TemporaryDirectory(prefix="edgeship-val-") as tmp:
            rsha = runner_sha()[:12]
            uploads, vals = [Upload(f"runtimes-{rsha}", RUNNER_FILE.parent, "runtimes")], {}
            for i in items:
                cand = i["cand"]
                vals[i["name"]], local = _val_sample(val, cand.preprocessing, Path(tmp))
                uploads.append(Upload(vals[i["name"]], local))
                uploads.append(Upload(f"bundles/{i['sha'][:12]}", cand.manifest.path_of(cand.output),
                                      cand.name))
            shipped = ship(transport, target.workdir, uploads, target.timeout_s)
        log(f"target {target.name}: sent {len(shipped['sent'])} item(s), "
            f"{len(shipped['present'])} already there")
        result = run_job(transport, _request(items, cfg, vals), f"runtimes-{rsha}")
    except TargetError as e:
        return rows + _not_measured(items, target, threads, e.status, str(e), fp)
    except Exception as e:  # one target's fault must not cost the others (or the local rows)
        _logger.exception("target %s", target.name)
        return rows + _not_measured(items, target, threads, "failed", f"{type(e).__name__}: {e}", fp)
    answers = {res["name"]: res for res in result["items"]}
    for i in items:
        res = answers.get(i["name"])
        if res is None:
            rows += _not_measured([i], target, threads, "failed", "the runner returned no result for it", fp)
        elif res["status"] != "ok":
            rows += _not_measured([i], target, threads, res["status"], res.get("reason") or "no reason given", fp)
        else:
            rows += _measured_rows(i, res, target, threads, fp, transport.where, vals[i["name"]],
                                   val.fingerprint)
    return rows


def remote_rows(cands: list[Candidate], cfg: Config, val: ValImages, log) -> list[dict]:
    """Rows of every configured target, one target after another."""
    rows = []
    for target in cfg.targets:
        rows += target_rows(cands, target, cfg, val, log)
    for r in rows:
        log(f"{r['id']:<40} " + (f"top-1 {r['accuracy']:6.2f}%  p90 {r['p90_ms']:8.3f} ms"
                                 if r["status"] == "ok" else f"{r['status']}: {r['reason']}"))
    return rows
