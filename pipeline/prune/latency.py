"""Measured latency of pruning candidates: export to ONNX, load on the named runtime, time with
the project's one harness. Models compared with each other are measured in the same run, in
alternating rounds, so a background load slows them alike instead of favouring one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.preprocess import Preprocessing
from pipeline.config import Prune, RuntimeName
from runtimes import errors

_WARMUP, _MIN_ITERATIONS = 10, 50


class LatencyUnsupported(ValueError, errors.Unavailable):
    """The configured budget runtime cannot time a pruning candidate here."""


def export_candidate(model, pre: Preprocessing, out_dir: Path, name: str) -> Path:
    """Export an eval-mode copy of `model` (CPU, fp32, batch 1) to `<out_dir>/<name>.onnx`,
    checked against the torch model by the exporter."""
    import copy
    from exporters.onnx_export import export_torch_to_onnx
    from exporters.spec import ExportSpec
    cpu = copy.deepcopy(model).cpu().eval()
    return export_torch_to_onnx(cpu, Path(out_dir), ExportSpec(preprocessing=pre, name=name))


@dataclass(frozen=True)
class LatencyProbe:
    """Where and how candidates are timed: runtime, device, threads, batch, timed seconds per round."""

    runtime: RuntimeName = RuntimeName.onnxruntime
    device: str = "cpu"
    threads: int = 2
    batch: int = 1
    seconds: float = 0.3

    @classmethod
    def from_config(cls, p: Prune) -> "LatencyProbe":
        return cls(p.budget_runtime, p.budget_device, p.budget_threads, p.budget_batch, p.measure_seconds)

    @property
    def label(self) -> str:
        return f"{self.runtime.value}/{self.device}"

    def check(self) -> None:
        """Raise LatencyUnsupported naming the fix when this probe cannot run here."""
        import runtimes
        if self.runtime == RuntimeName.tensorrt:
            raise LatencyUnsupported(
                "prune.budget_runtime 'tensorrt' needs an engine built per candidate, which the "
                "prune stage does not do; use onnxruntime, openvino or torch for the budget")
        reason = runtimes.get(self.runtime.value).unavailable(self.device)
        if reason:
            raise LatencyUnsupported(f"prune.budget_runtime {self.label} is unavailable: {reason}")

    def load(self, onnx_path: Path, model=None):
        """A session for one candidate: the ONNX file, or the torch module for the torch runtime."""
        import runtimes
        module = runtimes.get(self.runtime.value)
        if self.runtime == RuntimeName.torch:
            import copy
            return module.load(copy.deepcopy(model).cpu().eval(), self.device, self.threads)
        return module.load(str(onnx_path), self.device, self.threads)

    def session_for(self, model, pre: Preprocessing, work: Path, name: str):
        """A session for `model`: the torch module itself for the torch runtime, else its ONNX
        export under `work` (an export costs seconds, so it is made only when a file is run)."""
        if self.runtime == RuntimeName.torch:
            return self.load(None, model)
        return self.load(export_candidate(model, pre, work, name), model)

    def batch_of(self, pre: Preprocessing) -> np.ndarray:
        """The timed input: a seeded normal batch (these networks' latency does not depend on
        pixel values)."""
        rng = np.random.default_rng(0)
        return rng.standard_normal(pre.input_shape(self.batch)).astype(np.float32)

    def measure_together(self, sessions: dict[str, object], pre: Preprocessing,
                         rounds: int) -> dict[str, dict]:
        """Time every session in `rounds` alternating rounds (see runtimes.harness.measure_alternating);
        report each model's median round (by p50) and every round's p50, with p50/p90 intervals
        over rounds. Every model after the first also gets its speed-up over the first, taken
        round by round (runtimes.stats.paired_ratio, the rule the benchmark's verdicts use), and
        a verdict: faster only when the interval excludes 1.

        Returns {name: LatencyStats.to_dict() + {"rounds_p50_ms", "p50_ci", "p90_ci", "vs_first"}}.
        """
        from runtimes.harness import measure_alternating, median_round
        from runtimes.stats import paired_ratio, round_interval
        runs = measure_alternating(sessions, self.batch_of(pre), rounds, warmup=_WARMUP,
                                   min_iterations=_MIN_ITERATIONS, min_seconds=self.seconds)
        per_round = {name: {"p50": [s.p50_ms for s in stats], "p90": [s.p90_ms for s in stats]}
                     for name, stats in runs.items()}
        first = next(iter(runs))
        out = {}
        for name, stats in runs.items():
            mine = per_round[name]
            out[name] = {**median_round(stats).to_dict(), "rounds_p50_ms": [round(v, 4) for v in mine["p50"]]}
            for stat in ("p50", "p90"):
                out[name][f"{stat}_ci"] = round_interval(mine[stat]).to_dict() if rounds > 1 else None
            if name != first and rounds > 1:
                vs = {"reference": first}
                for stat in ("p50", "p90"):
                    r = paired_ratio(per_round[first][stat], mine[stat])   # reference / this one: the speed-up
                    vs[stat] = {**r.to_dict(), "verdict": "faster" if r.low > 1 else
                                "slower" if r.high < 1 else "within noise"}
                out[name]["vs_first"] = vs
        return out

    def describe(self, rounds: int) -> str:
        return (f"{self.label}, {self.threads} threads, batch {self.batch}, fp32 ONNX; the unpruned "
                f"and pruned models measured in the same run, {rounds} alternating rounds of at least "
                f"{_MIN_ITERATIONS} runs and {self.seconds:g} s each after {_WARMUP} warm-up runs; "
                "per model the round with the median p50 is reported; all rounds' p50 are listed; "
                "intervals are 95% Student-t intervals over rounds, ratios taken round by round")
