"""Benchmark rows and what is made of them.

    artifacts   which artifacts a benchmark covers, their model files and size on disk
    targets     the runtimes and devices each artifact is measured on, or why not
    scoring     val images at an artifact's preprocessing; top-1 accuracy and agreement
    rows        the benchmark: one row per artifact x runtime x device x batch
    pareto      the accuracy / p90 latency Pareto front
    headline    the deployed model against the fine-tuned teacher, measured in the same run
    upstream    what earlier stages said (negative transfer, distillation gain, pruning)
    markdown, html, plots   report.md, report.html and its PNG plots
    budgets, junit          the CI gate: budgets from the config, JUnit XML
    compare     what changed between two runs' reports

Importing this package loads no heavy library; each module imports torch, onnx, OpenVINO or
matplotlib inside the functions that need them.
"""
