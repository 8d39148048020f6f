"""The device side of a remote target: verify bundles, build engines, score and time them, return JSON.

    cd <work folder> && python3 -m runtimes.device_runner --request request.json --out result.json

The work folder holds a copy of runtimes/ (this package), the bundles, val samples and the request.
The device needs Python 3.8+, numpy and the runtime it drives: no torch, no edgeship install, no
pipeline/ or exporters/ (TensorRT sessions reach CUDA through libcudart, see runtimes.cudart).
Per item: the bundle is proven (runtimes.bundle_check) before its model is loaded, TensorRT
engines are built here from the bundle's ONNX and cached, the model runs through
runtimes.execution.open_model and is timed by runtimes.harness.measure, as on any other target, and
telemetry is sampled while it runs. One item failing does not stop the others; the runner exits 0
once result.json is written, 2 for a request it cannot read, 1 when the result cannot be written.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

import runtimes
from runtimes import environment, errors, formats, telemetry
from runtimes.bundle_check import check_golden, read_bundle, static_batch
from runtimes.execution import open_model, run_in_chunks
from runtimes.harness import measure
from runtimes.parity import ParityResult

REQUEST_VERSION = RESULT_VERSION = 1
OK, FAILED, UNAVAILABLE = "ok", "failed", "unavailable"
IDLE_SECONDS = 1.0      # idle power is read over this long just before each timed run
SCORING_BATCH = 64
_ITEM_KEYS = ("name", "bundle", "runtime", "val")

log = logging.getLogger(__name__)


class RequestError(ValueError, errors.ConfigError):
    """request.json cannot be used; the message names the field and what it must be."""


class ItemUnavailable(Exception):
    """The item's runtime or device cannot be used on this device (the message says why)."""


def read_request(path: Path) -> dict:
    """The request, with defaults filled in; raises RequestError naming the bad field."""
    try:
        request = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise RequestError(f"request {path} cannot be read as JSON ({err}); re-send it") from None
    if not isinstance(request, dict) or request.get("version") != REQUEST_VERSION:
        raise RequestError(f"request {path}: 'version' must be {REQUEST_VERSION}, got "
                           f"{request.get('version') if isinstance(request, dict) else request!r}; "
                           "the runner copy and the sender differ, re-copy runtimes/")
    items = request.get("items")
    if not isinstance(items, list) or not items:
        raise RequestError(f"request {path}: 'items' must be a non-empty list of items")
    for i, item in enumerate(items):
        missing = [k for k in _ITEM_KEYS if not isinstance(item, dict) or not isinstance(item.get(k), str)]
        if missing:
            raise RequestError(f"request {path}: items[{i}] lacks string field(s) {', '.join(missing)}")
    batches = request.setdefault("batch_sizes", [1])
    if not isinstance(batches, list) or not batches or not all(isinstance(b, int) and b > 0 for b in batches):
        raise RequestError(f"request {path}: 'batch_sizes' must be a list of positive integers, got {batches!r}")
    for key, default, kind in (("warmup", 10, int), ("min_iterations", 50, int), ("min_seconds", 2.0, (int, float))):
        value = request.setdefault(key, default)
        if not isinstance(value, kind) or isinstance(value, bool) or value < 0:
            raise RequestError(f"request {path}: '{key}' must be a non-negative number, got {value!r}")
    request.setdefault("threads", None)
    request.setdefault("telemetry", True)
    request.setdefault("tensorrt", {})
    return request


def _val(path: Path, manifest: dict):
    with np.load(path) as val:
        if not {"images", "labels"} <= set(val.files):
            raise ValueError(f"val file {path} lacks 'images' or 'labels' (has {val.files}); re-send it")
        images, labels = val["images"].astype(np.float32), val["labels"].astype(np.int64)
    expected = (manifest.get("inputs") or [{}])[0].get("shape") or []
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"val file {path}: images {images.shape} and labels {labels.shape} must be "
                         "NCHW and of equal, non-zero length")
    if len(expected) == 4 and any(e and e != a for e, a in zip(expected[1:], images.shape[1:])):
        raise ValueError(f"val file {path} holds images of shape {images.shape[1:]}, the model takes "
                         f"{tuple(expected[1:])}: it was preprocessed for another input size")
    return images, labels


def _batch(images: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:n] if reps > 1 else images[:n])


def run_item(item: dict, request: dict, sampler: Optional[telemetry.Sampler]) -> dict:
    """Verify, load, score and time one item; never raises (failures become its status)."""
    result = {"name": item["name"], "runtime": item["runtime"], "runtime_version": None,
              "device": item.get("device"), "status": OK, "reason": None, "bundle_check": None,
              "accuracy": None, "accuracy_images": None, "load_s": None, "first_inference_ms": None,
              "build": None, "rows": []}
    scratch = Path(tempfile.mkdtemp(prefix="edgeship-item-"))
    try:
        module = runtimes.get(item["runtime"])
        device = item.get("device") or module.DEFAULT_DEVICE
        result.update(device=device, runtime_version=module.version())
        reason = module.unavailable(device)
        if reason:
            raise ItemUnavailable(reason)
        bundle = Path(item["bundle"])
        manifest = read_bundle(bundle, item.get("model_sha256"))   # proven before anything runs
        images, labels = _val(Path(item["val"]), manifest)
        artifact = bundle / manifest["artifact"]
        fixed = static_batch(manifest) or 0
        if formats.for_file(artifact).name in getattr(module, "BUILDS_FROM", ()):
            from runtimes.tensorrt_build import build_on_device
            engine = scratch / f"{artifact.stem}.engine"
            top = max(request["batch_sizes"])
            result["build"] = build_on_device(artifact, manifest["files"][artifact.name], manifest["precision"],
                                              engine, request["tensorrt"], fixed or top, fixed or top, not fixed)
            artifact = engine
        start = time.perf_counter()
        loaded = open_model(artifact, formats.for_file(artifact).name, module.NAME, device, request["threads"],
                            manifest["precision"], fixed_batch=fixed)
        result["load_s"] = time.perf_counter() - start
        first = _batch(images, request["batch_sizes"][0])
        start = time.perf_counter()
        loaded.run(first)
        loaded.sync()
        result["first_inference_ms"] = (time.perf_counter() - start) * 1e3

        def score(x: np.ndarray) -> np.ndarray:
            return run_in_chunks(loaded.run, x, loaded.chunk(SCORING_BATCH))

        parity: ParityResult = check_golden(bundle, manifest, score)
        result["bundle_check"] = parity.to_dict()
        predicted = np.asarray(score(images)).reshape(len(images), -1).argmax(axis=1)
        result["accuracy"] = float(np.mean(predicted == labels) * 100.0)
        result["accuracy_images"] = int(len(images))
        for batch_size in request["batch_sizes"]:
            result["rows"].append(_row(loaded, _batch(images, batch_size), request, sampler))
    except ItemUnavailable as err:
        result.update(status=UNAVAILABLE, reason=str(err))
    except Exception as err:  # one item's failure must not cost the others their results
        log.warning("item %s failed: %s: %s", item["name"], type(err).__name__, err)
        result.update(status=FAILED, reason=f"{type(err).__name__}: {err}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _row(loaded, batch: np.ndarray, request: dict, sampler: Optional[telemetry.Sampler]) -> dict:
    """One timed run at one batch size, with the telemetry read while idle just before and during it."""
    idle_start = time.monotonic()
    if sampler is not None:
        time.sleep(IDLE_SECONDS)
    run_start = time.monotonic()
    stats = measure(loaded, batch, warmup=request["warmup"], min_iterations=request["min_iterations"],
                    min_seconds=float(request["min_seconds"]))
    run_end = time.monotonic()
    # The per-run samples travel home, so remote rows get intervals like local ones.
    row = dict(stats.to_dict(), **stats.sample_record(), batch=int(len(batch)))
    if sampler is None:
        return dict(row, energy_mj=None, mean_power_w=None, idle_power_w=None, throttled=None,
                    telemetry_summary=None)
    power = telemetry.summarize(sampler.between(idle_start, run_start), sampler.between(run_start, run_end),
                                stats.total_s, stats.iterations * len(batch), telemetry.throttle_threshold_c())
    power["telemetry_summary"]["source"] = sampler.source
    return dict(row, **power)


def describe_device(threads: Optional[int], load_before: Optional[List[float]]) -> dict:
    """The environment record of this device, with load averages and Jetson state."""
    env = environment.describe_environment(threads)
    env["load_average"] = {"before": load_before, "after": telemetry.load_average()}
    env["jetson_state"] = telemetry.jetson_state()
    now = telemetry.sysfs_sample(0.0)
    env["cpu_frequency_mhz_sysfs"] = now.cpu_mhz if now else None
    return env


def fingerprint(env: dict) -> str:
    """sha256 of what identifies this device and its software (runtime versions, power mode)."""
    record = environment.fingerprint(env)
    state = env.get("jetson_state") or {}
    record["power_mode"] = state.get("power_mode")
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def write_atomic(path: Path, document: dict) -> None:
    """Write JSON to `path` through a temporary file beside it and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m runtimes.device_runner", description=__doc__.splitlines()[0])
    parser.add_argument("--request", required=True, type=Path, help="request.json (paths relative to the cwd)")
    parser.add_argument("--out", required=True, type=Path, help="where to write result.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="device_runner: %(message)s", stream=sys.stderr)
    try:
        request = read_request(args.request)
    except RequestError as err:
        print(f"device_runner: {err}", file=sys.stderr)
        return 2
    load_before = telemetry.load_average()
    sampler = telemetry.Sampler().start() if request["telemetry"] else None
    try:
        items = [run_item(item, request, sampler) for item in request["items"]]
    finally:
        if sampler is not None:
            sampler.stop()
    env = describe_device(request["threads"], load_before)
    result = {"version": RESULT_VERSION, "runner_python": platform.python_version(), "environment": env,
              "fingerprint": fingerprint(env), "items": items}
    try:
        write_atomic(args.out, result)
    except OSError as err:
        print(f"device_runner: cannot write {args.out}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
