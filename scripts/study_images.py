"""Image study (issue: capacity-matched single-level vs hierarchical VQ-VAEs).

python scripts/study_images.py --config configs/pair_study.yaml --seeds 0 1 2 --out results/image_study
"""

import argparse
import shlex
import sys
from pathlib import Path

from vqstudy.config import parse_overrides
from vqstudy.images.study import (
    VARIANTS,
    code_dim_variants,
    plot_study,
    run_study,
    run_throughput,
    study_markdown,
    throughput_markdown,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/pair_study.yaml")
    p.add_argument("--out", default="results/image_study")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}")
    p.add_argument("--code-dims", type=int, nargs="*", default=[2, 16], help="extra single-level lookup widths (single_full is 8, single_kmeans_reset is the full 64)")
    p.add_argument("--throughput-only", action="store_true", help="only compare training img/s with the vqp backend")
    p.add_argument("--throughput-steps", type=int, default=60, help="training steps per model for --throughput-only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    variants = {k: VARIANTS[k] for k in args.variants} | code_dim_variants(args.code_dims)
    overrides = parse_overrides(args.set)
    command = "python scripts/study_images.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    if args.throughput_only:
        rows = run_throughput(args.config, out, args.throughput_steps, overrides)
        (out / "throughput.md").write_text(throughput_markdown(rows, command))
        print((out / "throughput.md").read_text())
        return 0
    study = run_study(args.config, out, args.seeds, variants, overrides)
    (out / "study.md").write_text(study_markdown(study, command))
    plot_study(study, out / "study_psnr_vs_util.png")
    print((out / "study.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
