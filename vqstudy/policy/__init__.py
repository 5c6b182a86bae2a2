"""Policies over action chunks: behaviour cloning for the bottleneck study (arXiv 2604.03191).

Closed loop on Meta-World (issue 10): demos.py: (39-D observation, task) -> action-chunk samples from
`vqstudy data make metaworld` datasets, split by episode; encoders.py: the graded encoder ladder and
the linear probe; heads.py: continuous MLP, flow matching, parallel discrete and autoregressive
discrete heads; model.py: `LearnedPolicy` (act, save_pretrained / from_pretrained); learn.py: training
(`vqstudy policy train`); source.py: `PolicySource`, a learned policy as an `ActionSource` of the
closed-loop harness; grid.py: encoder rung x head x seed in closed loop (`vqstudy policy grid`);
closed_report.py: success vs encoder quality, paired bootstrap lifts, the paper's three claims.

Open loop on robosuite (the earlier study, superseded): data.py, config.py, experiment.py,
bottleneck.py, report.py (`vqstudy bottleneck`).
"""
