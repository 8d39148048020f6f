"""Check our harness against OpenVINO's own benchmark_app on the same IR.

    python -m runtimes.fidelity MODEL.xml [--threads 2] [--seconds 10] [--rounds 3]
                                          [--inputs x.npy] [--shape 1,3,H,W]
                                          [--precision f32] [--tolerance 0.10]

Both tools compile the model with the same properties (latency hint, one stream, `threads`
inference threads, optional precision), run batch 1 synchronously on the CPU on the same input,
and report a median latency. The tools take turns for a few rounds, so a machine whose load
changes during the check slows both alike; the ratio is the median of the per-round ratios.
The command prints the medians, the compiled properties each tool ended up with, and the
ratio; it exits 1 when the ratio is outside 1 +/- tolerance, 2 when a measurement could not
be made.

benchmark_app refuses -nthreads/-nstreams together with -hint latency (a rule of its command
line, not of OpenVINO), so threads and streams reach it in a -load_config file while -hint
latency stays on the command line. It also feeds image inputs as u8 by default; -ip f32 keeps
the float32 input our runtimes use. Its latency is the inference request's own timer; ours
also includes the Python call and the logits copy, the cost an application actually pays.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"benchmark_app did not finish within {seconds + 300} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"benchmark_app exited with {done.returncode}:\n{tail}")
    return parse_benchmark_app(done.stdout)


def _input_batch(model, inputs: Path | None, shape_arg: str | None) -> tuple[np.ndarray, bool]:
    """Batch-1 input for both tools, and whether the model's shape is dynamic."""
    partial = model.inputs[0].get_partial_shape()
    dynamic = not partial.is_static
    if inputs is not None:
        batch = np.load(inputs).astype(np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        batch = np.ascontiguousarray(batch[:1])
    else:
        if partial.is_static:
            shape = tuple(int(d) for d in partial.to_shape())
        elif shape_arg:
            shape = tuple(int(d) for d in shape_arg.split(","))
        else:
            raise ValueError(f"model input has dynamic shape {partial}; pass --shape 1,3,H,W "
                             f"or --inputs file.npy")
        # Real images normalised with mean/std look like this; the value range matters little
        # for convolution latency, denormal-free data is what matters.
        batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    import openvino as ov

    if not partial.compatible(ov.PartialShape(list(batch.shape))):
        raise ValueError(f"input of shape {batch.shape} does not fit the model input {partial}")
    return batch, dynamic


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


@dataclass
class Round:
    """One benchmark_app run followed by one harness run, seconds apart."""

    benchmark_app_ms: float
    harness_ms: float
    request_ms: float  # OpenVINO's own timer inside our runs

    @property
    def ratio(self) -> float:
        return self.harness_ms / self.benchmark_app_ms


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtimes.fidelity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="OpenVINO IR (.xml, with its .bin beside it)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    parser.add_argument("--seconds", type=int, default=10,
                        help="seconds of measurement per tool, split over the rounds (default 10)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the two tools this many times, so load that changes "
                             "over the run hits both alike (default 3)")
    parser.add_argument("--inputs", type=Path, help="NCHW float32 .npy; its first image is used")
    parser.add_argument("--shape", help="input shape for dynamic models, e.g. 1,3,224,224")
    parser.add_argument("--precision", choices=("f32", "bf16", "f16"),
                        help="inference precision for both tools (default: OpenVINO's default)")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="allowed relative difference of the medians (default 0.10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m runtimes.fidelity`; returns the exit code."""
    args = _parser().parse_args(argv)
    from runtimes import openvino_runtime
    from runtimes.harness import measure

    reason = openvino_runtime.unavailable("cpu")
    if reason:
        print(f"cannot check fidelity: {reason}", file=sys.stderr)
        return 2
    if not args.model.is_file():
        print(f"model {str(args.model)!r} does not exist", file=sys.stderr)
        return 2
    import openvino as ov

    model = ov.Core().read_model(str(args.model))
    try:
        batch, dynamic = _input_batch(model, args.inputs, args.shape)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    config = openvino_runtime.compile_config("cpu", args.threads, args.precision)
    if dynamic:  # benchmark_app reshapes to a static shape; compile the same static model
        model.reshape({model.inputs[0]: ov.PartialShape(list(batch.shape))})
    session = _RequestTimes(openvino_runtime.load(model, "cpu", args.threads, args.precision))
    seconds = max(1, round(args.seconds / max(1, args.rounds)))

    rounds: list[Round] = []
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "input.npy"
        np.save(npy, batch)
        for _ in range(max(1, args.rounds)):
            try:
                theirs = run_benchmark_app(args.model, config, seconds, npy,
                                           batch.shape if dynamic else None, Path(tmp))
            except (RuntimeError, ValueError) as exc:
                print(f"benchmark_app failed: {exc}", file=sys.stderr)
                return 2
            session.times_ms.clear()
            ours = measure(session, batch, warmup=10, min_iterations=50, min_seconds=seconds)
            request = float(np.median(session.times_ms[-ours.iterations:]))
            rounds.append(Round(theirs.latency_ms["median"], ours.p50_ms, request))
    return _report(args, batch.shape, rounds, theirs.properties, session.inner.properties)


def _report(args, shape, rounds: list[Round], their_props: dict, our_props: dict) -> int:
    """Print the comparison and return the exit code."""
    print(f"model: {args.model}  input: {tuple(shape)}  threads: {args.threads}  "
          f"rounds: {len(rounds)}")
    print(f"{'median latency ms':20}{'benchmark_app':>14}{'harness':>10}{'request':>10}{'ratio':>8}")
    for i, r in enumerate(rounds, 1):
        print(f"{'round ' + str(i):20}{r.benchmark_app_ms:>14.4f}{r.harness_ms:>10.4f}"
              f"{r.request_ms:>10.4f}{r.ratio:>8.3f}")
    theirs = float(np.median([r.benchmark_app_ms for r in rounds]))
    ours = float(np.median([r.harness_ms for r in rounds]))
    request = float(np.median([r.request_ms for r in rounds]))
    ratio = float(np.median([r.ratio for r in rounds]))
    print(f"{'median of rounds':20}{theirs:>14.4f}{ours:>10.4f}{request:>10.4f}{ratio:>8.3f}")
    print("(request = OpenVINO's own infer() timer inside our runs, i.e. without the Python call)")
    mismatched = []
    for key in _COMPARED:
        mine, other = our_props.get(key), their_props.get(key)
        print(f"{key:28}{str(other):>12}{str(mine):>12}")
        if mine != other:
            mismatched.append(key)
    print(f"ratio (ours / benchmark_app median): {ratio:.3f}  tolerance: +/-{args.tolerance:.0%}")
    if mismatched:
        print(f"compiled properties differ: {', '.join(mismatched)}; the medians are not "
              f"comparable", file=sys.stderr)
        return 1
    if abs(ratio - 1.0) > args.tolerance:
        print(f"medians disagree by {abs(ratio - 1):.1%} (> {args.tolerance:.0%})", file=sys.stderr)
        request_ratio = float(np.median([r.request_ms / r.benchmark_app_ms for r in rounds]))
        if abs(request_ratio - 1.0) <= args.tolerance:
            print(f"OpenVINO's own timers agree (ratio {request_ratio:.3f}); the gap is the "
                  f"Python call around infer() (about {(ours - request) * 1e3:.0f} us per run), "
                  f"large next to this model's latency", file=sys.stderr)
        else:
            print("the tools saw different latencies in the same round: if the rounds vary "
                  "a lot, other processes share these cores; rerun on an idle machine or with "
                  "more --rounds", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
