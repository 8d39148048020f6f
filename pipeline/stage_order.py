"""Every stage the product has, in pipeline order (kept import-light for the CLI)."""
STAGE_NAMES = ("finetune", "distill", "prune", "quantize", "export", "benchmark", "report", "check")
