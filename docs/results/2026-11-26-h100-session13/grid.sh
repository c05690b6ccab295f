#!/bin/bash
# Session 13: the full grid (bundle/bench.sh, default --cool-ms 1000). Usage: grid.sh NAME SIDE(ours|peers) [ARGS...]
cd "$(dirname "$0")"
name=$1; side=$2; shift 2
nvidia-smi --query-gpu=name,uuid,power.limit,clocks.max.sm --format=csv,noheader > $OUT/$name-card.txt
if [ $side = ours ]; then export PEERS=0; else export OURS=0; fi
timeout 560 ./bundle/bench.sh /tmp/$name "$@" > $OUT/$name-run.log 2>&1
for f in /tmp/$name/results/*.jsonl; do cp $f $OUT/$name-$(basename $f); done
tail -3 $OUT/$name-run.log
