"""`edgeship targets`: one line per configured target, with the fix for whatever is wrong."""
from __future__ import annotations

from pipeline.config_targets import Target
from pipeline.targets.probe import probe
from runtimes import errors


class TargetsUnavailable(RuntimeError, errors.Unavailable):
    """A required target cannot be measured; each line above says why and how to fix it."""


def check_targets(targets: list[Target], out=print) -> int:
    """Probe every target and print its line; 0 when every required target can be measured,
    TargetsUnavailable (exit 8) otherwise."""
    if not targets:
        out("no targets configured: benchmarks run on this machine only (add a targets: section, "
            "see configs/jetson.yaml)")
        return 0
    broken = []
    for target in targets:
        found = probe(target)
        out(found.line())
        if target.required and (found.problem or found.runtime_problems):
            broken.append(target.name)
    if broken:
        raise TargetsUnavailable(f"required target(s) {', '.join(broken)} cannot be measured; "
                                 "fix what their lines above say, then run `edgeship targets` again")
    return 0
