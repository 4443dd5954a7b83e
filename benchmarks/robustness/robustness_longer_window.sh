#!/bin/bash
# Robustness with a longer, narrower window: 16 packets x 30 tokens (`prepare --max-packets 16
# --packet-bytes 30 --tcp-coalesce`) against the default 8 packets x 64 tokens, tls9 (README "A longer
# window"; measured 2026-11-28 on a 2-core CPU: each adversarial fine-tuning ~30 min beside another job,
# clean ~8 min, each robustness run ~8 min, the ceiling runs ~3 min).
# Models are trained from scratch (tiny preset), so no pretrained checkpoint is needed; needs ../shared/data.
# Writes under runs/exp. (The measured runs were started one by one in this order; robustness per model
# is the same whether models share a run: attacks are seeded per flow.)
set -e
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
T=.venv/bin/traffic-moe
E=runs/exp
mkdir -p $E/rob
$T prepare ../shared/data/tls9 --out $E/tls9-p16b30 --labels file --large-groups any --max-packets 16 --packet-bytes 30 --store-packets 32 --tcp-coalesce --no-progress
$T prepare ../shared/data/tls9 --out $E/tls9-p8b64 --labels file --large-groups any --store-packets 32 --tcp-coalesce --no-progress
$T prepare data/shifted/tls9-mtu700 --out $E/shifted-p16b30 --labels file --split none --max-packets 16 --packet-bytes 30 --tcp-coalesce --no-progress
$T prepare data/shifted/tls9-mtu700 --out $E/shifted-p8b64 --labels file --split none --tcp-coalesce --no-progress

ft() {  # DATA OUT [finetune args]: fine-tune from scratch, evaluate on the test split
  local D=$1 O=$2; shift 2
  $T finetune --data $D --out $O --config tiny --epochs 6 --batch-size 32 --lr 2e-3 --patience 3 --no-progress \
    --head-init random "$@" > $O.log 2>&1
  $T evaluate --data $D --model $O --split test --json $O.test.json --no-audit >> $O.log 2>&1
}
A="--adversarial --adv-copies 3 --adv-eps 0"
ft $E/tls9-p16b30 $E/moe-adv-p16 $A &
ft $E/tls9-p8b64 $E/moe-adv-p8 $A
ft $E/tls9-p16b30 $E/dense-adv-p16 --dense $A
wait
ft $E/tls9-p16b30 $E/moe-clean-p16 &
ft $E/tls9-p16b30 $E/moe-adv-p16-s1 --seed 1 $A
wait
# attack10 at 16 packets x 64 tokens (training split capped at 100 flows per class, 4 epochs)
$T prepare ../shared/data/attack10 --out $E/attack10-p16b64 --labels file --large-groups any --max-packets 16 --store-packets 32 --tcp-coalesce --no-progress
.venv/bin/python -c "
import shutil
from datasets import DatasetDict, load_from_disk
from traffic_moe_hf.recipes.common import few_shot
d = load_from_disk('$E/attack10-p16b64')
DatasetDict({'train': few_shot(d['train'], 100, 0), 'validation': d['validation'], 'test': d['test']}).save_to_disk('$E/a10cap-p16b64')
shutil.copyfile('$E/attack10-p16b64/report.json', '$E/a10cap-p16b64/report.json')"
ft $E/a10cap-p16b64 $E/a10-moe-adv-p16 --epochs 4 $A
ft $E/a10cap-p16b64 $E/a10-moe-adv-p16-pad --epochs 4 $A --adv-attacks padding,headers,chaff

$T robustness --data $E/tls9-p16b30 --model $E/moe-adv-p16 --name moe_adv_p16 --model $E/moe-adv-p16-s1 --name moe_adv_p16_s1 \
  --model $E/dense-adv-p16 --name dense_adv_p16 --model $E/moe-clean-p16 --name moe_clean_p16 \
  --json $E/rob/p16.json --md $E/rob/p16.md --plot $E/rob/p16.png &
$T robustness --data $E/tls9-p8b64 --model $E/moe-adv-p8 --name moe_adv_p8 --json $E/rob/p8.json --md $E/rob/p8.md
$T robustness --data $E/a10cap-p16b64 --model $E/a10-moe-adv-p16 --name a10_moe_adv_p16 --json $E/rob/a10-p16.json --md $E/rob/a10-p16.md
$T robustness --data $E/a10cap-p16b64 --model $E/a10-moe-adv-p16-pad --name a10_moe_adv_p16_pad --json $E/rob/a10-p16-pad.json --md $E/rob/a10-p16-pad.md
wait
for m in moe-adv-p16 moe-adv-p16-s1; do
  $T evaluate --data $E/shifted-p16b30 --model $E/$m --split test --json $E/gen-$m.json --no-audit
done
$T evaluate --data $E/shifted-p8b64 --model $E/moe-adv-p8 --split test --json $E/gen-moe-adv-p8.json --no-audit

# what any learner can recover under padding, by window length (direction, IP length, flags only)
for k in 8 16 32; do
  .venv/bin/python benchmarks/robustness/robustness_ceiling.py $E/tls9-p16b30 $E/attack10-p16b64 --packets $k --payload-bytes 0 \
    --attacks padding --no-mixed --json benchmarks/robustness/results/robustness_ceiling_padding_${k}packets.json \
    --md benchmarks/robustness/results/robustness_ceiling_padding_${k}packets.md
done

# attack10 16 x 64, added later the same day: the clean fine-tuning counterpart, the dense baseline trained
# like the MoE (needs the dense position-embedding fix: 16 x 64 flows are 1048 tokens once padded), a second
# MoE seed, and the padding ceiling of a forest trained like --adversarial (budget unknown, "forest mixed")
ft $E/a10cap-p16b64 $E/a10-moe-clean-p16 --epochs 4 &
ft $E/a10cap-p16b64 $E/a10-dense-adv-p16 --dense --epochs 4 $A
wait
ft $E/a10cap-p16b64 $E/a10-moe-adv-p16-s1 --seed 1 --epochs 4 $A
$T robustness --data $E/a10cap-p16b64 --model $E/a10-moe-clean-p16 --name a10_moe_clean_p16 --json $E/rob/a10-clean-p16.json --md $E/rob/a10-clean-p16.md
$T robustness --data $E/a10cap-p16b64 --model $E/a10-dense-adv-p16 --name a10_dense_adv_p16 --json $E/rob/a10-dense-p16.json --md $E/rob/a10-dense-p16.md
$T robustness --data $E/a10cap-p16b64 --model $E/a10-moe-adv-p16-s1 --name a10_moe_adv_p16_s1 --json $E/rob/a10-p16-s1.json --md $E/rob/a10-p16-s1.md
.venv/bin/python benchmarks/robustness/robustness_ceiling.py $E/attack10-p16b64 --packets 16 --attacks padding \
  --json benchmarks/robustness/results/robustness_ceiling_padding_attack10_16packets_mixed.json \
  --md benchmarks/robustness/results/robustness_ceiling_padding_attack10_16packets_mixed.md
# a second seed of the dense baseline on tls9 16 x 30 (added with the attack10 rows)
ft $E/tls9-p16b30 $E/dense-adv-p16-s1 --dense --seed 1 $A
$T robustness --data $E/tls9-p16b30 --model $E/dense-adv-p16-s1 --name dense_adv_p16_s1 --json $E/rob/p16-dense-s1.json --md $E/rob/p16-dense-s1.md
