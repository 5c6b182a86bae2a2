"""Nearest-code search benchmark; writes results/bench_nearest.{md,json}. See vqstudy/bench.py."""

from vqstudy.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
