"""JUnit XML for CI systems: one test case per budget, a failure element carrying value and limit."""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET

from pipeline.gate.budgets import FAIL, SKIP, Verdict

SUITE = "edgeship.check"


def to_junit(verdicts: list[Verdict], details: str = "") -> str:
    """The XML document; `details` (e.g. the headline) goes into the suite's system-out."""
    failures = sum(v.status == FAIL for v in verdicts)
    skipped = sum(v.status == SKIP for v in verdicts)
    counts = {"tests": str(len(verdicts)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    root = ET.Element("testsuites", name="edgeship check", **counts)
    suite = ET.SubElement(root, "testsuite", name=SUITE, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
                          time="0", **counts)
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=SUITE, name=v.name, time="0")
        if v.status == FAIL:
            failure = ET.SubElement(case, "failure", message=v.message, type="BudgetExceeded")
            failure.text = v.message
        elif v.status == SKIP:
            ET.SubElement(case, "skipped", message=v.message)
        else:
            ET.SubElement(case, "system-out").text = v.message
    if details:
        ET.SubElement(suite, "system-out").text = details
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
