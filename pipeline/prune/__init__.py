"""Structural pruning of the student: channel pruning sized by MACs (`structured`), measured
latency of candidates (`latency`, `budget`) and recovery training (`recover`). Pruned models are
saved in the code-free format of `pipeline.models.pruned`. The `prune` stage in
`pipeline.stages.prune` ties them together.
"""
