"""Behaviour cloning for the bottleneck study (`vqstudy bottleneck`, see vqstudy.bottleneck).

data: (state, task) -> action-chunk samples; encoders: the graded encoder ladder and the linear probe;
heads: continuous and discrete policy heads; config: typed configs; experiment: the grid; report: files.
"""
