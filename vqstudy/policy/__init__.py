"""Policies over action chunks: behaviour cloning for the bottleneck study (arXiv 2604.03191).

data.py: (state, task) -> action-chunk samples; encoders.py: the graded encoder ladder and the linear probe;
heads.py: continuous and discrete heads; config.py: typed configs; experiment.py: the grid;
bottleneck.py: run and write it; report.py: tables and figures.
"""
