"""The Meta-World tokenizer study (issue 9): VQ K sweep, hierarchical VQ, bins, FSQ, residual VQ and FAST,
open loop on held-out demonstrations and in closed loop on held-out initial states (vqstudy.sim.tokenizer_study).

python scripts/study_metaworld_tokenizers.py --config configs/metaworld_tokenizers.yaml --out results/metaworld_tokenizers
python scripts/study_metaworld_tokenizers.py --config configs/metaworld_tokenizers_quick.yaml --out runs/metaworld_tokenizers_quick
--report-only rewrites the report from the finished jobs under work_dir. Independent processes can share the
jobs (`--shard 0/2` and `--shard 1/2`, each resumable), then one `--report-only --started EPOCH` writes the report
(see scripts/run_metaworld_tokenizers.sh).
"""

import argparse
import logging
import shlex
import sys
import time

from vqstudy.config import parse_overrides
from vqstudy.machine import machine_info, machine_line
from vqstudy.sim.tokenizer_study import finished_jobs, load_study_config, run_study, study_jobs, write_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--out", required=True, help="report directory (study.md, study.json, plots)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from finished jobs")
    p.add_argument("--shard", default="0/1", help="i/m: run jobs i, i+m, ... only (and write no report unless m=1)")
    p.add_argument("--started", type=float, default=None, help="with --report-only: epoch seconds the study started "
                                                                 "(for its wall time)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "python scripts/study_metaworld_tokenizers.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    cfg = load_study_config(args.config, parse_overrides(args.set))
    info = machine_info()
    start = time.time()
    i, m = (int(v) for v in args.shard.split("/"))
    if args.report_only:
        results = finished_jobs(cfg)
        missing = len(study_jobs(cfg)) - len(results)
        if missing:
            print(f"warning: {missing} jobs are not finished; the report covers the others")
    else:
        results = run_study(cfg, (i, m))
        if m > 1:
            print(f"shard {i}/{m} done")
            return 0
    if args.report_only and args.started is not None:  # the study ended when its last job file was written
        from pathlib import Path

        jobs_dir = Path(cfg.work_dir) / "jobs"
        wall = max(p.stat().st_mtime for p in jobs_dir.glob("*.json")) - args.started
    else:
        wall = time.time() - (args.started if args.started is not None else start)
    cpu_s = sum(r["seconds"] for r in results)
    header = (f"# {cfg.name}\n\ncommand: `{command}`\n\nmachine: {machine_line(info)}\n\n"
              + f"wall time: {wall / 60:.1f} min; "
              + f"sum of job times: {cpu_s / 60:.1f} min\n")
    paths = write_report(cfg, results, args.out, header,
                         extra={"command": command, "machine": info, "wall_s": wall})
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
