#!/bin/bash
# Robustness with defensive flow assembly (README "Defensive flow assembly"; measured 2026-11-28 on a
# 2-core CPU, ~40 min for the fine-tuning, ~6 min for the robustness runs; the generalisation seeds 1 and 2
# of the adversarial MoE: the same finetune command with --seed 1 / --seed 2).
# Needs the pretrained checkpoints and compact-layout all-data checkpoints of `benchmarks/accuracy/real_tasks.py`
# (here under runs/real2) and ../shared/data; writes under runs/norm.
set -e
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
T=.venv/bin/traffic-moe
mkdir -p runs/norm/logs runs/norm/ckpt runs/norm/rob
for t in attack10 tls9; do
  $T prepare ../shared/data/$t --out runs/norm/data-$t --labels file --large-groups any --store-packets 16 --no-progress
  $T prepare ../shared/data/$t --out runs/norm/data-$t-co --labels file --large-groups any --store-packets 16 --tcp-coalesce --no-progress
  # training split capped at 200 flows per class, as in real_tasks.py
  .venv/bin/python -c "
import shutil, sys
from datasets import DatasetDict, load_from_disk
from traffic_moe_hf.recipes.common import few_shot
d = load_from_disk('runs/norm/data-$t-co')
DatasetDict({'train': few_shot(d['train'], 200, 0), 'validation': d['validation'], 'test': d['test']}).save_to_disk('runs/norm/cap-$t-co')
shutil.copyfile('runs/norm/data-$t-co/report.json', 'runs/norm/cap-$t-co/report.json')"
done
$T prepare data/shifted/tls9-mtu700 --out runs/norm/data-tls9-shifted-co --labels file --split none --tcp-coalesce --no-progress

# 1. TCP normalisation only: the existing checkpoints on the re-prepared test splits (same inputs)
for t in attack10 tls9; do
  $T robustness --data runs/norm/data-$t --model runs/real2/adv/$t-moe-adv --name moe_compact_adv \
    --model runs/real2/adv/$t-dense-adv --name dense_compact_adv --model runs/real2/ckpt/$t/traffic-moe-pretrained --name moe_compact \
    --model runs/real2/ckpt/$t/dense-bert-pretrained --name dense_compact --json runs/norm/rob/$t.json --md runs/norm/rob/$t.md --plot runs/norm/rob/$t.png
done

# 2. write coalescing: fine-tune again on the coalesced data (clean and adversarial, MoE and dense)
F="$T finetune --epochs 6 --batch-size 32 --lr 2e-3 --patience 3 --no-progress --head-init random"
A="--adversarial --adv-copies 3 --adv-eps 0"
for t in tls9 attack10; do
  D=runs/norm/cap-$t-co
  $F --data $D --out runs/norm/ckpt/$t-moe-adv --from runs/real2/pretrained-moe $A > runs/norm/logs/$t-moe-adv.log 2>&1 &
  $F --data $D --out runs/norm/ckpt/$t-moe --from runs/real2/pretrained-moe > runs/norm/logs/$t-moe.log 2>&1
  $F --data $D --out runs/norm/ckpt/$t-dense --from runs/real2/pretrained-dense --dense > runs/norm/logs/$t-dense.log 2>&1
  wait
  $F --data $D --out runs/norm/ckpt/$t-dense-adv --from runs/real2/pretrained-dense --dense $A > runs/norm/logs/$t-dense-adv.log 2>&1
done
for t in attack10 tls9; do
  C=runs/norm/ckpt
  $T robustness --data runs/norm/data-$t-co --model $C/$t-moe-adv --name moe_co_adv --model $C/$t-dense-adv --name dense_co_adv \
    --model $C/$t-moe --name moe_co --model $C/$t-dense --name dense_co --json runs/norm/rob/$t-co.json --md runs/norm/rob/$t-co.md --plot runs/norm/rob/$t-co.png
  for m in moe-adv dense-adv moe dense; do
    $T evaluate --data runs/norm/cap-$t-co --model $C/$t-$m --split test --json runs/norm/test-$t-$m.json --no-audit
  done
done
for m in moe-adv dense-adv moe dense; do
  $T evaluate --data runs/norm/data-tls9-shifted-co --model runs/norm/ckpt/tls9-$m --split test --json runs/norm/gen-tls9-$m.json --no-audit
done
