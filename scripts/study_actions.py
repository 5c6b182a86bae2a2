"""Action-tokenizer study (issue 4): codebook-size sweep, hierarchical vs single-level, baselines, ordered ids.

python scripts/study_actions.py --config configs/actions_sweep.yaml --notes results/actions/notes.md
python scripts/study_actions.py --report-only --out results/actions --notes results/actions/notes.md  # redraw md/plots
"""

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from vqstudy.actions.study import load_sweep_config, run_sweep, write_report
from vqstudy.config import parse_overrides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/actions_sweep.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. seeds=[0]")
    p.add_argument("--notes", help="markdown paragraph ('what we measured') to include in the md")
    p.add_argument("--report-only", action="store_true", help="rewrite md and plots from <out>/actions_study.json")
    p.add_argument("--out", default="results/actions", help="output folder (default: results/actions, the committed reference)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.report_only:
        out = Path(args.out or "results/actions")
        study = json.loads((out / "actions_study.json").read_text())
        command = "python scripts/study_actions.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        for path in write_report(study, out, args.notes, command):
            print(f"wrote {path}")
        return 0
    overrides = parse_overrides(args.set + ([f"out_dir={args.out}"] if args.out else []))
    if args.notes:
        overrides["notes"] = args.notes
    cfg = load_sweep_config(args.config, overrides)
    command = "python scripts/study_actions.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    study = run_sweep(cfg, command)
    print((Path(cfg.out_dir) / "actions_study.md").read_text())
    print(f"wall time {study['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
