"""The benchmark harness: statistics on known data, and the stopping rules on a real session."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtimes import onnxruntime_runtime
from runtimes.harness import (LatencyStats, measure, measure_alternating, median_round, peak_rss_mb,
                              summarize)


def test_summarize_one_to_hundred_ms():
    durations_ns = [ms * 1_000_000 for ms in range(1, 101)]  # 1, 2, ..., 100 ms
    stats = summarize(durations_ns, batch_size=4)
    # Linear interpolation at rank q/100 * (n - 1): 49.5 -> 50.5, 89.1 -> 90.1, 98.01 -> 99.01.
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5)
    # Sample stdev of 1..n is sqrt(n (n + 1) / 12) = sqrt(841.67).
    assert stats.stdev_ms == pytest.approx(math.sqrt(100 * 101 / 12))
    assert (stats.min_ms, stats.max_ms) == (1.0, 100.0)
    assert stats.throughput_ips == pytest.approx(4 / 0.0505)
    assert stats.total_s == pytest.approx(5.05)
    assert (stats.iterations, stats.batch_size) == (100, 4)


def test_summarize_unsorted_and_single():
    stats = summarize([3_000_000, 1_000_000, 2_000_000, 10_000_000], batch_size=1)
    # Sorted 1, 2, 3, 10 ms: p50 at rank 1.5 -> 2.5; p90 at rank 2.7 -> 3 + 0.7 * 7 = 7.9.
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.p90_ms == pytest.approx(7.9)
    assert stats.mean_ms == pytest.approx(4.0)
    one = summarize([2_500_000], batch_size=1)
    assert (one.p50_ms, one.p99_ms, one.stdev_ms) == (2.5, 2.5, 0.0)
    assert one.throughput_ips == pytest.approx(400.0)


def test_summarize_rejects_nonsense():
    with pytest.raises(ValueError, match="non-empty"):
        summarize([], batch_size=1)
    with pytest.raises(ValueError, match="batch_size 0"):
        summarize([1], batch_size=0)


@pytest.fixture(scope="module")
def tiny_session():
    """A real ONNX Runtime session: conv 3->4 (3x3), global average pool, flatten, 4->5 gemm."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "fc_w": rng.standard_normal((5, 4)).astype(np.float32),
        "fc_b": rng.standard_normal(5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return onnxruntime_runtime.load(model, "cpu", threads=1)


ROOT = Path(__file__).resolve().parents[1]


class CountingSession:
    """Passes calls through to a real session and counts them."""

    def __init__(self, inner) -> None:
        self.inner, self.runs, self.syncs = inner, 0, 0

    def run(self, batch):
        self.runs += 1
        return self.inner.run(batch)

    def sync(self):
        self.syncs += 1
        self.inner.sync()


def test_measure_stops_at_min_iterations_when_time_is_met(tiny_session):
    session = CountingSession(tiny_session)
    batch = np.zeros((2, 3, 16, 16), np.float32)
    stats = measure(session, batch, warmup=4, min_iterations=30, min_seconds=0.0)
    assert stats.iterations == 30
    assert (session.runs, session.syncs) == (34, 34)  # warm-up + timed, each followed by sync
    assert stats.batch_size == 2
    assert stats.throughput_ips == pytest.approx(2 / (stats.mean_ms / 1e3))


def test_measure_runs_until_min_seconds(tiny_session):
    batch = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    stats = measure(tiny_session, batch, warmup=2, min_iterations=5, min_seconds=0.4)
    assert stats.total_s >= 0.4
    assert stats.iterations > 5
    # The loop stops at the first run that crosses the limit: one run more would be too many.
    assert stats.total_s - stats.max_ms / 1e3 < 0.4
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.p50_ms > 0
    assert stats.peak_rss_mb == pytest.approx(peak_rss_mb(), rel=0.1) and stats.peak_rss_mb > 10
    assert stats.timer == "perf_counter_ns"
    for phrase in ("2 warm-up runs", "at least 5 runs and 0.4 s", "perf_counter_ns",
                   "session.sync()", "linear interpolation"):
        assert phrase in stats.methodology


def test_to_dict_is_flat_and_complete(tiny_session):
    stats = measure(tiny_session, np.zeros((1, 3, 16, 16), np.float32), warmup=0,
                    min_iterations=3, min_seconds=0.0)
    d = stats.to_dict()
    assert set(d) == set(LatencyStats.__dataclass_fields__) - {"samples_ns"}
    assert all(isinstance(v, (int, float, str, type(None))) for v in d.values())


def test_samples_are_kept_in_order_and_bounded(tiny_session):
    stats = measure(tiny_session, np.zeros((1, 3, 16, 16), np.float32), warmup=0,
                    min_iterations=30, min_seconds=0.0)
    assert len(stats.samples_ns) == stats.iterations == 30
    assert stats.p50_ms == pytest.approx(float(np.percentile(np.array(stats.samples_ns) / 1e6, 50)))
    record = stats.sample_record()
    assert record["samples_total"] == 30 and len(record["samples_us"]) == 30
    assert record["samples_us"][0] == pytest.approx(stats.samples_ns[0] / 1e3, abs=0.5)
    assert stats.started <= record["finished"] and record["finished"] == stats.finished
    bounded = stats.sample_record(limit=10)
    assert len(bounded["samples_us"]) == 10 and bounded["samples_total"] == 30


def test_keep_samples_rounds_to_microseconds_and_keeps_order():
    from runtimes.stats import keep_samples
    assert keep_samples([1_234_567, 5_432, 999_499]) == [1235, 5.432, 999]
    rising = np.arange(5000) * 1000 + 20_000        # distinct, increasing: order is visible
    kept = keep_samples(rising, limit=200)
    assert len(kept) == 200 and kept == sorted(kept) and len(set(kept)) == 200
    assert kept == keep_samples(rising, limit=200)  # seeded
    assert kept[0] < 2000 and kept[-1] > 4000       # spread over the whole run, not its start


def test_measure_rejects_bad_limits(tiny_session):
    with pytest.raises(ValueError, match="min_iterations >= 1"):
        measure(tiny_session, np.zeros((1, 3, 16, 16), np.float32), min_iterations=0)


def test_cuda_events_need_a_gpu(tiny_session):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the GPU tests cover cuda_events")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        measure(tiny_session, np.zeros((1, 3, 16, 16), np.float32), warmup=0,
                min_iterations=1, min_seconds=0.0, cuda_events=True)


class OrderedSession(CountingSession):
    """A counting session that also writes its name into a shared log on every run."""

    def __init__(self, inner, name, log) -> None:
        super().__init__(inner)
        self.name, self.log = name, log

    def run(self, batch):
        if not self.log or self.log[-1] != self.name:
            self.log.append(self.name)
        return super().run(batch)


def test_measure_alternating_reverses_the_order_every_round(tiny_session):
    log: list[str] = []
    sessions = {n: OrderedSession(tiny_session, n, log) for n in ("a", "b", "c")}
    batch = np.zeros((1, 3, 16, 16), np.float32)
    runs = measure_alternating(sessions, batch, rounds=3, warmup=1, min_iterations=5, min_seconds=0.0)
    assert log == ["a", "b", "c", "b", "a", "b", "c"]  # a b c | c b a | a b c, repeats merged
    assert {n: len(r) for n, r in runs.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(s.iterations == 5 for r in runs.values() for s in r)
    with pytest.raises(ValueError, match="rounds >= 1"):
        measure_alternating(sessions, batch, rounds=0)


def test_median_round_is_the_lower_median_by_p50():
    rounds = [summarize([ms * 1_000_000], 1) for ms in (5, 1, 9, 3)]
    assert median_round(rounds).p50_ms == 3.0


def _conv_onnx(path, batch_dim):
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 4, 16, 16])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _side_by_side(*args):
    return subprocess.run([sys.executable, "-m", "runtimes.side_by_side", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_side_by_side_command_measures_every_model_and_thread_count(tmp_path):
    a, b = _conv_onnx(tmp_path / "a.onnx", 1), _conv_onnx(tmp_path / "b.onnx", 1)
    done = _side_by_side(a, b, "--threads", 1, 2, "--rounds", 3, "--seconds", 0.01)
    assert done.returncode == 0, done.stderr
    assert "input (1, 3, 16, 16), 3 alternating rounds" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.rstrip().split()[0].endswith(".onnx")]
    assert [(r.split()[0][-6:], r.split()[1]) for r in rows] == [
        ("a.onnx", "1"), ("a.onnx", "2"), ("b.onnx", "1"), ("b.onnx", "2")]
    assert "1 (reference)" in rows[0]
    for row in rows[1:]:    # speed-up at p50 and p90 over the first row, with interval and verdict
        assert len(re.findall(r"\d+\.\d\dx \[\d+\.\d\d-\d+\.\d\d\] (?:faster|slower|within noise)", row)) == 2
    assert done.stdout.count("rounds p50:") == 4


def _conv_chain(path, depth):
    """`depth` 3x3 convolutions of 8 channels on a 1x3x32x32 input: work grows with depth."""
    rng = np.random.default_rng(2)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        cin = 3 if i == 0 else 8
        inits.append(numpy_helper.from_array(rng.standard_normal((8, cin, 3, 3)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"y{i}"], pads=[1, 1, 1, 1]))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 8, 32, 32])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_busy_host_widens_verdicts_but_never_turns_them(tmp_path):
    """Two CPU burners (bounded to 60 s) load every core while side_by_side compares a model with
    itself and with one doing 6x the work: the slower model is never called faster."""
    a, same, slow = (_conv_chain(tmp_path / f"{n}.onnx", d) for n, d in (("a", 2), ("same", 2), ("slow", 12)))
    burn = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    try:
        done = _side_by_side(a, same, slow, "--rounds", 6, "--seconds", 0.05, "--threads", 1)
    finally:
        for b in burners:
            b.kill()
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0].rsplit("/", 1)[-1]: line for line in done.stdout.splitlines()
            if line.split() and line.split()[0].endswith(".onnx")}
    print(rows["same.onnx"], rows["slow.onnx"], sep="\n")
    assert "faster" not in rows["slow.onnx"]


def test_side_by_side_names_what_is_wrong(tmp_path):
    dynamic = _conv_onnx(tmp_path / "dyn.onnx", "n")
    done = _side_by_side(dynamic)
    assert done.returncode == 2 and "dynamic input shape" in done.stderr and "--shape" in done.stderr
    assert _side_by_side(dynamic, "--shape", "1,3,16,16", "--rounds", 1, "--seconds", 0).returncode == 0
    missing = _side_by_side(tmp_path / "nope.onnx")
    assert missing.returncode == 2 and "nope.onnx" in missing.stderr
