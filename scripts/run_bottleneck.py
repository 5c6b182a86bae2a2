"""Run the closed-loop bottleneck grid committed in results/bottleneck_metaworld/ (issue 10).

    python scripts/run_bottleneck.py                      # seed 0, the whole grid of configs/policy_grid_metaworld.yaml
    python scripts/run_bottleneck.py --ends-seed 1        # seed 1 on the poorest and best rungs, 4 heads (also 2)
    python scripts/run_bottleneck.py --fill-seed 1        # seed 1: flow, K=1024, AR on the ends; mlp, K=256 in the middle
    python scripts/run_bottleneck.py --report A B --out results/bottleneck_metaworld   # merge rows, write the report
    python scripts/run_bottleneck.py --report S0 S1 S2 --config configs/policy_grid_mt10.yaml --out results/bottleneck_mt10
    vqstudy policy grid --config configs/policy_grid_metaworld.yaml --set seeds=[0] --set encoders=[...] \
        --set heads=[...] --out DIR                       # any other slice of the grid, merged the same way

The old open-loop robosuite study (`vqstudy bottleneck`, results/bottleneck/) is kept as it was.
"""

import argparse
import json
import sys
from pathlib import Path

from vqstudy.cli import main
from vqstudy.policy.grid import load_grid_config

CONFIG = "configs/policy_grid_metaworld.yaml"
ENDS = ["--set", "encoders=[{name: proj2, kind: random_proj, out_dim: 2}, "
         "{name: state, kind: identity}]", "--set",
         "heads=[{name: mlp, kind: mlp}, {name: parallel_vq16, kind: parallel, tokenizer: vq16}, "
         "{name: parallel_vq4096, kind: parallel, tokenizer: vq4096}, "
         "{name: parallel_vq256, kind: parallel, tokenizer: vq256}]"]
FILL = ["--set", "heads=[{name: flow, kind: flow, rungs: [proj2, state]}, "
        "{name: parallel_vq1024, kind: parallel, tokenizer: vq1024, rungs: [proj2, state]}, "
        "{name: ar_vq256, kind: ar, tokenizer: vq256, rungs: [proj2, state]}, "
        "{name: mlp, kind: mlp, rungs: [proj6, proj16]}, "
        "{name: parallel_vq256, kind: parallel, tokenizer: vq256, rungs: [proj6, proj16]}]"]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ends-seed", type=int, default=None, help="run only the ends of the ladder, 4 heads, this seed")
    parser.add_argument("--fill-seed", type=int, default=None,
                        help="the rows --ends-seed leaves out for this seed: flow, K=1024, AR at the ends, mlp and K=256 in the middle")
    parser.add_argument("--report", nargs="+", help="grid folders whose rows.jsonl are merged into --out")
    parser.add_argument("--out", default="runs/bottleneck_metaworld")
    parser.add_argument("--config", default=CONFIG, help=f"grid config of the report (default {CONFIG})")
    args = parser.parse_args()
    if args.report:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        ladder = [e.name for e in load_grid_config(args.config).encoders]
        rows, seen = [], set()
        for d in args.report:  # the first folder's row wins when two ran the same (seed, rung, head)
            for line in (Path(d) / "rows.jsonl").read_text().splitlines():
                row = json.loads(line)
                key = (row["seed"], row["encoder"], row["head"])
                if key not in seen:
                    seen.add(key)
                    rows.append(json.dumps({**row, "rung": ladder.index(row["encoder"])}))  # index in the full ladder
        (out / "rows.jsonl").write_text("\n".join(rows) + "\n")
        sys.exit(main(["policy", "grid", "--config", args.config, "--report-only", "--out", str(out)]))
    if args.fill_seed is not None:
        extra = ["--set", f"seeds=[{args.fill_seed}]", *FILL, "--out", f"{args.out}_fill{args.fill_seed}"]
    elif args.ends_seed is not None:
        extra = ["--set", f"seeds=[{args.ends_seed}]", *ENDS, "--out", f"{args.out}_seed{args.ends_seed}"]
    else:
        extra = ["--out", args.out]
    sys.exit(main(["policy", "grid", "--config", CONFIG, *extra]))
