"""Check our latency harness against the runtime's own benchmark tool on the same model file.

    python -m runtimes.fidelity MODEL [--threads 2] [--seconds 10] [--rounds 3]
                                      [--inputs x.npy] [--shape 1,3,H,W] [--tolerance 0.10]
                                      [--precision f32] [--perf-test PATH]

The file picks the tool: an OpenVINO IR (.xml) is compared with benchmark_app
(runtimes.fidelity_openvino), an .onnx with onnxruntime_perf_test (runtimes.fidelity_onnxruntime).
Both tools get the same runtime settings and the same batch-1 input and run in alternating rounds
(runtimes.fidelity_rounds). The command prints each round's medians, the settings each tool ran
with, and the median of the per-round ratios; it exits 1 when that ratio is outside
1 +/- tolerance or the settings differ, 2 when a measurement could not be made.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtimes.fidelity_rounds import CannotMeasure, report


def _measurer(model: Path):
    """The module that compares `model` with its runtime's own tool, by suffix; None if none.
    Imported here so a check of one format never loads the other's runtime."""
    suffix = model.suffix.lower()
    if suffix == ".xml":
        from runtimes import fidelity_openvino
        return fidelity_openvino
    if suffix == ".onnx":
        from runtimes import fidelity_onnxruntime
        return fidelity_onnxruntime
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtimes.fidelity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path,
                        help="OpenVINO IR (.xml, with its .bin beside it) or ONNX model (.onnx)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    parser.add_argument("--seconds", type=int, default=10,
                        help="seconds of measurement per tool, split over the rounds (default 10)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the two tools this many times, so load that changes "
                             "over the run hits both alike (default 3)")
    parser.add_argument("--inputs", type=Path, help="NCHW float32 .npy; its first image is used")
    parser.add_argument("--shape", help="input shape for dynamic models, e.g. 1,3,224,224")
    parser.add_argument("--precision", choices=("f32", "bf16", "f16"),
                        help="OpenVINO only: inference precision for both tools (default: "
                             "OpenVINO's default)")
    parser.add_argument("--perf-test", dest="perf_test", metavar="PATH",
                        help="ONNX only: the onnxruntime_perf_test binary (default: "
                             "$ORT_PERF_TEST, then PATH)")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="allowed relative difference of the medians (default 0.10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m runtimes.fidelity`; returns the exit code."""
    args = _parser().parse_args(argv)
    module = _measurer(args.model)
    if module is None:
        print(f"model {str(args.model)!r}: expected an OpenVINO IR (.xml) or an ONNX model "
              f"(.onnx)", file=sys.stderr)
        return 2
    if not args.model.is_file():
        print(f"model {str(args.model)!r} does not exist", file=sys.stderr)
        return 2
    try:
        comparison = module.compare(args)
    except CannotMeasure as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return report(comparison, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
