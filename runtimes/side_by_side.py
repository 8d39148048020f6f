"""Latency of model files side by side, in one run, with the project's harness.

    python -m runtimes.side_by_side A.onnx [B.onnx ...] [--runtime onnxruntime] [--device cpu]
                                    [--threads 1 2] [--rounds 5] [--seconds 0.3]
                                    [--shape 1,3,H,W]

Every (model, threads) pair gets its own session; all are measured in alternating rounds, so a
machine whose load changes during the run slows them alike. Prints each pair's median round
(p50, p90) and its p50 relative to the first pair: the way to check a speed-up claim ("pruned is
1.3x faster", "two threads beat one") on a noisy machine.
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtimes.side_by_side", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="model files (.onnx, .xml, .engine)")
    p.add_argument("--runtime", default="onnxruntime",
                   help="a runtime that loads model files (see `edgeship runtimes`)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts to compare")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
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
          f"{args.seconds:g} s; per row the round with the median p50")
    print(f"{'model':<50} {'threads':>7} {'p50 ms':>9} {'p90 ms':>9} {'vs first':>9}   rounds p50")
    first = None
    for (model, threads), stats in runs.items():
        chosen = median_round(stats)
        first = first or chosen.p50_ms
        rounds = " ".join(f"{s.p50_ms:.3f}" for s in stats)
        print(f"{model[-50:]:<50} {threads:>7} {chosen.p50_ms:>9.3f} {chosen.p90_ms:>9.3f} "
              f"{first / chosen.p50_ms:>8.2f}x   {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
