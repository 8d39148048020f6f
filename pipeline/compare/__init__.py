"""What changed between two runs' reports (`edgeship compare A B`)."""
from pipeline.compare.reports import compare_reports, resolve_report

__all__ = ["compare_reports", "resolve_report"]
