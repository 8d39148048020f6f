"""Latency of model files side by side, in one run, with the project's harness.

    python -m runtimes.side_by_side A.onnx [B.onnx ...] [--runtime onnxruntime] [--device cpu]
                                    [--threads 1 2] [--rounds 5] [--seconds 0.3]
                                    [--shape 1,3,H,W]

Every (model, threads) pair gets its own session; all are measured in alternating rounds, so a
machine whose load changes during the run slows them alike. Prints each pair's median round
(p50, p90) and its speed-up over the first pair at p50 and p90, taken round by round with a 95%
interval over rounds and a verdict (the rule the benchmark report uses, runtimes.stats.paired_ratio):
the way to check a speed-up claim ("pruned is 1.3x faster", "two threads beat one") on a noisy
machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def input_shape(path: Path, shape_arg: str | None) -> tuple[int, ...]:
    """The batch input shape: --shape when given, else the model file's static input shape."""
    from runtimes import formats
    if shape_arg:
        return tuple(int(d) for d in shape_arg.split(","))
    inputs, _ = formats.for_file(path).io_signature(path)
    shape = tuple(-1 if d is None else int(d) for d in inputs[0]["shape"])
    if -1 in shape:
        raise ValueError(f"{path.name} has a dynamic input shape {shape}; pass --shape 1,3,H,W")
    return shape


def _speedup(first: list, stats: list, stat: str) -> str:
    """first / this at `stat`, round by round, with its interval and verdict."""
    from runtimes.stats import paired_ratio
    if first is stats:
        return "1 (reference)"
    if len(stats) < 2:
        return "(needs 2 rounds)"
    r = paired_ratio([getattr(s, stat) for s in first], [getattr(s, stat) for s in stats])
    word = "faster" if r.low > 1 else "slower" if r.high < 1 else "within noise"
    return f"{r.estimate:.2f}x [{r.low:.2f}-{r.high:.2f}] {word}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtimes.side_by_side", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="model files (.onnx, .xml, .engine)")
    p.add_argument("--runtime", default="onnxruntime",
                   help="a runtime that loads model files (see `edgeship runtimes`)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts to compare")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5, at least 2)")
    p.add_argument("--seconds", type=float, default=0.3, help="timed seconds per model per round")
    p.add_argument("--shape", help="input shape, e.g. 1,3,224,224 (default: from the first model)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import runtimes
    from runtimes.harness import measure_alternating, median_round

    runtime = runtimes.get(args.runtime)
    reason = runtime.unavailable(args.device)
    if reason:
        print(f"cannot measure on {args.runtime}/{args.device}: {reason}", file=sys.stderr)
        return 2
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        print(f"model file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        shape = input_shape(args.models[0], args.shape)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sessions = {(str(m), t): runtime.load(str(m), args.device, t) for m in args.models for t in args.threads}
    runs = measure_alternating(sessions, batch, args.rounds, min_seconds=args.seconds)

    print(f"{args.runtime}/{args.device}, input {shape}, {args.rounds} alternating rounds of >= "
          f"{args.seconds:g} s; per row the round with the median p50, and the speed-up over the "
          f"first row taken round by round [95% interval over rounds]")
    print(f"{'model':<44} {'threads':>7} {'p50 ms':>8} {'p90 ms':>8}  {'speed-up p50':<26} {'speed-up p90':<26}")
    first = None
    for (model, threads), stats in runs.items():
        chosen = median_round(stats)
        first = first or stats
        cells = [_speedup(first, stats, stat) for stat in ("p50_ms", "p90_ms")]
        print(f"{model[-44:]:<44} {threads:>7} {chosen.p50_ms:>8.3f} {chosen.p90_ms:>8.3f}  "
              f"{cells[0]:<26} {cells[1]:<26}")
        print(f"{'':<44} {'':>7} rounds p50: " + " ".join(f"{s.p50_ms:.3f}" for s in stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
