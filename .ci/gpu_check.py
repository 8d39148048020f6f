"""One command for a lent NVIDIA machine: every CUDA path of the pipeline, and a summary of it.

    python3 .ci/gpu_check.py --out DIR          (or `make gpu-check OUT=DIR`)

On a machine where torch sees a CUDA device it
  1. installs the wheels of .ci/gpu_wheels.txt from .gpu-wheels/ into a temporary folder (pip,
     no index, no dependencies) and puts that folder and this source tree on PYTHONPATH;
  2. runs every stage of tests/configs/gpu.yaml (run.device cuda) into a temporary store, then
     the benchmark again for torch.compile alone (PASSES);
  3. runs the tests marked `gpu`;
  4. writes DIR/summary.json: the GPU, driver, torch and CUDA versions; each CUDA benchmark row's
     p50, p90 and top-1; each stage's seconds beside the CPU record's (.ci/gpu_check_cpu.json);
     every failure with its lines. Beside it: pipeline.log, torch-compile.log, gpu-tests.log,
     gpu-tests.xml, and the run's results.json and report.md.
Each step is bounded so the whole check ends within --budget seconds (450: inside 8 minutes with
the machine's start), and no process it started is left running.

Exit codes: 0 every step passed; 1 a step failed (summary.json lists what); 2 usage;
8 no CUDA device here, or the wheels are not in place (one line says which, and the fix);
130 interrupted (SIGINT or SIGTERM), its processes stopped.

    python3 .ci/gpu_check.py --record-cpu .ci/gpu_check_cpu.json
runs the same stages on this machine's CPU and writes their times: the record the GPU's stage
times are compared with. It needs edgeship's dependencies installed (make setup), not a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_summary  # noqa: E402
import gpu_wheels  # noqa: E402
from gpu_proc import TOKEN_VAR, new_token, run_bounded, sweep  # noqa: E402

ROOT = gpu_summary.ROOT
CONFIG = ROOT / "tests" / "configs" / "gpu.yaml"
RECORD = ROOT / ".ci" / "gpu_check_cpu.json"
BUDGET_S = 450
SUMMARY_RESERVE_S = 15   # kept for the sweep, the summary and the cleanup
# The `edgeship run` passes, in order: (step, log, stage and settings, seconds kept for the steps
# after it). First every stage; then the benchmark again with torch.compile alone at batch 1,
# since it compiles each model once per device and input shape, tens of seconds each: a slow
# compiler then costs its own rows, not the others'.
PASSES = (
    ("pipeline", gpu_summary.PIPELINE_LOG, (), 180),
    ("torch_compile", "torch-compile.log",
     ("benchmark", "benchmark.runtimes=[torch_compile]", "benchmark.batch_sizes=[1]"), 90),
)
PROBE_TIMEOUT_S = 90     # CUDA's start on a sick driver can hang
UNAVAILABLE = 8          # runtimes/errors.py: a backend, runtime or device is unavailable here
# On the CPU the same stages, with the GPU's settings moved to the CPU, and without what the GPU
# image lacks, so both do the same work (no OpenVINO IR to export, convert or measure).
CPU_SETTINGS = ("run.device=cpu", "prune.budget_device=cpu", "benchmark.target=cpu")
NOT_ON_GPU = ("openvino", "nncf")


def probe_machine(token: str) -> dict:
    """.ci/gpu_env.py's record, or a reason when it did not answer in time."""
    env = {**os.environ, TOKEN_VAR: token}
    try:
        done = subprocess.run([sys.executable, str(ROOT / ".ci" / "gpu_env.py")], capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT_S, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"reason": f"torch did not answer within {PROBE_TIMEOUT_S} s while CUDA started "
                          "(a hung driver?); check nvidia-smi"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {"reason": f"the machine probe .ci/gpu_env.py exited {done.returncode}: {last}"}
    return json.loads(done.stdout)


def gpu_test_files() -> list[str]:
    """The test files that mark a test `gpu` (pyproject's marker for "needs a CUDA device")."""
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
            if "pytest.mark.gpu" in p.read_text()]


def child_env(site: Path | None, token: str, work: Path) -> dict[str, str]:
    paths = ([str(site)] if site else []) + [str(ROOT)] + \
        ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg", "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"), TOKEN_VAR: token}


def pipeline_cmd(config: Path, store: Path, work: Path, stage_and_sets: tuple[str, ...] = (),
                 extra: tuple[str, ...] = ()) -> list[str]:
    """`edgeship run [stage]` on `config` into `store`; `stage_and_sets` is a pass of PASSES."""
    stage = [stage_and_sets[0]] if stage_and_sets else []
    sets = [f"run.store={store}", f"check.junit={work / 'check-junit.xml'}", *stage_and_sets[1:], *extra]
    return [sys.executable, "-m", "pipeline", "run", *stage, "-c", str(config),
            *[arg for s in sets for arg in ("--set", s)]]


def run_passes(config: Path, store: Path, work: Path, env: dict, logs: Path, left,
               extra: tuple[str, ...] = ()) -> dict[str, dict]:
    """Each pass of PASSES, bounded by what `left()` leaves after its reserve; a pass after the
    first runs only once the store holds an export to measure."""
    steps = {}
    for i, (name, log, stage_and_sets, reserve) in enumerate(PASSES):
        if i and not any((store / "export").glob("*/manifest.json")):
            steps[name] = {"rc": None, "skipped": "the pipeline stopped before export"}
            continue
        steps[name] = run_bounded(name, pipeline_cmd(config, store, work, stage_and_sets, extra),
                                  left() - reserve, logs / log, env, ROOT).record()
    return steps


def check_gpu(args) -> int:
    t0, token = time.monotonic(), new_token()
    left = lambda: args.budget - (time.monotonic() - t0)  # noqa: E731
    machine = probe_machine(token)
    if machine.get("reason"):
        sweep(token)
        reason = machine["reason"]    # runtimes.cuda_staging's words, mostly "no CUDA device: ..."
        said = reason if reason.startswith("no CUDA device") else f"no CUDA device found: {reason}"
        print(f"gpu_check: {said}; run it on a machine with an NVIDIA GPU (README: Checking the GPU "
              "paths)", file=sys.stderr)
        return UNAVAILABLE
    try:
        found = gpu_wheels.check(args.wheels)
    except gpu_wheels.WheelError as exc:
        print(f"gpu_check: {exc}; then carry {args.wheels.name} with the working tree", file=sys.stderr)
        return UNAVAILABLE
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in (*[log for _, log, _, _ in PASSES], gpu_summary.TESTS_LOG, gpu_summary.TESTS_XML,
                 "summary.json", "results.json", "report.md"):
        (out / name).unlink(missing_ok=True)     # nothing from an earlier check is read as this one's
    work = Path(tempfile.mkdtemp(prefix="edgeship-gpu-check-"))
    steps, failures, plan = {}, [], {}
    try:
        started = time.monotonic()
        try:
            plan = gpu_wheels.install(found, work / "site", timeout=min(180, left()))
            steps["install"] = {"rc": 0, "seconds": round(time.monotonic() - started, 1)}
        except (gpu_wheels.WheelError, subprocess.TimeoutExpired) as exc:
            steps["install"] = {"rc": 1, "seconds": round(time.monotonic() - started, 1)}
            failures.append({"where": "install", "what": "pip install --target", "lines": [str(exc)]})
        if not failures:
            env = child_env(work / "site", token, work)
            steps.update(run_passes(args.config, work / "runs", work, env, out, left))
            steps[gpu_summary.TESTS_STEP] = run_bounded(
                "gpu tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                              "--continue-on-collection-errors", f"--junitxml={out / gpu_summary.TESTS_XML}",
                              *gpu_test_files()],
                left() - SUMMARY_RESERVE_S, out / gpu_summary.TESTS_LOG, env, ROOT).record()
        killed = sweep(token)
        record = gpu_summary.read_record(args.cpu_record)
        summary = gpu_summary.build(
            machine, steps, work / "runs", out, record, args.cpu_record, failures,
            config=str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
            wheels=plan, left_running_killed=killed, seconds=round(time.monotonic() - t0, 1))
        _keep(work / "runs", out)
        path = gpu_summary.write(summary, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print(summary, path)
    return 0 if not summary["failures"] else 1


def _keep(store: Path, out: Path) -> None:
    """The first benchmark's results.json and the report's report.md, beside the summary."""
    for stage, name in (("benchmark", "results.json"), ("report", "report.md")):
        path = next((Path(m["_dir"]) / name for _, m in gpu_summary.entries(store)
                     if m.get("stage") == stage), None)
        if path and path.is_file():
            shutil.copyfile(path, out / name)


def _print(summary: dict, path: Path) -> None:
    gpus = summary["machine"].get("gpus") or [{}]
    print(f"gpu_check: {gpus[0].get('name')}, driver {summary['machine'].get('driver')}, torch "
          f"{summary['machine'].get('torch')} (CUDA {summary['machine'].get('torch_cuda')})")
    for r in summary["cuda_rows"]:
        if r["status"] == "ok":
            print(f"  {r['id']:<44} p50 {r['p50_ms']:8.3f} ms  p90 {r['p90_ms']:8.3f} ms  "
                  f"top-1 {r['accuracy']:6.2f}%")
        else:
            print(f"  {r['id']:<44} {r['status']}: {str(r['reason']).splitlines()[0][:100]}")
    for s in summary["stages"]:
        cpu = f"  CPU record {s['cpu_s']:.1f} s ({s['cpu_over_cuda']}x)" if s["cpu_s"] else ""
        print(f"  {s['stage']:<10} {s['cuda_s']:7.1f} s{cpu}")
    for f in summary["failures"]:
        print(f"  FAILED {f['where']}: {f['what']}: {(f['lines'] or [''])[-1][:160]}")
    print(f"gpu_check: {len(summary['failures'])} failure(s); {path}")


def hiding(folder: Path, modules: tuple[str, ...]) -> Path:
    """A folder whose sitecustomize makes `modules` unimportable in a Python that has it on
    PYTHONPATH, as if not installed (importing one raises ModuleNotFoundError)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({modules!r}))\n")
    return folder


def record_cpu(args) -> int:
    """Run the check's passes on the CPU with this interpreter and write each stage's time."""
    work, token = Path(tempfile.mkdtemp(prefix="edgeship-cpu-record-")), new_token()
    load_before = os.getloadavg()[0]    # a busy shared runner slows every stage: say how busy
    t0 = time.monotonic()
    try:
        steps = run_passes(args.config, work / "runs", work,
                           child_env(hiding(work / "hide", NOT_ON_GPU), token, work), work,
                           lambda: args.record_timeout - (time.monotonic() - t0), CPU_SETTINGS)
        sweep(token)
        for name, step in steps.items():
            failure = gpu_summary.pipeline_failure(work / step["log"], step["rc"], name) if "log" in step else \
                {"what": "skipped", "lines": [step.get("skipped", "")]}
            if failure:
                print(f"gpu_check: the CPU run's {name} pass failed ({failure['what']}): "
                      f"{(failure['lines'] or [''])[-1]}", file=sys.stderr)
                return 1
        times = gpu_summary.stage_times(gpu_summary.entries(work / "runs"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"recorded": time.strftime("%Y-%m-%d"), "machine": _cpu_name(),
              "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "config": str(args.config.relative_to(ROOT)), "settings": list(CPU_SETTINGS),
              "hidden": list(NOT_ON_GPU), "stages": times}
    args.record_cpu.write_text(json.dumps(record, indent=2) + "\n")
    print(f"gpu_check: CPU times of {len(times)} stages written to {args.record_cpu}")
    return 0


def _cpu_name() -> str:
    """The CPU's model name and the cores this process may use."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.machine())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} usable cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0],
                                     epilog="exit codes: 0 passed, 1 a step failed (see summary.json), "
                                     "2 usage, 8 no CUDA device or no wheels, 130 interrupted")
    parser.add_argument("--out", type=Path, help="folder for summary.json and the logs (created)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--wheels", type=Path, default=gpu_wheels.FOLDER)
    parser.add_argument("--cpu-record", type=Path, default=RECORD, help="CPU stage times to compare with")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--record-cpu", type=Path, metavar="PATH",
                        help="instead: run the stages on this CPU and write their times to PATH")
    parser.add_argument("--record-timeout", type=float, default=3600, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # the children run in the tree's root; paths given relative to where this was started stay right
    for name in ("config", "out", "wheels", "cpu_record", "record_cpu"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    if not args.record_cpu and args.out is None:
        parser.error("--out DIR is required: the folder summary.json is written to")
    signal.signal(signal.SIGTERM, _terminated)   # so a stopped check still stops its children
    try:
        return record_cpu(args) if args.record_cpu else check_gpu(args)
    except KeyboardInterrupt:
        print("gpu_check: interrupted; the processes it started were stopped", file=sys.stderr)
        return 130


def _terminated(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
