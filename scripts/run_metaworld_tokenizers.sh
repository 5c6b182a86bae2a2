#!/usr/bin/env bash
# The main Meta-World tokenizer study as two independent, resumable shards (one per core), then the report.
#   bash scripts/run_metaworld_tokenizers.sh [CONFIG] [OUT]     # logs: runs/logs/<config name>_shard{0,1}.log
set -u
CONFIG=${1:-configs/metaworld_tokenizers.yaml}
OUT=${2:-results/metaworld_tokenizers}
STARTED=$(date +%s)
for i in 0 1; do
  (for try in 1 2 3; do
     python scripts/study_metaworld_tokenizers.py --config "$CONFIG" --set workers=1 --shard "$i/2" --out "$OUT" && break
     echo "shard $i try $try failed; resuming"
   done) > "runs/logs/$(basename "$CONFIG" .yaml)_shard$i.log" 2>&1 &
done
wait
python scripts/study_metaworld_tokenizers.py --config "$CONFIG" --out "$OUT" --report-only --started "$STARTED"
