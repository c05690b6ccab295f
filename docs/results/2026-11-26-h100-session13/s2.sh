#!/bin/bash
# Session 13 S2: 32k from idle on GPU time (queued), ours / peers alternated; then sustained (1 s warm-up of each workload).
cd "$(dirname "$0")"
{
nvidia-smi --query-gpu=name,uuid,power.limit,clocks.max.sm,temperature.gpu,temperature.memory --format=csv,noheader
./M/ab --lens 32768 --causal true --dump-masks /tmp/m --dump-only >/dev/null 2>&1
for r in 2 3; do
echo "== P1 ours 32k from idle queued r$r"; timeout 60 ./M/ab --lens 32768 --causal true --iters 20 --cool-ms 1000 --queued --json /dev/null 2>&1 | grep -E "^(dense|token|block|mixed|sparse)"
echo "== P1 peers 32k from idle queued r$r"; timeout 120 python3 peers.py --masks /tmp/m --lens 32768 --causal true --iters 20 --cool-ms 1000 --queued --json /dev/null 2>&1 | grep -E "^(sdpa|flex)"
done
echo "== P2 ours 32k sustained (warmup 1000)"; timeout 60 ./M/ab --lens 32768 --causal true --iters 20 --warmup-ms 1000 --queued --json /dev/null 2>&1 | grep -E "^(dense|token|block|mixed|sparse)"
echo "== P2 peers 32k sustained (warmup 1000)"; timeout 150 python3 peers.py --masks /tmp/m --lens 32768 --causal true --iters 20 --warmup-ms 1000 --queued --json /dev/null 2>&1 | grep -E "^(sdpa|flex)"
nvidia-smi --query-gpu=temperature.gpu,temperature.memory --format=csv,noheader
} > $OUT/s2.log 2>&1
tail -c 2500 $OUT/s2.log
