#!/bin/bash
# Session 13 S4 (card B): the bench as users run it (bundle/bench.sh, new default --cool-ms 1000), 8k-32k causal;
# then one more 32k round from idle on GPU time (queued), ours / peers.
cd "$(dirname "$0")"
{
nvidia-smi --query-gpu=name,uuid,power.limit,clocks.max.sm,temperature.gpu,temperature.memory --format=csv,noheader
echo "== bench.sh --lens 8192,16384,32768 --causal true"
timeout 420 ./bundle/bench.sh /tmp/b --lens 8192,16384,32768 --causal true 2>&1 | grep -vE "^#|^$|Warning|warn|^\[" | tail -3
./M/ab --lens 32768 --causal true --dump-masks /tmp/m --dump-only >/dev/null 2>&1
echo "== P1 ours 32k from idle queued"; timeout 60 ./M/ab --lens 32768 --causal true --iters 20 --cool-ms 1000 --queued --json /dev/null 2>&1 | grep -E "^(dense|token|block|mixed|sparse)"
echo "== P1 peers 32k from idle queued"; timeout 120 python3 peers.py --masks /tmp/m --lens 32768 --causal true --iters 20 --cool-ms 1000 --queued --json /dev/null 2>&1 | grep -E "^(sdpa|flex)"
} > $OUT/s4.log 2>&1
cp /tmp/b/results/ours.jsonl /tmp/b/results/peers.jsonl /tmp/b/results/ours.log /tmp/b/results/peers.log /tmp/b/results/nvidia-smi.txt $OUT/
tail -c 3000 $OUT/s4.log
