"""Regenerate the committed reference results/default_pair/ with the README's first command.

python scripts/regenerate_default_pair.py            # = vqstudy pair --config configs/pair_default.yaml --out results

`vqstudy pair` writes user runs under runs/ by default; only this script writes the reference under
results/ (about 4 min on the 2-core development CPU). Extra arguments are passed on (e.g. --set ...).
"""

import sys

from vqstudy.cli import main

COMMAND = ["pair", "--config", "configs/pair_default.yaml", "--out", "results"]

if __name__ == "__main__":
    sys.exit(main(COMMAND + sys.argv[1:]))
