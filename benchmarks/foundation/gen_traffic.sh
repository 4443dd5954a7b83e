#!/bin/bash
# More pretraining traffic (run e5's corpus-gen) and a held-out re-capture, from the shared generators under
# other conditions than loopback9 / tls9 / attack10 were made with (MTU 1500, offloads off, one run each).
# Root; the generators install their Debian packages and run everything in `unshare --net` on 127.0.0.1.
# Never MTU 700: the shift benchmark's re-captures (data/shifted/) are made at 700.
#
#   sudo bash benchmarks/foundation/gen_traffic.sh WORK
#
#   WORK/gen/tls-mtu1280      tls9's 9 classes at loopback MTU 1280, 300 flows each          -> corpus-gen
#   WORK/gen/attack-run2      attack10's 10 classes, a second run (other random choices)      -> corpus-gen
#   WORK/gen/lb-mtu9000-offload  loopback9's classes at MTU 9000 with TSO/GSO/GRO on: HELD OUT of
#                             every corpus, cut to 16 packets a flow in WORK/gen/cut/ for shift.py
# then, one command, unlabelled:
#   traffic-moe prepare WORK/gen/tls-mtu1280 WORK/gen/attack-run2 --labels none --split-ratios 0.95,0.05,0 --out WORK/corpus-gen
set -euo pipefail
WORK=$(realpath "${1:?usage: gen_traffic.sh WORK}")
HERE=$(dirname "$(realpath "$0")")
T=$(realpath "$HERE/../../../shared/tools")
G=$WORK/gen
mkdir -p "$G/cut"
MTU=1280 bash "$T/gen-tls-traffic.sh" 300 "$G/tls-mtu1280"
MTU=1500 bash "$T/gen-attack-traffic.sh" 300 "$G/attack-run2"
MTU=9000 OFFLOAD=on bash "$T/gen-loopback-traffic.sh" 300 "$G/lb-mtu9000-offload"
python3 "$T/cut-flows.py" "$G/lb-mtu9000-offload" "$G/cut/loopback9-mtu9000-offload" 16
