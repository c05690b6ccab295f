#!/bin/bash
# Session 13 S1 (card A, part 1): main (a8c2306) against the peers under the bench order with a 1 s cool-down before
# every workload (sync timing: the proposed bench default), 8k-32k; then 32k from idle on GPU time (queued), round 1.
cd "$(dirname "$0")"
{
nvidia-smi --query-gpu=name,uuid,power.limit,clocks.max.sm,temperature.gpu,temperature.memory --format=csv,noheader
./M/ab --lens 8192,16384,32768 --causal true --dump-masks /tmp/m --dump-only >/dev/null 2>&1
echo "== P3 ours, cool 1000, sync, 8k-32k"; timeout 150 ./M/ab --lens 8192,16384,32768 --causal true --iters 20 --cool-ms 1000 --json /dev/null 2>&1 | grep -E "^(dense|token|block|mixed|sparse)"
echo "== P3 peers, cool 1000, sync, 8k-32k"; timeout 260 python3 peers.py --masks /tmp/m --lens 8192,16384,32768 --causal true --iters 20 --cool-ms 1000 --json /dev/null 2>&1 | grep -vE "^#|^$|Warning|warn|^\["
nvidia-smi --query-gpu=temperature.gpu,temperature.memory --format=csv,noheader
echo "== P1 ours 32k from idle queued r1"; timeout 60 ./M/ab --lens 32768 --causal true --iters 20 --cool-ms 1000 --queued --json /dev/null 2>&1 | grep -E "^(dense|token|block|mixed|sparse)"
echo "== P1 peers 32k from idle queued r1"; timeout 120 python3 peers.py --masks /tmp/m --lens 32768 --causal true --iters 20 --cool-ms 1000 --queued --json /dev/null 2>&1 | grep -vE "^#|^$|Warning|warn|^\["
} > $OUT/s1.log 2>&1
tail -c 5000 $OUT/s1.log
