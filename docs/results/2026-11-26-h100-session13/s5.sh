#!/bin/bash
# Session 13 S5: bench.sh's new defaults (--cool-ms 1000 --warmup-ms 25): the short workloads (1k-4k, both modes) and 32k causal.
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,uuid,power.limit,clocks.max.sm --format=csv,noheader > $OUT/card.txt
for side in ours peers; do
  if [ $side = ours ]; then export PEERS=0 OURS=1; else export OURS=0 PEERS=1; fi
  timeout 250 ./bundle/bench.sh /tmp/s5a --lens 1024,2048,4096 > $OUT/s5-short-$side.log 2>&1
  timeout 150 ./bundle/bench.sh /tmp/s5b --lens 32768 --causal true > $OUT/s5-32k-$side.log 2>&1
done
cp /tmp/s5a/results/ours.jsonl $OUT/s5-short-ours.jsonl; cp /tmp/s5a/results/peers.jsonl $OUT/s5-short-peers.jsonl
cp /tmp/s5b/results/ours.jsonl $OUT/s5-32k-ours.jsonl; cp /tmp/s5b/results/peers.jsonl $OUT/s5-32k-peers.jsonl
grep -E "^(dense|token|block|mixed|sparse)" $OUT/s5-32k-ours.log; grep -E "^(sdpa|flex)" $OUT/s5-32k-peers.log
