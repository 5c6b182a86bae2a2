"""The Spec-VLA study: speculative decoding of action ids with relaxed acceptance, in closed loop.

    python scripts/study_specvla.py --config configs/specvla.yaml --out results/specvla [--set n=20]
    python scripts/study_specvla.py --merge results/specvla results/specvla_seed1 --out results/specvla
        (pools finished one-seed studies into specvla_merged.{md,json} and success_vs_speedup_merged.png)
"""

import argparse
import logging
import shlex
import sys

from vqstudy.config import parse_overrides
from vqstudy.policy.specvla import load_specvla_config, run_study


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/specvla.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. n=20")
    p.add_argument("--out", default="results/specvla", help="output folder (results/specvla: the committed reference)")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="pool these finished one-seed studies into --out")
    args = p.parse_args(argv)
    if args.merge:
        from vqstudy.policy.specvla import write_merged

        merged = write_merged(args.merge, args.out)
        print(f"wrote {args.out}/specvla_merged.md (seeds {merged['seeds']})")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_specvla_config(args.config, parse_overrides(args.set + [f"out_dir={args.out}"]))
    command = "python scripts/study_specvla.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    study = run_study(cfg, command)
    print(f"wrote {cfg.out_dir}/ in {study['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
