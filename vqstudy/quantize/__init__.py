"""The shared quantizer: every model in vqstudy quantizes through `Quantizer`, which owns all codebook state.

config.py     QuantizerConfig (every field documented)
quantizer.py  Quantizer: EMA/grad codebook, k-means init, dead-code resets, low-dim/cosine lookup, DDP sync
outputs.py    QuantizeOutput / QuantizeStats and the input checks
kmeans.py     k-means++ + Lloyd on the nearest-code kernels
usage.py      the one usage computation (utilization, perplexity, effective bits, dead codes), CodebookUsage
distributed.py  the all-reduce / all-gather helpers (no-ops without torch.distributed)
vqp.py        backend="vqp": vector-quantize-pytorch's VectorQuantize behind the same interface
"""

from vqstudy.quantize.config import DEAD_CODE_THRESHOLD, QuantizerConfig
from vqstudy.quantize.outputs import QuantizeOutput, QuantizeStats
from vqstudy.quantize.quantizer import Quantizer
from vqstudy.quantize.usage import CodebookUsage, Usage, usage_of

__all__ = [
    "DEAD_CODE_THRESHOLD",
    "CodebookUsage",
    "QuantizeOutput",
    "QuantizeStats",
    "Quantizer",
    "QuantizerConfig",
    "Usage",
    "usage_of",
]
