"""report.json: what a benchmark run means, assembled from its rows.

    build       report.json from the benchmark rows and the upstream manifests
    headline    the deployed model against the fine-tuned teacher, measured in the same run
    pareto      the accuracy / p90 latency Pareto front
    upstream    what earlier stages said (negative transfer, distillation gain, pruning)

How rows are measured lives in pipeline.measure, how the report is shown in pipeline.render,
the CI gate in pipeline.gate and run comparison in pipeline.compare.
"""
