"""Action-chunk tokenizers for VLA heads.

data/          trajectories (LIBERO hdf5, LeRobot parquet, robosuite demos), normalization, chunks, splits
tokenizers.py  the ChunkTokenizer interface and the action VQ-VAEs; baselines.py: bins, FSQ, residual VQ
registry.py    the one registry of tokenizer kinds (build_tokenizer)
metrics.py     fidelity metrics and bits per chunk; ordering.py: id orders (seriation)
export.py      ActionTokenizer (LM id mapping, save/load); train.py: the training loop, train/eval runs
study.py       the tokenizer study (sweep)
"""

from vqstudy.actions.export import ActionTokenizer
from vqstudy.actions.registry import TOKENIZER_KINDS, build_tokenizer

__all__ = ["TOKENIZER_KINDS", "ActionTokenizer", "build_tokenizer"]
