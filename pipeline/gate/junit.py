"""JUnit XML for CI systems: one test case per budget, a failure element carrying value and limit.

A relative budget's case carries its interval as properties (estimate, low, high, level) and in
its message. Inconclusive cases are failures when `check.inconclusive` is fail, else skipped
with the message (CI systems show those); not-comparable cases are skipped with the reason.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET

from pipeline.gate.budgets import FAIL, SKIP, Verdict
from pipeline.gate.regression import INCONCLUSIVE, NOT_COMPARABLE

SUITE = "edgeship.check"


def to_junit(verdicts: list[Verdict], details: str = "", inconclusive_fails: bool = False) -> str:
    """The XML document; `details` (e.g. the headline) goes into the suite's system-out."""
    def fails(v: Verdict) -> bool:
        return v.status == FAIL or (v.status == INCONCLUSIVE and inconclusive_fails)

    failures = sum(fails(v) for v in verdicts)
    skipped = sum(not fails(v) and v.status in (SKIP, INCONCLUSIVE, NOT_COMPARABLE) for v in verdicts)
    counts = {"tests": str(len(verdicts)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    root = ET.Element("testsuites", name="edgeship check", **counts)
    suite = ET.SubElement(root, "testsuite", name=SUITE, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
                          time="0", **counts)
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=SUITE, name=v.name, time="0")
        interval = getattr(v, "interval", None)
        if interval:
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="verdict", value=v.status)
            for key in ("estimate", "low", "high", "level"):
                ET.SubElement(props, "property", name=f"interval_{key}", value=f"{interval[key]:.6g}")
        if fails(v):
            kind = "Inconclusive" if v.status == INCONCLUSIVE else "BudgetExceeded"
            failure = ET.SubElement(case, "failure", message=v.message, type=kind)
            failure.text = v.message
        elif v.status in (SKIP, INCONCLUSIVE, NOT_COMPARABLE):
            ET.SubElement(case, "skipped", message=v.message)
        else:
            ET.SubElement(case, "system-out").text = v.message
    if details:
        ET.SubElement(suite, "system-out").text = details
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
