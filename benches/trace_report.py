#!/usr/bin/env python3
"""Summarises the Hopper forward's timeline probes (a profiling build, never the library's).

Build and run (the file is rewritten after every launch, so time one workload per file):
    ATTN_TRACE=1 CARGO_TARGET_DIR=target/trace cargo build --release -p attn-bench
    ATTN_TRACE=/tmp/token.bin target/trace/release/attn-bench --lens 32768 --causal true \
        --iters 2 --only =token_stream_64_256 --json /dev/null
    python3 benches/trace_report.py /tmp/token.bin

Layout (kernels/src/trace.rs; EVENTS is TRACE_EVENTS in common/src/abi.rs): per CTA, per role
(producer, consumer 0, consumer 1, Q loader), EVENTS 64-bit words `(code << 56) | time`; time is
the SM's clock64 but for codes 30 / 31 (consumer start / end, %globaltimer in ns, the end always
in the list's last word). The report gives, per role, the mean cycles between consecutive events
(where an item's time goes), the time from the Q loader's issue to the consumers' start of the
item (the Q load's latency), and the spread of the CTAs' end times (the tail). Needs numpy.
"""
import sys

import numpy as np

EVENTS = 16384
ROLES = 4
NAMES = {
    1: "item", 2: "kfull", 3: "Sdone", 4: "smax", 5: "PVdone", 6: "vfull", 7: "lastPV", 8: "epi", 9: "nextQ",
    10: "p_item", 11: "q_issue", 12: "p_kempty", 13: "p_vempty", 14: "p_atomic",
    20: "mask", 21: "max", 22: "exps", 30: "start", 31: "end",
}
CYCLE_CODES = set(NAMES) - {30, 31}


def load(path):
    raw = np.fromfile(path, dtype=np.uint64)
    ctas = len(raw) // (ROLES * EVENTS)
    return raw[: ctas * ROLES * EVENTS].reshape(ctas, ROLES, EVENTS)


def split(words):
    words = words[words != 0]
    return (words >> np.uint64(56)).astype(int), (words & np.uint64((1 << 56) - 1)).astype(np.int64)


def transitions(a, role):
    sums, counts, items = {}, {}, 0
    for cta in range(a.shape[0]):
        codes, t = split(a[cta, role])
        keep = np.isin(codes, list(CYCLE_CODES))
        codes, t = codes[keep], t[keep]
        items += int((codes == (10 if role == 0 else 1)).sum())
        for k in zip(codes[:-1], codes[1:], np.diff(t)):
            key = (k[0], k[1])
            sums[key] = sums.get(key, 0) + int(k[2])
            counts[key] = counts.get(key, 0) + 1
    return sums, counts, items


def report(path):
    a = load(path)
    print(f"== {path}: {a.shape[0]} CTAs")
    for role, name in enumerate(["producer", "consumer 0", "consumer 1"]):
        sums, counts, items = transitions(a, role)
        total = sum(sums.values())
        if not total:
            continue
        print(f" {name}: {items} items recorded, {total / max(items, 1):.0f} cycles per item")
        for key, s in sorted(sums.items(), key=lambda kv: -kv[1]):
            if s < 0.005 * total:
                continue
            n = counts[key]
            print(f"   {NAMES.get(key[0], key[0]):>9} -> {NAMES.get(key[1], key[1]):<9} n {n:8d} "
                  f"mean {s / n:7.0f}  {100 * s / total:5.1f}%  per item {s / max(items, 1):7.0f}")
    lat, starts, ends = [], [], []
    for cta in range(a.shape[0]):
        pc, pt = split(a[cta, 3])
        cc, ct = split(a[cta, 1])
        issued, landed = pt[pc == 11], ct[cc == 1]
        n = min(len(issued), len(landed))
        lat += list(landed[:n] - issued[:n])
        if (cc == 30).any() and (cc == 31).any():
            starts.append(ct[cc == 30][0])
            ends.append(ct[cc == 31][-1])
    if lat:
        p = np.percentile(lat, [5, 50, 95]).astype(int)
        print(f" Q load (the loader's issue -> consumers start the item): cycles p5 {p[0]} median {p[1]} p95 {p[2]}")
    if ends:
        starts, ends = np.array(starts), np.array(ends)
        span = ends.max() - starts.min()
        idle = np.sum(ends.max() - ends) / (len(ends) * span)
        print(f" kernel {span / 1e3:.1f} us by the global timer; CTAs end between {(ends.min() - starts.min()) / 1e3:.1f} "
              f"and {span / 1e3:.1f} us ({100 * idle:.1f}% of SM time idle at the tail)")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        report(p)
