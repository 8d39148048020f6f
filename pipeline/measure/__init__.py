"""What gets measured: the benchmark's artifacts, targets, scoring and rows.

    artifacts   which artifacts a benchmark covers and where their model files are
    targets     the runtimes and devices each artifact is measured on, or why not
    scoring     val images at an artifact's preprocessing; top-1 accuracy and agreement
    rows        the benchmark: one row per artifact x runtime x device x batch

Importing this package loads no heavy library; models are loaded through runtimes.execution.
"""
