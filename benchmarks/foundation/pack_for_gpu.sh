#!/usr/bin/env bash
# Pack what benchmarks/foundation/gpu_pretrain.sh needs into .gpu/ (ignored by git; the device tool's `carry`):
# the wheels the GPU image lacks (datasets, dill, multiprocess for its Python 3.12, dpkt), the prepared corpus,
# and the newest resumable checkpoint of each pretraining run (so the GPU continues it exactly).
#   bash benchmarks/foundation/pack_for_gpu.sh WORK      (WORK: make_corpus.py's --work, e.g. /work/data/foundation)
# Then: run(command="bash benchmarks/foundation/gpu_pretrain.sh", carry=[".gpu"], timeout_s=560)
set -euo pipefail
WORK="${1:?usage: pack_for_gpu.sh WORK}"
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/wheels
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/wheels datasets dill multiprocess dpkt
tar -C "$WORK" -cf .gpu/data.tar corpus-public loopback9 tls9 attack10
# the newest run of each line (gpu_pretrain.sh continues them; a missing one starts fresh): the shipped MoE's run,
# the dense twin's, and the same recipe one size up
for run in ${RUNS:-pre-e4 pre-bert-g pre-small-e}; do
  last=$(ls -d "$WORK/$run/checkpoints/checkpoint-"* 2>/dev/null | sort -t- -k2 -n | tail -1 || true)
  [ -n "$last" ] && tar -C "$WORK" -cf ".gpu/$run.tar" "${last#$WORK/}" && echo "packed $last"
done
du -sh .gpu; du -sh --exclude=.venv --exclude=.git --exclude=runs --exclude=.gpu .
