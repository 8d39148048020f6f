"""The edgeship command line. Heavy libraries load only inside the commands that need them."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.stage_order import STAGE_NAMES, stage_list

EPILOG = f"""\
stages, in order (each reads the manifests of the ones before it):
{stage_list()}

examples:
  edgeship run -c configs/default.yaml              the whole pipeline
  edgeship run finetune -c configs/default.yaml     one stage (and what it needs)
  edgeship run -c cfg.yaml --set prune.ratio=0.4    override a value
  edgeship run -c cfg.yaml --force prune            re-run one stage
  edgeship status -c configs/default.yaml           cached / stale / not run
  edgeship audit -c configs/imagefolder.yaml        the data alone: leakage, conflicts, copies

output:
  progress and warnings go to stderr, results (tables, config, comparisons) to stdout;
  -q shows only warnings and errors, -v adds debug lines, -vv debug lines of libraries too

exit codes (runtimes/errors.py):
  0 done   1 unexpected error (traceback)   2 bad config or usage   4 store locked or damaged
  5 a check budget failed   6 a stage refused its input or missed its goal (message says why)
  7 bad input data   8 a backend, runtime or device is unavailable here (message says the fix)
  130 interrupted
"""


def _verbosity_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    # Subcommands count into their own dests: argparse copies a subparser's defaults over the
    # main parser's values, so one dest would drop the flags given before the subcommand.
    p.add_argument("-v", "--verbose", action="count", default=0, dest=prefix + "verbose",
                   help="more output: -v debug lines, -vv debug lines of libraries too")
    p.add_argument("-q", "--quiet", action="count", default=0, dest=prefix + "quiet",
                   help="only warnings and errors")


def verbosity(args: argparse.Namespace) -> int:
    """-v count minus -q count, over flags given before and after the subcommand."""
    return (args.verbose + getattr(args, "sub_verbose", 0)) - (args.quiet + getattr(args, "sub_quiet", 0))


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default="configs/default.yaml", help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set finetune.train.epochs=3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeship", description="Turn a pretrained backbone and a labelled dataset into a small, "
        "fast, verified model for CPU, desktop GPU or Jetson.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _verbosity_args(parser)
    common = argparse.ArgumentParser(add_help=False)
    _verbosity_args(common, "sub_")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run the pipeline (or up to one stage) through the cache")
    p.add_argument("stage", nargs="?", choices=STAGE_NAMES, help="stop after this stage")
    _config_args(p)
    p.add_argument("--force", action="append", default=[], choices=STAGE_NAMES, metavar="STAGE",
                   help="re-run this stage even when cached (repeatable)")
    p.add_argument("--baseline", metavar="PATH", help="the report check compares with (sets "
                   "check.baseline: a report.json, a run folder, a store, or 'last')")

    p = sub.add_parser("audit", parents=[common], help="check the data alone: copies across train/val "
                       "(leakage), one picture under two labels, repeats, near copies (exit 7 on "
                       "leaks or conflicts the config does not allow)")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print the audit record as JSON")

    p = sub.add_parser("status", parents=[common], help="for each stage: cached, stale or not run, with its key")
    _config_args(p)

    p = sub.add_parser("verify", parents=[common], help="check every entry and cache file of a store "
                       "against its recorded hashes (exit 4 when any is damaged)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", default="configs/default.yaml", help="YAML config file (its run.store)")
    where.add_argument("--store", metavar="PATH", help="the store folder to check (instead of a config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set run.store=/tmp/runs (repeatable)")

    p = sub.add_parser("config", help="show the resolved config or its JSON Schema")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    _config_args(csub.add_parser("show", parents=[common], help="print the resolved config (defaults filled in)"))
    csub.add_parser("schema", parents=[common], help="print the JSON Schema (for editor completion)")

    sub.add_parser("runtimes", parents=[common], help="list inference runtimes, versions, devices, or why unavailable")

    p = sub.add_parser("targets", parents=[common], help="list the config's targets and check each "
                       "(reachable, Python, numpy, runtimes, fingerprint); exit 8 when a required one is not")
    _config_args(p)

    p = sub.add_parser("compare", parents=[common], help="what changed between two runs' reports")
    p.add_argument("run_a", help="a report.json, or a folder holding one")
    p.add_argument("run_b", help="a report.json, or a folder holding one")
    return parser


def _preflight(cfg, stage: str | None) -> None:
    """Backends the config asks for, checked before the stages before them train for an hour."""
    from pipeline.config import QuantMethod
    from pipeline.runner import plan
    if cfg.quantize.method == QuantMethod.nncf and any(s.name == "quantize" for s in plan(stage)):
        from exporters.onnx_int8_nncf import require_nncf
        require_nncf()


def _cmd_run(args) -> int:
    from pipeline import runner
    from pipeline.config_load import load_config
    sets = args.set + ([f"check.baseline={args.baseline}"] if args.baseline else [])
    cfg = load_config(args.config, sets)
    _preflight(cfg, args.stage)
    from pipeline.gate.remeasure import run_gated
    run_gated(cfg, args.stage, frozenset(args.force), runner.run)
    return 0


def _cmd_audit(args) -> int:
    from pipeline.config_load import load_config
    from pipeline.data.audit_show import run_audit
    cfg = load_config(args.config, args.set)
    run_audit(cfg.data, cfg.run.store, args.json)
    return 0


def _cmd_status(args) -> int:
    from pipeline import runner
    from pipeline.config_load import load_config
    runner.print_status(runner.status(load_config(args.config, args.set)))
    return 0


def _cmd_verify(args) -> int:
    from pipeline.store import shown
    from pipeline.verify import verify_locked
    if args.store is None:
        from pipeline.config_load import load_config
        root = load_config(args.config, args.set).run.store
    else:
        root = args.store
    verdict = verify_locked(root)
    for damage in verdict.damaged:
        print(damage)
    for path in verdict.unchecked:
        print(f"{shown(path)}: no hash record beside it (written by an older edgeship); not checked")
    print(verdict.summary())
    verdict.raise_if_damaged()
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


def _cmd_targets(args) -> int:
    from pipeline.config_load import load_config
    from pipeline.targets.check import check_targets
    return check_targets(load_config(args.config, args.set).targets)


def _cmd_compare(args) -> int:
    from pipeline.compare.reports import compare_reports
    print(compare_reports(args.run_a, args.run_b))
    return 0


COMMANDS = {"run": _cmd_run, "audit": _cmd_audit, "status": _cmd_status, "verify": _cmd_verify, "config": _cmd_config,
            "runtimes": _cmd_runtimes, "targets": _cmd_targets, "compare": _cmd_compare}


def main(argv: list[str] | None = None) -> int:
    """Run one `edgeship` command; returns its exit code (the table is in EPILOG)."""
    args = build_parser().parse_args(argv)
    from pipeline import logs
    logs.configure(verbosity(args))
    # Imported after parsing: `runtimes` loads numpy, and `edgeship --help` should not wait for it.
    from runtimes.errors import ConfigError, EdgeshipError
    try:
        return COMMANDS[args.command](args)
    except EdgeshipError as e:
        print(f"{'config error' if isinstance(e, ConfigError) else 'edgeship'}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgeship: interrupted; nothing half-written was committed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
