"""Run the bottleneck grid (same as `vqstudy bottleneck`); writes results/bottleneck/ by default.

    python scripts/run_bottleneck.py --config configs/bottleneck_default.yaml [--set key.path=value ...]
"""

import sys

from vqstudy.bottleneck import main

if __name__ == "__main__":
    argv = sys.argv[1:] or ["--config", "configs/bottleneck_default.yaml"]
    sys.exit(main(argv, prog="python scripts/run_bottleneck.py"))
