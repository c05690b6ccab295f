#!/bin/bash
# Session 13 S3: streaming 32k, plan order head-grouped (base) vs query-block-major (ATTN_QMAJOR), from idle and sustained;
# nvidia-smi sampled every 100 ms to see what moves when streaming slows under sustained load.
cd "$(dirname "$0")"
{
nvidia-smi --query-gpu=name,uuid,power.limit,clocks.max.sm,temperature.gpu,temperature.memory --format=csv,noheader
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,temperature.memory,clocks_event_reasons.active --format=csv,noheader -lms 100 > $OUT/smi.csv &
SMI=$!
for r in 1 2; do
for o in base qmajor; do
  if [ $o = qmajor ]; then export ATTN_QMAJOR=1; else unset ATTN_QMAJOR; fi
  echo "== $o r$r idle";      date +%T.%N; timeout 60 ./Q/ab --lens 32768 --causal true --iters 20 --cool-ms 1000 --queued --only stream --json /dev/null 2>&1 | grep -E "^(token|block)"
  echo "== $o r$r sustained"; date +%T.%N; timeout 60 ./Q/ab --lens 32768 --causal true --iters 20 --warmup-ms 1000 --queued --only stream --json /dev/null 2>&1 | grep -E "^(token|block)"
done
done
unset ATTN_QMAJOR
for w in 0 300 1000 3000 6000; do
  echo "== base token warmup $w"; date +%T.%N; timeout 60 ./Q/ab --lens 32768 --causal true --iters 20 --warmup-ms $w --queued --only =token_stream_64_256 --json /dev/null 2>&1 | grep -E "^token"
done
export ATTN_QMAJOR=1
for w in 3000 6000; do
  echo "== qmajor token warmup $w"; date +%T.%N; timeout 60 ./Q/ab --lens 32768 --causal true --iters 20 --warmup-ms $w --queued --only =token_stream_64_256 --json /dev/null 2>&1 | grep -E "^token"
done
for o in base qmajor; do
  if [ $o = qmajor ]; then export ATTN_QMAJOR=1; else unset ATTN_QMAJOR; fi
  echo "== $o dense-like idle"; timeout 60 ./Q/ab --lens 32768 --causal true --iters 20 --cool-ms 1000 --queued --only mixed --json /dev/null 2>&1 | grep -E "^mixed"
  timeout 60 ./Q/ab --lens 32768 --causal true --iters 20 --cool-ms 1000 --queued --only =sparse_50pct --json /dev/null 2>&1 | grep -E "^sparse"
done
kill $SMI
} > $OUT/s3.log 2>&1
tail -c 4000 $OUT/s3.log
