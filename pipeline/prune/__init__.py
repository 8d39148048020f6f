"""Structural pruning of the student: channel pruning sized by MACs (`structured`), measured
latency of candidates (`latency`, `budget`), recovery training (`recover`), and code-free pruned
checkpoints (`checkpoint`). The `prune` stage in `pipeline.stages.prune` ties them together.
"""
