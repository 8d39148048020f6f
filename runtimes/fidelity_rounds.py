"""What every fidelity check shares, whatever the other tool: alternating rounds, the median of
per-round ratios, the settings table and the verdict (runtimes.fidelity is the command).

The tools take turns for a few rounds, so a machine whose load changes during the check slows
both alike; the ratio is the median of the per-round ratios (ours / theirs). The verdict is 0
within 1 +/- tolerance, 1 outside it or when the two tools did not run with the same settings.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


class CannotMeasure(Exception):
    """A measurement could not be made (tool missing or failing, bad model or input): exit 2."""


@dataclass
class Round:
    """One run of the other tool followed by one harness run, seconds apart (medians in ms)."""

    tool_ms: float
    harness_ms: float
    inner_ms: float | None = None  # the runtime's own timer inside our runs, where it has one

    @property
    def ratio(self) -> float:
        return self.harness_ms / self.tool_ms


@dataclass
class Comparison:
    """Everything a fidelity check measured, ready to report."""

    tool: str                      # e.g. "benchmark_app", "onnxruntime_perf_test"
    model: str
    shape: tuple[int, ...]
    threads: int
    rounds: list[Round]
    # key -> (the other tool's value, ours); any difference makes the medians not comparable
    settings: dict[str, tuple[str, str]] = field(default_factory=dict)
    inner_label: str = ""          # what Round.inner_ms is, for the footnote


def run_tool(cmd: list[str], tool: str, seconds: int) -> str:
    """Run the other tool's command for about `seconds`; its stdout, or RuntimeError with the
    tail of its output when it fails or runs 300 s past that."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{tool} did not finish within {seconds + 300} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{tool} exited with {done.returncode}:\n{tail}")
    return done.stdout


def input_batch(inputs: Path | None, shape_arg: str | None, dims: list[int | None],
                shown: str) -> np.ndarray:
    """The batch-1 float32 input both tools run: the first image of `inputs` (.npy), else
    seeded noise of the model's shape `dims` (None: dynamic, filled from `shape_arg`)."""
    if inputs is not None:
        batch = np.load(inputs).astype(np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        return np.ascontiguousarray(batch[:1])
    if all(d is not None for d in dims):
        shape = tuple(int(d) for d in dims)
    elif shape_arg:
        shape = tuple(int(d) for d in shape_arg.split(","))
    else:
        raise ValueError(f"model input has dynamic shape {shown}; pass --shape 1,3,H,W "
                         f"or --inputs file.npy")
    # Real images normalised with mean/std look like this; the value range matters little
    # for convolution latency, denormal-free data is what matters.
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def alternate(rounds: int, run_tool: Callable[[], float],
              run_harness: Callable[[], tuple[float, float | None]]) -> list[Round]:
    """`rounds` rounds of the tool then our harness; `run_tool` returns its median (ms),
    `run_harness` ours and the runtime's inner median (or None)."""
    out = []
    for _ in range(max(1, rounds)):
        theirs = run_tool()
        ours, inner = run_harness()
        out.append(Round(theirs, ours, inner))
    return out


def median_ratio(rounds: list[Round]) -> float:
    """The median of the per-round ratios (ours / theirs)."""
    return float(np.median([r.ratio for r in rounds]))


def report(c: Comparison, tolerance: float) -> int:
    """Print the comparison and return the exit code (0 agree, 1 disagree or not comparable)."""
    has_inner = all(r.inner_ms is not None for r in c.rounds)
    width = max(14, len(c.tool) + 2)
    print(f"model: {c.model}  input: {tuple(c.shape)}  threads: {c.threads}  "
          f"rounds: {len(c.rounds)}")
    print(f"{'median latency ms':20}{c.tool:>{width}}{'harness':>10}"
          + (f"{'inner':>10}" if has_inner else "") + f"{'ratio':>8}")
    rows = [(f"round {i}", r.tool_ms, r.harness_ms, r.inner_ms, r.ratio)
            for i, r in enumerate(c.rounds, 1)]
    ratio = median_ratio(c.rounds)
    rows.append(("median of rounds", float(np.median([r.tool_ms for r in c.rounds])),
                 float(np.median([r.harness_ms for r in c.rounds])),
                 float(np.median([r.inner_ms for r in c.rounds])) if has_inner else None, ratio))
    for label, theirs, ours, inner, r in rows:
        print(f"{label:20}{theirs:>{width}.4f}{ours:>10.4f}"
              + (f"{inner:>10.4f}" if has_inner else "") + f"{r:>8.3f}")
    if has_inner:
        print(f"(inner = {c.inner_label} inside our runs, i.e. without the Python call)")
    mismatched = []
    for key, (theirs, mine) in c.settings.items():
        print(f"{key:28}{str(theirs):>12}{str(mine):>12}")
        if theirs != mine:
            mismatched.append(key)
    print(f"ratio (ours / {c.tool} median): {ratio:.3f}  tolerance: +/-{tolerance:.0%}")
    if mismatched:
        print(f"settings differ: {', '.join(mismatched)}; the medians are not comparable",
              file=sys.stderr)
        return 1
    if abs(ratio - 1.0) > tolerance:
        _explain(c, ratio, tolerance, has_inner)
        return 1
    return 0


def _explain(c: Comparison, ratio: float, tolerance: float, has_inner: bool) -> None:
    """Say on stderr by how much the medians disagree and the likeliest reason."""
    print(f"medians disagree by {abs(ratio - 1):.1%} (> {tolerance:.0%})", file=sys.stderr)
    if has_inner:
        inner_ratio = float(np.median([r.inner_ms / r.tool_ms for r in c.rounds]))
        if abs(inner_ratio - 1.0) <= tolerance:
            ours = float(np.median([r.harness_ms for r in c.rounds]))
            inner = float(np.median([r.inner_ms for r in c.rounds]))
            print(f"the runtime's own timers agree (ratio {inner_ratio:.3f}); the gap is the "
                  f"Python call around it (about {(ours - inner) * 1e3:.0f} us per run), "
                  f"large next to this model's latency", file=sys.stderr)
            return
    print("the tools saw different latencies in the same round: if the rounds vary a lot, "
          "other processes share these cores; rerun on an idle machine or with more --rounds; "
          "for a model of tens of microseconds the Python call around each run alone can "
          "exceed the tolerance", file=sys.stderr)
