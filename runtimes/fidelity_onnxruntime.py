"""The ONNX Runtime side of the fidelity check: our harness against ONNX Runtime's own
onnxruntime_perf_test on the same .onnx (runtimes.fidelity is the command, runtimes.fidelity_rounds
the shared rounds).

onnxruntime_perf_test is built with ONNX Runtime from source; the pip wheel does not ship it. It
is found through --perf-test PATH, then $ORT_PERF_TEST, then PATH. Both tools run the CPU provider
with the settings of `onnxruntime_runtime.session_settings` (intra-op threads -x, inter-op -y,
sequential executor, optimisation level -o, memory arena and pattern), and the same batch-1
tensor: perf_test reads inputs from test_data_set_*/input_N.pb beside the model, so the model is
linked into a scratch folder next to our input written as a TensorProto. -I would generate its own
random data instead, and -f free-dimension overrides would change the session we compare against
(ours leaves the batch axis free), so neither is used.

perf_test times each Run() in C++ around pre-loaded inputs; ours also includes the Python call
and the logits copy, the cost an application actually pays.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.fidelity_rounds import CannotMeasure, Comparison, alternate, input_batch, run_tool
from runtimes.onnxruntime_runtime import SessionSettings, session_settings

TOOL = "onnxruntime_perf_test"
ENV_VAR = "ORT_PERF_TEST"

# performance_runner.cc prints "P50 Latency: 0.00123 s" and "Average inference time cost: 1.23 ms";
# the tool's README keeps an older sample ("P50 Latency is 0.00123sec", "Average time cost:1.23
# ms"). Seconds are a double as C++ streams print it, so under 1e-4 s they take exponent form.
_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
_P50 = re.compile(r"^P50 Latency(?::| is)\s*" + _NUMBER + r"\s*(?:s|sec)\s*$")
_AVERAGE = re.compile(r"^Average (?:inference )?time cost:\s*" + _NUMBER + r"\s*ms\s*$")
_COUNT = re.compile(r"^Total (?:inference requests|iterations):\s*(\d+)\s*$")


@dataclass
class PerfTestResult:
    """What onnxruntime_perf_test reported: median and mean latency in ms, run count."""

    p50_ms: float
    average_ms: float | None
    iterations: int


def how_to_get() -> str:
    """One line: where onnxruntime_perf_test comes from."""
    from runtimes.onnxruntime_runtime import version

    tag = f"v{version()}" if version() else "the installed onnxruntime's version tag"
    return (f"it is not in the onnxruntime wheel: build ONNX Runtime {tag} from source "
            f"(./build.sh --config Release --build_shared_lib --parallel --skip_tests) and pass "
            f"build/Linux/Release/{TOOL} with --perf-test PATH or ${ENV_VAR}")


def find_perf_test(flag: str | Path | None = None, environ=None) -> Path:
    """The onnxruntime_perf_test to run: `flag`, else $ORT_PERF_TEST, else PATH. A path given
    that is not an executable file is an error rather than a reason to look further."""
    environ = os.environ if environ is None else environ
    for given, source in ((flag, "--perf-test"), (environ.get(ENV_VAR), f"${ENV_VAR}")):
        if given:
            path = Path(given).expanduser()
            if path.is_file() and os.access(path, os.X_OK):
                return path.resolve()
            raise CannotMeasure(f"{source} {str(given)!r} is not an executable file; "
                                f"{how_to_get()}")
    found = shutil.which(TOOL, path=environ.get("PATH", os.defpath))
    if found:
        return Path(found).resolve()
    raise CannotMeasure(f"{TOOL} not found (--perf-test PATH, ${ENV_VAR}, PATH); {how_to_get()}")


def parse_perf_test(output: str) -> PerfTestResult:
    """P50 and average latency (ms) and run count from onnxruntime_perf_test's console output."""
    p50 = average = None
    iterations = 0
    for line in output.splitlines():
        line = line.strip()
        if match := _P50.match(line):
            p50 = float(match.group(1)) * 1000.0
        elif match := _AVERAGE.match(line):
            average = float(match.group(1))
        elif match := _COUNT.match(line):
            iterations = int(match.group(1))
    if p50 is None:
        raise ValueError(f"{TOOL} output has no 'P50 Latency' line; was it run with -s "
                         f"(statistics)?")
    return PerfTestResult(p50, average, iterations)


def perf_test_flags(settings: SessionSettings) -> list[str]:
    """onnxruntime_perf_test options that give its session `settings` on the CPU provider."""
    import onnxruntime as ort

    # -o takes the GraphOptimizationLevel enum's number (0, 1, 2, 99), the same enum Python has.
    level = int(getattr(ort.GraphOptimizationLevel, settings.optimization_level))
    flags = ["-e", "cpu", "-x", str(settings.intra_op_threads), "-y",
             str(settings.inter_op_threads), "-o", str(level)]
    flags += [] if settings.sequential else ["-P"]
    flags += [] if settings.cpu_mem_arena else ["-A"]
    flags += [] if settings.mem_pattern else ["-M"]
    return flags


def flag_settings(flags: list[str]) -> dict[str, str]:
    """The settings `flags` give onnxruntime_perf_test, where absent flags leave its defaults
    (the level's default changed between versions, so an absent -o reads as unknown)."""
    value = {f: flags[i + 1] for i, f in enumerate(flags[:-1]) if f in ("-e", "-x", "-y", "-o")}
    return {"provider": value.get("-e", "cpu"),
            "intra_op_num_threads": value.get("-x", "0"),
            "inter_op_num_threads": value.get("-y", "0"),
            "execution_mode": "parallel" if "-P" in flags else "sequential",
            "graph_optimization_level": value.get("-o", "default"),
            "enable_cpu_mem_arena": str("-A" not in flags),
            "enable_mem_pattern": str("-M" not in flags)}


def applied_settings(session) -> dict[str, str]:
    """The same keys read back from our live OnnxRuntimeSession."""
    import onnxruntime as ort

    options = session.session_options()
    providers = list(session.providers)
    return {"provider": "cpu" if providers == ["CPUExecutionProvider"] else ",".join(providers),
            "intra_op_num_threads": str(options.intra_op_num_threads),
            "inter_op_num_threads": str(options.inter_op_num_threads),
            "execution_mode": ("sequential" if options.execution_mode
                               == ort.ExecutionMode.ORT_SEQUENTIAL else "parallel"),
            "graph_optimization_level": str(int(options.graph_optimization_level)),
            "enable_cpu_mem_arena": str(options.enable_cpu_mem_arena),
            "enable_mem_pattern": str(options.enable_mem_pattern)}


def write_test_case(model: Path, batch: np.ndarray, input_name: str, folder: Path) -> Path:
    """A folder perf_test reads: the model (linked, with its external data files) and
    test_data_set_0/input_0.pb holding `batch`. Returns the model path inside it."""
    import onnx
    from onnx import numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    linked = folder / "model.onnx"
    linked.symlink_to(model.resolve())
    # External data is looked up beside the path perf_test opens, i.e. inside `folder`.
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and not (folder / entry.value).exists():
                (folder / entry.value).parent.mkdir(parents=True, exist_ok=True)
                (folder / entry.value).symlink_to((model.parent / entry.value).resolve())
    data = folder / "test_data_set_0"
    data.mkdir()
    tensor = numpy_helper.from_array(np.ascontiguousarray(batch), name=input_name)
    (data / "input_0.pb").write_bytes(tensor.SerializeToString())
    return linked


def run_perf_test(exe: Path, case_model: Path, flags: list[str], seconds: int) -> PerfTestResult:
    """Run onnxruntime_perf_test for `seconds` with statistics (-s) and parse it."""
    result_file = case_model.parent / "perf_test_results.txt"  # positional in older versions
    cmd = [str(exe), *flags, "-m", "duration", "-t", str(seconds), "-s", str(case_model),
           str(result_file)]
    return parse_perf_test(run_tool(cmd, TOOL, seconds))


def _model_dims(model: Path) -> tuple[str, list[int | None], str]:
    """Name, dims (None where free) and printed shape of the model's first real input."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    first = next(i for i in graph.input if i.name not in weights)
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in first.type.tensor_type.shape.dim]
    shown = "[" + ",".join(str(d) if d is not None else "?" for d in dims) + "]"
    return first.name, dims, shown


def compare(args) -> Comparison:
    """Alternate onnxruntime_perf_test and our harness on `args.model` (.onnx); raises
    CannotMeasure."""
    import tempfile

    from runtimes import onnxruntime_runtime
    from runtimes.execution import open_model
    from runtimes.harness import measure

    reason = onnxruntime_runtime.unavailable("cpu")
    if reason:
        raise CannotMeasure(f"cannot check fidelity: {reason}")
    if args.precision:
        raise CannotMeasure("--precision applies to OpenVINO IR only; ONNX Runtime runs the "
                            "precision stored in the .onnx")
    exe = find_perf_test(args.perf_test)
    name, dims, shown = _model_dims(args.model)
    try:
        batch = input_batch(args.inputs, args.shape, dims, shown)
    except ValueError as exc:
        raise CannotMeasure(str(exc)) from None
    if len(batch.shape) != len(dims) or any(d not in (None, b) for d, b in zip(dims, batch.shape)):
        raise CannotMeasure(f"input of shape {batch.shape} does not fit the model input {shown}")
    loaded = open_model(args.model, "onnx", "onnxruntime", "cpu", args.threads)
    flags = perf_test_flags(session_settings(args.threads))
    seconds = max(1, round(args.seconds / max(1, args.rounds)))

    with tempfile.TemporaryDirectory() as tmp:
        case_model = write_test_case(args.model, batch, name, Path(tmp) / "case")

        def run_tool() -> float:
            try:
                return run_perf_test(exe, case_model, flags, seconds).p50_ms
            except (RuntimeError, ValueError) as exc:
                raise CannotMeasure(f"{TOOL} failed: {exc}") from None

        def run_harness() -> tuple[float, None]:
            ours = measure(loaded.session, batch, warmup=10, min_iterations=50,
                           min_seconds=seconds)
            return ours.p50_ms, None

        rounds = alternate(args.rounds, run_tool, run_harness)
    theirs, ours = flag_settings(flags), applied_settings(loaded.session)
    settings = {key: (theirs[key], ours[key]) for key in theirs}
    return Comparison(TOOL, str(args.model), tuple(batch.shape), args.threads, rounds, settings)
