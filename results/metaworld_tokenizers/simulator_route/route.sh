set -e
t0=$(date +%s.%N)
vqstudy actions train --config configs/actions_metaworld.yaml --set name=actions_metaworld_route
t1=$(date +%s.%N)
vqstudy policy eval --source expert --tasks mt10 --n 50 --out runs/route2/expert
t2=$(date +%s.%N)
vqstudy policy eval --source tokenized --tokenizer runs/actions/actions_metaworld_route/tokenizer --horizon 8 --tasks mt10 --n 50 --demos runs/metaworld_mt10 --out runs/route2/tokenized
t3=$(date +%s.%N)
echo "ROUTE train_s=$(echo "$t1 - $t0" | bc) expert_eval_s=$(echo "$t2 - $t1" | bc) tokenized_eval_s=$(echo "$t3 - $t2" | bc) total_s=$(echo "$t3 - $t0" | bc)"
uptime
