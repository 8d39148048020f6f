"""The OpenVINO side of the fidelity check: our harness against OpenVINO's own benchmark_app on
the same IR (runtimes.fidelity is the command, runtimes.fidelity_rounds the shared rounds).

Both tools compile the model with the same properties (latency hint, one stream, `threads`
inference threads, optional precision) and run batch 1 synchronously on the CPU on the same
input; the compiled properties each tool ended up with are compared.

benchmark_app refuses -nthreads/-nstreams together with -hint latency (a rule of its command
line, not of OpenVINO), so threads and streams reach it in a -load_config file while -hint
latency stays on the command line. It also feeds image inputs as u8 by default; -ip f32 keeps
the float32 input our runtimes use. Its latency is the inference request's own timer; ours
also includes the Python call and the logits copy, the cost an application actually pays.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtimes.fidelity_rounds import CannotMeasure, Comparison, alternate, input_batch, run_tool

TOOL = "benchmark_app"

_LATENCY = re.compile(r"^\[ INFO \]\s+(Median|Average|Min|Max):\s+([\d.]+)\s*(ms|us)\s*$")
_COUNT = re.compile(r"^\[ INFO \]\s+Count:\s+(\d+) iterations")
_PROPERTY = re.compile(r"^\[ INFO \]\s{3}([A-Z_]+): (.*)$")
_COMPARED = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")
_TYPE_NAMES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


@dataclass
class BenchmarkAppResult:
    """What benchmark_app reported: latencies in ms, run count, compiled-model properties."""

    latency_ms: dict[str, float]
    iterations: int
    properties: dict[str, str] = field(default_factory=dict)


def benchmark_app_command() -> list[str]:
    """How to start benchmark_app: the console script of this interpreter's openvino, else its
    entry point (openvino.tools.benchmark.main:main has no __main__ guard, so -m cannot run it)."""
    script = Path(sys.executable).parent / "benchmark_app"
    if script.is_file():
        return [str(script)]
    found = shutil.which("benchmark_app")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from openvino.tools.benchmark.main import main; "
                                  "sys.argv[0] = 'benchmark_app'; sys.exit(main())"]


def _normalise(key: str, value: str) -> str:
    value = value.strip()
    if key == "INFERENCE_PRECISION_HINT":
        match = re.search(r"'(\w+)'", value)  # "<Type: 'bfloat16'>"
        value = match.group(1) if match else value
        return _TYPE_NAMES.get(value, value)
    return value.split(".")[-1]  # "PerformanceMode.LATENCY" -> "LATENCY"


def parse_benchmark_app(output: str) -> BenchmarkAppResult:
    """Median/average/min/max latency (ms), iteration count and compiled-model properties from
    benchmark_app's console output (it switches to microseconds below 1 ms on average)."""
    latency: dict[str, float] = {}
    properties: dict[str, str] = {}
    iterations = 0
    in_model_block = False
    for line in output.splitlines():
        line = line.rstrip()
        if line.startswith("[ INFO ] Model:"):
            in_model_block = True
            continue
        if in_model_block:
            prop = _PROPERTY.match(line)
            if prop:
                properties[prop.group(1)] = _normalise(prop.group(1), prop.group(2))
                continue
            in_model_block = False
        if match := _LATENCY.match(line):
            value = float(match.group(2))
            latency[match.group(1).lower()] = value / 1000 if match.group(3) == "us" else value
        elif match := _COUNT.match(line):
            iterations = int(match.group(1))
    if "median" not in latency:
        raise ValueError("benchmark_app output has no 'Median:' latency line; was it run "
                         "with the default 50th latency percentile?")
    return BenchmarkAppResult(latency, iterations, properties)


def run_benchmark_app(xml: Path, config: dict[str, str], seconds: int, inputs_npy: Path,
                      shape: tuple[int, ...] | None, workdir: Path) -> BenchmarkAppResult:
    """Run benchmark_app on the CPU, synchronous API, latency hint, `config` as -load_config."""
    config_path = workdir / "benchmark_app_config.json"
    config_path.write_text(json.dumps({"CPU": {k: v for k, v in config.items()
                                               if k != "PERFORMANCE_HINT"}}))
    cmd = benchmark_app_command() + [
        "-m", str(xml), "-d", "CPU", "-hint", "latency", "-api", "sync",
        "-load_config", str(config_path), "-t", str(seconds), "-i", str(inputs_npy),
        # benchmark_app turns 3-channel image inputs into u8 tensors (adding a convert to f32
        # inside the model) unless told otherwise; our runtimes feed f32 NCHW.
        "-ip", "f32"]
    if shape is not None:
        cmd += ["-shape", "[" + ",".join(str(d) for d in shape) + "]"]
    return parse_benchmark_app(run_tool(cmd, "benchmark_app", seconds))


def _input_batch(model, inputs: Path | None, shape_arg: str | None) -> tuple[np.ndarray, bool]:
    """Batch-1 input for both tools, and whether the model's shape is dynamic."""
    import openvino as ov

    partial = model.inputs[0].get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in partial]
    batch = input_batch(inputs, shape_arg, dims, str(partial))
    if not partial.compatible(ov.PartialShape(list(batch.shape))):
        raise ValueError(f"input of shape {batch.shape} does not fit the model input {partial}")
    return batch, not partial.is_static


class _RequestTimes:
    """Passes runs through and keeps OpenVINO's own timing of each, to show how much of our
    latency is the Python call around infer() rather than inference."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.times_ms: list[float] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.inner.run(batch)
        self.times_ms.append(self.inner.request_latency_ms)
        return out

    def sync(self) -> None:
        self.inner.sync()


def compare(args) -> Comparison:
    """Alternate benchmark_app and our harness on `args.model` (an IR); raises CannotMeasure."""
    from runtimes import openvino_runtime
    from runtimes.harness import measure

    reason = openvino_runtime.unavailable("cpu")
    if reason:
        raise CannotMeasure(f"cannot check fidelity: {reason}")
    import openvino as ov

    model = ov.Core().read_model(str(args.model))
    try:
        batch, dynamic = _input_batch(model, args.inputs, args.shape)
    except ValueError as exc:
        raise CannotMeasure(str(exc)) from None
    config = openvino_runtime.compile_config("cpu", args.threads, args.precision)
    if dynamic:  # benchmark_app reshapes to a static shape; compile the same static model
        model.reshape({model.inputs[0]: ov.PartialShape(list(batch.shape))})
    session = _RequestTimes(openvino_runtime.load(model, "cpu", args.threads, args.precision))
    seconds = max(1, round(args.seconds / max(1, args.rounds)))
    theirs_props: dict[str, str] = {}

    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "input.npy"
        np.save(npy, batch)

        def run_tool() -> float:
            try:
                result = run_benchmark_app(args.model, config, seconds, npy,
                                           batch.shape if dynamic else None, Path(tmp))
            except (RuntimeError, ValueError) as exc:
                raise CannotMeasure(f"benchmark_app failed: {exc}") from None
            theirs_props.update(result.properties)
            return result.latency_ms["median"]

        def run_harness() -> tuple[float, float]:
            session.times_ms.clear()
            ours = measure(session, batch, warmup=10, min_iterations=50, min_seconds=seconds)
            return ours.p50_ms, float(np.median(session.times_ms[-ours.iterations:]))

        rounds = alternate(args.rounds, run_tool, run_harness)
    ours_props = session.inner.properties
    settings = {key: (str(theirs_props.get(key)), str(ours_props.get(key))) for key in _COMPARED}
    return Comparison(TOOL, str(args.model), tuple(batch.shape), args.threads, rounds, settings,
                      inner_label="OpenVINO's own infer() timer")
