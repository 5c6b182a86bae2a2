"""Run the bottleneck grid (same as `vqstudy bottleneck`); writes results/bottleneck/ by default.

    python scripts/run_bottleneck.py --config configs/bottleneck_default.yaml [--set key.path=value ...]
"""

import sys

from vqstudy.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:] or ["--config", "configs/bottleneck_default.yaml"]
    if not any(a.startswith("out_dir=") for a in argv):
        argv += ["--set", "out_dir=results/bottleneck"]  # the committed reference; user runs go to runs/
    sys.exit(main(["bottleneck", *argv]))
