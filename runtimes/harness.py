"""The one latency harness every runtime is measured with.

Warm-up runs first (lazy allocation, kernel selection, caches), then timed runs until both a
minimum count and a minimum amount of timed inference are reached. Each run is timed with
`time.perf_counter_ns` around `session.run(batch)` + `session.sync()`, so the number includes
what an application pays per call: input copy, inference, logits back on the host. On a GPU,
CUDA events recorded on the session's stream can time the device timeline instead.
"""
from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from runtimes.base import Session


@dataclass
class LatencyStats:
    """Latency statistics of one (artifact, runtime, device, threads, batch) measurement."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    throughput_ips: float       # images per second = batch size / mean latency
    iterations: int
    total_s: float              # sum of the timed runs
    batch_size: int
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    timer: str = "perf_counter_ns"
    methodology: str = ""
    started: float | None = None    # wall-clock time (time.time()) of the first and last timed run
    finished: float | None = None
    # Every timed run's duration in order (ns); kept out of to_dict, see sample_record().
    samples_ns: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """The statistics, without the per-run samples."""
        d = asdict(self)
        d.pop("samples_ns")
        return d

    def sample_record(self, limit: int | None = None) -> dict:
        """The per-run samples for a results file: durations in us in measured order (a bounded
        time-ordered subset, see runtimes.stats.keep_samples), how many runs there were, when."""
        from runtimes.stats import SAMPLE_LIMIT, keep_samples
        return {"samples_us": keep_samples(self.samples_ns, limit or SAMPLE_LIMIT),
                "samples_total": len(self.samples_ns), "started": self.started,
                "finished": self.finished}


def summarize(durations_ns, batch_size: int) -> LatencyStats:
    """Statistics of per-run durations (nanoseconds) for a batch of `batch_size` images.

    Percentiles use numpy's linear interpolation; stdev is the sample standard deviation
    (ddof=1, 0 for a single run).
    """
    ns = np.asarray(durations_ns, dtype=np.float64)
    if ns.ndim != 1 or ns.size == 0:
        raise ValueError(f"summarize needs a non-empty 1-D list of durations, got shape {ns.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1")
    ms = ns / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])  # linear, numpy's default (no method= before 1.22)
    mean = float(ms.mean())
    return LatencyStats(
        p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), mean_ms=mean,
        stdev_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min_ms=float(ms.min()), max_ms=float(ms.max()),
        throughput_ips=batch_size / (mean / 1e3) if mean > 0 else float("inf"),
        iterations=int(ms.size), total_s=float(ns.sum() / 1e9), batch_size=int(batch_size),
    )


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where it cannot be read)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    except (ImportError, OSError):
        pass
    try:
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20
    except Exception:
        return None


def _peak_gpu_mb() -> float | None:
    torch = sys.modules.get("torch")  # only report when the session already uses torch CUDA
    if torch is None or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def _event_timer(session: Session):
    """(start, stop) callables that time the device timeline with CUDA events."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError("measure(cuda_events=True) needs a CUDA device, and torch sees none; "
                         "use cuda_events=False on CPU")
    stream = getattr(session, "cuda_stream", None) or torch.cuda.current_stream()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def start() -> None:
        begin.record(stream)

    def stop() -> int:
        end.record(stream)
        end.synchronize()
        return int(begin.elapsed_time(end) * 1e6)

    return start, stop


def measure(session: Session, batch: np.ndarray, warmup: int = 10, min_iterations: int = 50,
            min_seconds: float = 2.0, cuda_events: bool = False) -> LatencyStats:
    """Measure `session` on `batch`: `warmup` untimed runs, then timed runs until at least
    `min_iterations` runs AND `min_seconds` of timed inference.

    With `cuda_events`, each run is also bracketed by CUDA events on the session's stream
    (`session.cuda_stream` when it has one) and the statistics come from the device timeline;
    the wall clock still decides when `min_seconds` is reached.
    """
    if min_iterations < 1 or min_seconds < 0 or warmup < 0:
        raise ValueError(f"measure needs warmup >= 0, min_iterations >= 1, min_seconds >= 0; got "
                         f"{warmup}, {min_iterations}, {min_seconds}")
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    for _ in range(warmup):
        session.run(batch)
        session.sync()

    start_event, stop_event = _event_timer(session) if cuda_events else (None, None)
    wall: list[int] = []
    device: list[int] = []
    min_ns, timed_ns = int(min_seconds * 1e9), 0
    # The collector would otherwise pause a random run; timeit disables it for the same reason.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    started = time.time()
    try:
        while len(wall) < min_iterations or timed_ns < min_ns:
            if start_event:
                start_event()
            t0 = time.perf_counter_ns()
            session.run(batch)
            session.sync()
            t1 = time.perf_counter_ns()
            if stop_event:
                device.append(stop_event())
            wall.append(t1 - t0)
            timed_ns += t1 - t0
    finally:
        if gc_was_enabled:
            gc.enable()

    finished = time.time()
    stats = summarize(device if cuda_events else wall, batch.shape[0])
    stats.samples_ns = device if cuda_events else wall
    stats.started, stats.finished = started, finished
    stats.total_s = timed_ns / 1e9
    stats.peak_rss_mb = peak_rss_mb()
    stats.peak_gpu_mb = _peak_gpu_mb()
    stats.timer = "cuda_events" if cuda_events else "perf_counter_ns"
    stats.methodology = _methodology(warmup, min_iterations, min_seconds, stats)
    return stats


def measure_alternating(sessions: dict[str, Session], batch: np.ndarray, rounds: int,
                        **measure_options) -> dict[str, list[LatencyStats]]:
    """Measure every session in `rounds` short alternating rounds (A B C, C B A, ...).

    Many short rounds rather than one long block per model: when other processes load the
    machine on and off, every model then samples the same mixture of quiet and busy moments, so
    ratios between them compare like with like. Returns each session's rounds, in order.
    """
    if rounds < 1:
        raise ValueError(f"measure_alternating needs rounds >= 1, got {rounds}")
    names = list(sessions)
    runs: dict[str, list[LatencyStats]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(measure(sessions[name], batch, **measure_options))
    return runs


def pooled_samples(stats: list[LatencyStats]) -> list[int]:
    """Every round's per-run durations (ns), concatenated in round order: one sample of the
    model across the whole alternating measurement, for intervals."""
    return [d for s in stats for d in s.samples_ns]


def median_round(stats: list[LatencyStats]) -> LatencyStats:
    """The round whose p50 is the (lower) median of all rounds' p50."""
    p50s = [s.p50_ms for s in stats]
    return stats[p50s.index(statistics.median_low(p50s))]


def _methodology(warmup: int, min_iterations: int, min_seconds: float, s: LatencyStats) -> str:
    if s.timer == "cuda_events":
        timer = ("CUDA events recorded on the session's stream around session.run() (device "
                 "timeline: host->device copy, inference, device->host copy); the wall clock "
                 "(time.perf_counter_ns around run()+sync()) decides the minimum duration")
    else:
        timer = ("time.perf_counter_ns around session.run() + session.sync() (input copy, "
                 "inference, logits back on the host; sync() waits for device work)")
    return (f"{warmup} warm-up runs, then timed runs until at least {min_iterations} runs and "
            f"{min_seconds:g} s of timed inference ({s.iterations} runs, {s.total_s:.2f} s); "
            f"batch {s.batch_size}, same input every run; each run timed with {timer}; "
            f"garbage collector paused while timing; p50/p90/p99 by numpy linear interpolation, "
            f"stdev with ddof=1; throughput = batch / mean latency; peak RSS = process peak "
            f"from getrusage (includes loading).")
