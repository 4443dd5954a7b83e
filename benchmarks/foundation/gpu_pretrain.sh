#!/usr/bin/env bash
# On a lent GPU (one call, <= ~9 min): continue the foundation pretraining runs packed by pack_for_gpu.sh, with the
# same command as on the CPU (bf16 autocast is on by itself on a GPU), then bring back the newest checkpoint.
# Each run gets its own time box; a run stopped by the box still leaves its last --save-steps checkpoint.
# Files come back under $OUT (16 MB each at most: the optimizer state is split into 15 MB parts).
set -u
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
W=/tmp/foundation; mkdir -p "$W"
$PY -m pip install -q --no-deps --no-index .gpu/wheels/*.whl && $PY -m pip install -q --no-deps --no-build-isolation -e . || exit 1
tar -C "$W" -xf .gpu/data.tar
MOE=${MOE_RUN:-pre-e4}; DENSE=${DENSE_RUN:-pre-bert-g}  # the runs pack_for_gpu.sh packed (its RUNS)
for run in $MOE $DENSE pre-small-e; do [ -f ".gpu/$run.tar" ] && tar -C "$W" -xf ".gpu/$run.tar"; done
nvidia-smi --query-gpu=name,memory.total --format=csv | tail -1
# the shipped recipe (pretrain's defaults since 2026-12-06, named in full so a resume never changes it): the shipped
# MoE's run continued, the same recipe one size up (the scaling question), and the dense twin's run continued
# A run with nothing packed (a new machine has no work folder: pack_for_gpu.sh then packs no run) starts from the
# shipped weights (--from; a fresh optimizer and schedule), never from a random initialisation; --resume wins when
# a packed checkpoint is there.
R="--contrastive 0 --service 1"; CK="$PWD/checkpoints"
for spec in "pre-small-e:--config small $R:${SMALL_SECONDS:-240}" "$MOE:--from $CK/traffic-moe-mini $R:${MOE_SECONDS:-150}" \
            "$DENSE:--from $CK/bert-mini $R:${DENSE_SECONDS:-120}"; do
  run=${spec%%:*}; rest=${spec#*:}; opts=${rest%:*}; secs=${rest##*:}
  echo "== $run $(date -u +%T) for at most ${secs}s"
  ( cd "$W" && timeout "$secs" traffic-moe pretrain --data corpus-public loopback9 tls9 attack10 --out "$run" $opts \
      --max-steps 6000 --save-steps 100 --seed 0 --no-progress --resume ) > "$OUT/$run.log" 2>&1; echo "rc=$?"
  last=$(ls -d "$W/$run/checkpoints/checkpoint-"* 2>/dev/null | sort -t- -k2 -n | tail -1)
  [ -n "$last" ] || continue
  mkdir -p "$OUT/$run"
  tar -C "$W" -cf - "${last#$W/}" | split -b 15M - "$OUT/$run/ckpt.tar.part-"
  echo "$run: $(basename "$last") -> $OUT/$run (cat ckpt.tar.part-* | tar -x)"
done
