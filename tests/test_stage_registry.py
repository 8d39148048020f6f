"""Every stage meets the same contract, in the one order `pipeline.stage_order` declares.

Parametrized over the registry (DESIGN.md §6), so a new stage is held to it without a new test.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.stage_order import STAGE_NAMES, STAGE_TABLE, stage_list
from pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]


def test_stages_come_in_the_declared_order():
    assert [s.name for s in STAGES] == list(STAGE_NAMES)
    assert len(set(STAGE_NAMES)) == len(STAGE_NAMES) == len(STAGE_TABLE)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_contract(stage):
    earlier = STAGE_NAMES[:STAGE_NAMES.index(stage.name)]
    assert isinstance(stage.version, int) and not isinstance(stage.version, bool) and stage.version >= 1
    assert isinstance(stage.deps, tuple) and set(stage.deps) <= set(earlier), \
        f"{stage.name} depends on {stage.deps}; only earlier stages {earlier} can be inputs"
    assert len(set(stage.deps)) == len(stage.deps)
    assert callable(stage.params) and callable(stage.run)
    assert stage.publish is None or callable(stage.publish)
    assert dict(STAGE_TABLE)[stage.name].strip()


def _make_targets() -> dict[str, str]:
    """Makefile target -> its recipe (the tab-indented lines under it)."""
    targets, current = {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and current:
            targets[current] += line.strip() + "\n"
        elif (m := re.match(r"^([a-z][a-z-]*):", line)):
            current = m.group(1)
            targets[current] = ""
        else:
            current = None
    return targets


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_every_stage_has_a_make_target(name):
    targets = _make_targets()
    assert name in targets, f"Makefile has no '{name}' target (make help lists one per stage)"
    assert f"$(EDGESHIP) run {name} " in targets[name]
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    assert name in phony.split()


def test_cli_help_lists_the_table_without_loading_stages():
    code = ("import sys; from pipeline.cli import build_parser; "
            "print(build_parser().format_help()); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('pipeline.stages')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert stage_list() in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
    lines = stage_list().splitlines()
    assert [line.split()[0] for line in lines] == list(STAGE_NAMES)
