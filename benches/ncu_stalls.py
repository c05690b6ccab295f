#!/usr/bin/env python3
"""Where the Hopper forward's consumer warpgroups stall, per SASS instruction (a profiling aid).

On the GPU machine (ncu samples warp states; it locks the clocks near base):
    ncu -k regex:attn_fwd_hopper --launch-skip 3 --launch-count 1 --section WarpStateStats \
        --section SourceCounters -f -o /tmp/x target/release/attn-bench --lens 8192 --causal true \
        --iters 1 --only =dense --json /dev/null
    ncu --import /tmp/x.ncu-rep --page source --csv --print-source sass > x_sass.csv
Then, anywhere: `python3 benches/ncu_stalls.py x_sass.csv [N]`.

Prints, for the consumer code only (between the kernel's `setmaxnreg` increase and decrease, so
the producer's and storer's waits do not drown it): the stall reasons' shares of the samples,
the samples and executed instructions by opcode, and the N instructions with the most samples
(offset from the consumers' first instruction) with their two main stall reasons. It is how
session 12 found the wgmma descriptors going through `R2UR` before every product.
"""
import collections
import csv
import sys


def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


def main(path, top):
    rows = list(csv.reader(open(path)))
    start = next(i for i, r in enumerate(rows) if "Address" in r and "Source" in r)
    hdr = rows[start]
    ix = {h: j for j, h in enumerate(hdr)}
    reasons = [h for h in hdr if h.startswith("stall_") and "(Not Issued)" not in h]
    per = []
    for r in rows[start + 1:]:
        if len(r) < len(hdr):
            continue
        per.append((int(r[ix["Address"]], 16), num(r[ix["Warp Stall Sampling (All Samples)"]]),
                    r[ix["Source"]].strip().replace("\n", " "), {k: num(r[ix[k]]) for k in reasons},
                    num(r[ix["Instructions Executed"]])))
    per.sort()
    a_alloc = next(a for a, _, src, _, _ in per if "TRY_ALLOC" in src)
    a_dealloc = next(a for a, _, src, _, _ in per if "DEALLOC" in src)
    cons = [p for p in per if a_alloc <= p[0] < a_dealloc]
    all_s, c_s = sum(p[1] for p in per), sum(p[1] for p in cons)
    print(f"consumer share of samples {c_s / all_s * 100:.1f}%  consumer instructions executed {sum(p[4] for p in cons):.3g}")
    tot = collections.Counter()
    for p in cons:
        for k, v in p[3].items():
            tot[k] += v
    for k, v in tot.most_common(10):
        print(f"  {k:28s} {v / c_s * 100:5.1f}%")
    op, opn = collections.Counter(), collections.Counter()
    for _, s, src, _, n in cons:
        o = (src.split()[1] if src.startswith("@") else src.split()[0]).split(".")[0]
        op[o] += s
        opn[o] += n
    print("by opcode (samples %, executed warp-instr):")
    for k, v in op.most_common(18):
        print(f"  {k:12s} {v / c_s * 100:5.1f}%  {opn[k]:.3g}")
    print("top consumer instructions:")
    for a, s, src, d, _ in sorted(cons, key=lambda p: -p[1])[:top]:
        main2 = sorted(d.items(), key=lambda kv: -kv[1])[:2]
        why = " ".join(f"{k[6:]}={v / s * 100:.0f}%" for k, v in main2 if s)
        print(f"{s / c_s * 100:5.2f}% +{a - a_alloc:6x} {src[:58]:58s} {why}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30)
