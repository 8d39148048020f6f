"""The edgeship command line. Heavy libraries load only inside the commands that need them."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.stage_order import STAGE_NAMES, stage_list

EXIT_FAIL, EXIT_USAGE, EXIT_LOCKED = 1, 2, 4
EXIT_BUDGET = 5   # `edgeship run check`: a budget failed (see the JUnit XML)
EXIT_STAGE = 6    # a stage refused its input or could not meet its goal; the message says why

# Errors a stage raises on purpose, with a message that names the thing, the value and the fix:
# printed without a traceback. Named, not imported, so the CLI loads no heavy library for them.
STAGE_FAILURES = frozenset({
    "pipeline.data.imageset.DataError", "pipeline.models.registry.ModelError",
    "pipeline.prune.structured.PruneError", "pipeline.prune.latency.LatencyUnsupported",
    "pipeline.prune.budget.BudgetNotMet", "exporters.UnknownExportEdge",
    "exporters.spec.ExportError", "exporters.parity.ParityError", "exporters.bundle.BundleError",
    "exporters.quant_sensitivity.QuantizationBudgetError",
})


def _is_stage_failure(exc: BaseException) -> bool:
    return any(f"{cls.__module__}.{cls.__qualname__}" in STAGE_FAILURES for cls in type(exc).__mro__)

EPILOG = f"""\
stages, in order (each reads the manifests of the ones before it):
{stage_list()}

examples:
  edgeship run -c configs/default.yaml              the whole pipeline
  edgeship run finetune -c configs/default.yaml     one stage (and what it needs)
  edgeship run -c cfg.yaml --set prune.ratio=0.4    override a value
  edgeship run -c cfg.yaml --force prune            re-run one stage
  edgeship status -c configs/default.yaml           cached / stale / not run

exit codes:
  0 done   1 unexpected error   2 bad config or usage   4 store locked
  5 a check budget failed   6 a stage refused its input or missed its goal (message says why)
"""


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default="configs/default.yaml", help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set finetune.train.epochs=3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeship", description="Turn a pretrained backbone and a labelled dataset into a small, "
        "fast, verified model for CPU, desktop GPU or Jetson.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the pipeline (or up to one stage) through the cache")
    p.add_argument("stage", nargs="?", choices=STAGE_NAMES, help="stop after this stage")
    _config_args(p)
    p.add_argument("--force", action="append", default=[], choices=STAGE_NAMES, metavar="STAGE",
                   help="re-run this stage even when cached (repeatable)")

    p = sub.add_parser("status", help="for each stage: cached, stale or not run, with its key")
    _config_args(p)

    p = sub.add_parser("config", help="show the resolved config or its JSON Schema")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    _config_args(csub.add_parser("show", help="print the resolved config (defaults filled in)"))
    csub.add_parser("schema", help="print the JSON Schema (for editor completion)")

    sub.add_parser("runtimes", help="list inference runtimes, versions, devices, or why unavailable")

    p = sub.add_parser("compare", help="what changed between two runs' reports")
    p.add_argument("run_a", help="a report.json, or a folder holding one")
    p.add_argument("run_b", help="a report.json, or a folder holding one")
    return parser


def _cmd_run(args) -> int:
    from pipeline import runner
    from pipeline.config_load import load_config
    cfg = load_config(args.config, args.set)
    runner.run(cfg, target=args.stage, force=frozenset(args.force))
    return 0


def _cmd_status(args) -> int:
    from pipeline import runner
    from pipeline.config_load import load_config
    runner.print_status(runner.status(load_config(args.config, args.set)))
    return 0


def _cmd_config(args) -> int:
    import yaml
    if args.config_command == "schema":
        from pipeline.config import Config
        print(json.dumps(Config.model_json_schema(), indent=2))
        return 0
    from pipeline.config_load import load_config
    cfg = load_config(args.config, args.set)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _cmd_runtimes(args) -> int:
    import runtimes
    for row in runtimes.describe():
        state = f"unavailable: {row['unavailable']}" if row.get("unavailable") else \
            "devices: " + ", ".join(row.get("devices") or [])
        print(f"{row['name']:<12} {row.get('version') or '-':<12} {state}")
    return 0


def _cmd_compare(args) -> int:
    from pipeline.report.compare import compare_reports
    print(compare_reports(args.run_a, args.run_b))
    return 0


COMMANDS = {"run": _cmd_run, "status": _cmd_status, "config": _cmd_config,
            "runtimes": _cmd_runtimes, "compare": _cmd_compare}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.config_load import ConfigError
    from pipeline.stages.check import BudgetFailed
    from pipeline.store import StoreLocked
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StoreLocked as e:
        print(f"edgeship: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except BudgetFailed as e:
        print(f"edgeship: {e}", file=sys.stderr)
        return EXIT_BUDGET
    except KeyboardInterrupt:
        print("edgeship: interrupted; nothing half-written was committed", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_stage_failure(e):
            raise
        print(f"edgeship: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_STAGE


if __name__ == "__main__":
    sys.exit(main())
