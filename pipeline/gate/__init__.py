"""The CI gate: budgets from the config's `check` section judged on report.json, and the
verdicts as JUnit XML for CI systems (`edgeship run check` exits 5 when one fails)."""
