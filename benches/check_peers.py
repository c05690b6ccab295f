"""Checks peers.py against attn-bench on the CPU (torch, no GPU needed): for every workload of a
manifest, the FlexAttention BlockMask that peers.py builds, run through compiled flex_attention,
must give SDPA's output under the token-level mask written here from docs/semantics.md, and that
mask must hold exactly the visited pairs that attn-bench counted.

    attn-bench --dump-masks /tmp/masks --dump-only --lens 1024
    python3 benches/check_peers.py /tmp/masks 1024
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np, torch
import peers

masks, S = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1024
flex = peers.compiled_flex()
torch.manual_seed(0)
n = 0
for (causal, s), rows in peers.load_manifest(masks, {S}, [True, False], "").items():
    q, k, v = (torch.randn(1, peers.H, s, 16) for _ in range(3))
    i = torch.arange(s)[:, None]; j = torch.arange(s)[None, :]
    tril = j <= i
    for row in rows:
        w = row["workload"]
        # The token-level mask written straight from semantics.md's table (Sq = Sk).
        if row.get("mask_file"):
            kept = torch.from_numpy(np.fromfile(masks / row["mask_file"], dtype=np.uint8).reshape(row["mask_shape"])) != 0
            tok = kept.repeat_interleave(128, 1).repeat_interleave(128, 2)[:, :s, :s]
        elif w == "dense":
            tok = torch.ones(peers.H, s, s, dtype=torch.bool)
        elif w.startswith("token"):
            tok = ((j < 64) | ((i - 256 < j) & (j <= i))).expand(peers.H, s, s)
        elif w.startswith("block"):
            tok = ((j // 128 < 1) | ((i // 128 - 3 < j // 128) & (j // 128 <= i // 128))).expand(peers.H, s, s)
        else:
            token = (j < 64) | ((i - 256 < j) & (j <= i))
            tok = torch.stack([torch.ones(s, s, dtype=torch.bool) if h % 2 == 0 else token for h in range(peers.H)])
        if causal:
            tok = tok & tril
        pairs = int(tok.sum())
        bm = peers.flex_block_mask(row, masks, s, causal, "cpu")
        o_flex = flex(q, k, v, block_mask=bm)
        o_ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=tok[None])
        err = (o_flex - o_ref).abs().max().item()
        ok = pairs == row["visited_pairs"] and err < 1e-4
        print(f"{w:<28} S={s} causal={causal}: pairs {pairs} (manifest {row['visited_pairs']}), flex vs SDPA {err:.1e} {'OK' if ok else 'MISMATCH'}", flush=True)
        assert ok
        n += 1
graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
print(f"({graphs} graphs compiled)")
print(f"{n} passed, 0 failed")

# peers.main() end to end on the CPU, CUDA calls replaced by stand-ins: every manifest row must come
# back as a JSON line with the same keys as attn-bench's, timed or with an error.
import json, subprocess, tempfile, time

class CpuEvent:
    def __init__(self, enable_timing=True): self.t = None
    def record(self): self.t = time.perf_counter()
    def synchronize(self): pass
    def elapsed_time(self, other): return 1e3 * (other.t - self.t)

peers.DEVICE = "cpu"
torch.cuda.get_device_name = lambda *a: "CPU stand-in"
torch.cuda.mem_get_info = lambda *a: (1 << 40, 1 << 40)
torch.cuda.Event = CpuEvent
torch.cuda.empty_cache = lambda: None
out = Path(tempfile.mkdtemp()) / "peers.jsonl"
sys.argv = ["peers.py", "--masks", str(masks), "--lens", str(S), "--causal", "true", "--iters", "2", "--json", str(out), "--variant", "x:1:2"]
peers.main()
recs = [json.loads(l) for l in open(out)]
rows = peers.load_manifest(masks, {S}, [True], "")[(True, S)]
assert len(recs) == len(rows) + 2, (len(recs), len(rows))  # flex for every row, two SDPA backends for dense
for r in recs:
    assert ("ms" in r and r["useful_tflops"] > 0) or "error" in r, r
    assert {"impl", "card", "workload", "S", "causal", "kept_fraction", "kept_blocks", "visited_pairs"} <= r.keys(), r
# SDPA's cuDNN backend has no CPU kernel; everything else must have run.
assert all(r["impl"] == "sdpa_cudnn" for r in recs if "error" in r), [r for r in recs if "error" in r]
print(f"peers.main() on the CPU: {len(recs)} JSON lines ({sum('error' in r for r in recs)} with an error)")
