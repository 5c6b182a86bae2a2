"""The image study (issue 12): capacity-matched single-level vs hierarchical VQ-VAEs, cross-validated by photo.

python scripts/study_images.py --config configs/pair_study.yaml --out results/image_study --jobs 2
python scripts/study_images.py --config configs/pair_study_quick.yaml --out runs/study_quick --seeds 0 1 --variants full simvq
python scripts/study_images.py --config configs/pair_study.yaml --throughput-only --out results/image_study

Runs already finished under --runs-dir are reused, so an interrupted study resumes where it stopped;
--collect-only analyses whatever finished (a (variant, seed) without a run is left out and the table counts seeds).
"""

import argparse
import logging
import shlex
import sys
from pathlib import Path

from vqstudy.config import parse_overrides
from vqstudy.images.study import VARIANTS, StudyPlan, run_study, run_throughput, throughput_markdown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/pair_study.yaml")
    p.add_argument("--out", default="results/image_study")
    p.add_argument("--runs-dir", default=None, help="full run folders (default runs/<name of --out>)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--folds", type=int, default=5, help="photo folds; seed s validates on fold s %% folds")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}")
    p.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--collect-only", action="store_true", help="train nothing; analyse the finished runs under --runs-dir")
    p.add_argument("--classical-only", action="store_true", help="only code the validation tiles of every fold with JPEG/WebP (cached for the study)")
    p.add_argument("--throughput-only", action="store_true", help="only compare training img/s with the vqp backend")
    p.add_argument("--throughput-steps", type=int, default=60, help="training steps per model for --throughput-only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = parse_overrides(args.set)
    command = "python scripts/study_images.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    if args.throughput_only:
        rows = run_throughput(args.config, out, args.throughput_steps, overrides)
        (out / "throughput.md").write_text(throughput_markdown(rows, command))
        print((out / "throughput.md").read_text())
        return 0
    plan = StudyPlan(base_config=args.config, out_dir=str(out), runs_dir=args.runs_dir or str(Path("runs") / out.name),
                     seeds=tuple(args.seeds), n_folds=args.folds, variants=tuple(args.variants), overrides=overrides,
                     jobs=args.jobs, threads=args.threads, train=not args.collect_only)
    if args.classical_only:
        from vqstudy.images.capacity import bits_per_sample
        from vqstudy.images.evaluate import lpips_model_for
        from vqstudy.images.pair import load_pair_config
        from vqstudy.images.study import cached_classical_rows

        base = load_pair_config(args.config, overrides)
        cached_classical_rows(plan, float(bits_per_sample(base.hierarchical, base.data.crop_size)), lpips_model_for(base.train.lpips))
        return 0
    run_study(plan, command=command)
    print((out / "study.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
