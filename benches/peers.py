"""Times the peers on attn-bench's workloads, on the same shapes (B=1, H=32, D=128, bf16) and masks:
PyTorch SDPA with the flash and cuDNN backends (dense only) and FlexAttention with the equivalent
BlockMask for every workload. CUDA events, warm-up, median of --iters. Progress to stderr, a table
to stdout, JSON lines with attn-bench's keys to --json.

The workloads come from attn-bench, which writes them (and the random block masks) without a GPU:

    attn-bench --dump-masks MASKS --dump-only [--lens ...] [--causal ...]
    python3 benches/peers.py --masks MASKS [--lens ...] [--causal ...] [--only SUBSTR] [--no-flex] [--json peers.jsonl]

MASKS/manifest.jsonl has one line per (workload, S, causal) with the exact visited-pair counts, so
both programs report the same kept fractions and useful TFLOP/s; a block-sparse workload names its
mask file, raw u8 [H, S/128, S/128] (head h uses slice h), read here with numpy.fromfile.

FlexAttention's BlockMasks: block-sparse masks (and dense, as a mask with every block kept) are
turned into one directly with BlockMask.from_kv_blocks (blocks below the diagonal are "full",
diagonal blocks under causal are "partial" and take the causal mask_mod), which costs O((S/128)^2)
and works at any S. Token and block streaming go through create_block_mask with their mask_mod,
compiled so that it never materialises the [S, S] mask, broadcast over the heads; the mixed
workload takes each head's block lists from the dense and the token-streaming mask. Every failure
(out of memory, a compile error) is recorded per workload and the run goes on.

Compiling takes most of the time: about six graphs per (S, causal), each new length recompiles
(dynamic=False, for the fastest kernels). benches/check_peers.py checks these BlockMasks against
attn-bench's counts on the CPU.
"""
import argparse, json, statistics, sys, time, warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, D, BLK = 32, 128, 128
DEVICE = "cuda"  # check_peers.py swaps in the CPU to smoke-test main()
SINK, LOCAL = 64, 256             # token streaming, as attn-bench's token_stream_64_256
SINK_BLOCKS, LOCAL_BLOCKS = 1, 3  # block streaming, as attn-bench's block_stream_1_3


# mask_mods in the semantics of docs/semantics.md with Sq = Sk (so bottom-right alignment is the
# plain diagonal). Defined once at module level: torch.compile guards on the function object, so
# reusing the same one avoids a recompile per call.
def causal_mod(b, h, q, k):
    return k <= q

def full_mod(b, h, q, k):
    return k >= 0

def token_mod(b, h, q, k):
    # The window ends at the query itself whether or not causal is set.
    return (k < SINK) | ((q - LOCAL < k) & (k <= q))

def token_causal_mod(b, h, q, k):
    return token_mod(b, h, q, k) & (k <= q)

def block_mod(b, h, q, k):
    qb, kb = q // BLK, k // BLK
    return (kb < SINK_BLOCKS) | ((qb - LOCAL_BLOCKS < kb) & (kb <= qb))

def block_causal_mod(b, h, q, k):
    return block_mod(b, h, q, k) & (k <= q)

def mixed_mod(b, h, q, k):
    return torch.where(h % 2 == 0, full_mod(b, h, q, k), token_mod(b, h, q, k))

def mixed_causal_mod(b, h, q, k):
    return torch.where(h % 2 == 0, causal_mod(b, h, q, k), token_causal_mod(b, h, q, k))

# workload -> (mask_mod without causal, with causal)
FORMULA_MODS = {
    "token_stream_64_256": (token_mod, token_causal_mod),
    "block_stream_1_3": (block_mod, block_causal_mod),
    "mixed_half_dense_half_token": (mixed_mod, mixed_causal_mod),
}


def median_ms(fn, iters, warmup_s=0.0, cool_s=0.0, queued=False):
    """Median of `iters` CUDA-event timings after at least 3 calls and `warmup_s` seconds of
    warm-up (--warmup-ms: long enough, ~300 ms, the clock settles under the power cap first, as
    attn-bench's --warmup-ms does), the GPU idle for `cool_s` seconds before (--cool-ms, as
    attn-bench's). `queued` (--queued, as attn-bench's): every timed call is enqueued before any
    time is read, so the host's work for a call overlaps the GPU's work on the one before."""
    if cool_s > 0:
        torch.cuda.synchronize()
        time.sleep(cool_s)
    t0, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - t0 < warmup_s:
        fn()
        n += 1
        if n % 4 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        if not queued:
            b.synchronize()
        events.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in events)


def ordered_blocks(m):
    """Bool [H, nq, nk] -> (counts [1, H, nq], indices [1, H, nq, nk]) int32 in BlockMask's layout:
    each row's kept blocks first, in ascending order (a stable descending sort of 0/1)."""
    m = m.to(torch.int32)
    counts = m.sum(-1, dtype=torch.int32)
    idx = torch.argsort(m, dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[None].contiguous(), idx[None].contiguous()


def block_mask_from_blocks(kept, s, causal):
    """A BlockMask for a block-level mask kept: bool [heads, nq, nk], built without a mask_mod sweep."""
    from torch.nn.attention.flex_attention import BlockMask
    nq, nk = kept.shape[-2:]
    if causal:
        qb = torch.arange(nq, device=kept.device)[:, None]
        kb = torch.arange(nk, device=kept.device)[None, :]
        # attn-bench's masks hold nothing above the diagonal under causal; drop it anyway.
        partial, full = kept & (kb == qb), kept & (kb < qb)
    else:
        partial, full = torch.zeros_like(kept), kept
    kv_n, kv_i = ordered_blocks(partial)
    full_n, full_i = ordered_blocks(full)
    return BlockMask.from_kv_blocks(kv_n, kv_i, full_n, full_i, BLOCK_SIZE=BLK,
                                    mask_mod=causal_mod if causal else None, seq_lengths=(s, s))


def all_blocks(heads, s, device):
    nb = -(-s // BLK)
    return torch.ones(heads, nb, nb, dtype=torch.bool, device=device)


def flex_block_mask(row, masks_dir, s, causal, device):
    if row.get("mask_file"):
        kept = np.fromfile(masks_dir / row["mask_file"], dtype=np.uint8).reshape(row["mask_shape"])
        return block_mask_from_blocks(torch.from_numpy(kept).to(device) != 0, s, causal)
    if row["workload"] == "dense":
        # The block-sparse workloads' BlockMask with every block kept: dense then runs the same
        # compiled graph as they do (one compile fewer per length).
        return block_mask_from_blocks(all_blocks(H, s, device), s, causal)
    if row["workload"] != "mixed_half_dense_half_token":
        return formula_block_mask(row["workload"], s, causal, device)
    # Even heads dense, odd heads token streaming: each head takes its block lists from one of the
    # two single-head masks, so that no mask builder sweeps H x S x S.
    from torch.nn.attention.flex_attention import BlockMask
    dense = block_mask_from_blocks(all_blocks(1, s, device), s, causal)
    token = formula_block_mask("token_stream_64_256", s, causal, device)
    even = torch.arange(H, device=device) % 2 == 0

    def per_head(a, b):  # [1, 1, ...] each -> [1, H, ...]
        shape = (1, H) + tuple(a.shape[2:])
        return torch.where(even.view((1, H) + (1,) * (a.dim() - 2)), a.expand(shape), b.expand(shape)).contiguous()

    return BlockMask.from_kv_blocks(
        per_head(dense.kv_num_blocks, token.kv_num_blocks), per_head(dense.kv_indices, token.kv_indices),
        per_head(dense.full_kv_num_blocks, token.full_kv_num_blocks), per_head(dense.full_kv_indices, token.full_kv_indices),
        BLOCK_SIZE=BLK, mask_mod=FORMULA_MODS[row["workload"]][int(causal)], seq_lengths=(s, s))


def formula_block_mask(workload, s, causal, device):
    """create_block_mask for a workload whose heads all share one mask_mod (broadcast over heads)."""
    from torch.nn.attention.flex_attention import create_block_mask
    mod = FORMULA_MODS[workload][int(causal)]
    try:
        # _compile=True fuses the mask_mod into the block reduction: no [S, S] tensor. Deprecated in
        # recent torch (which suggests torch.compile(create_block_mask)) but still there in 2.11.
        return create_block_mask(mod, None, None, s, s, device=device, _compile=True)
    except TypeError:
        return torch.compile(create_block_mask)(mod, None, None, s, s, device=device)


def compiled_flex():
    """flex_attention compiled for fixed shapes, set up so that it can never silently run unfused."""
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention
    # Each (mask_mod, S) is a new graph. Past dynamo's default limit of 8 recompiles it gives up and
    # flex_attention runs unfused, materialising the [H, S, S] scores: that, not the mask, is what
    # ran out of memory at 32k before. Raise the limits, and make the fallback an error so that it
    # is recorded as a failure instead of being timed.
    for name, value in [("recompile_limit", 1 << 12), ("cache_size_limit", 1 << 12),
                        ("accumulated_recompile_limit", 1 << 16), ("accumulated_cache_size_limit", 1 << 16)]:
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, value)
    warnings.filterwarnings("error", message="flex_attention called without torch.compile")
    warnings.filterwarnings("ignore", message="_compile flag on create_block_mask")
    return torch.compile(flex_attention, dynamic=False)


def load_manifest(masks_dir, lens, causals, only):
    """Manifest rows grouped by (causal, S) in attn-bench's order, filtered by the flags."""
    groups = OrderedDict()
    with open(masks_dir / "manifest.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if (lens and row["S"] not in lens) or row["causal"] not in causals:
                continue
            if only and only not in row["workload"]:
                continue
            groups.setdefault((row["causal"], row["S"]), []).append(row)
    return groups


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks", required=True, type=Path, help="directory written by attn-bench --dump-masks")
    ap.add_argument("--lens", default="", help="comma-separated S (default: every S in the manifest)")
    ap.add_argument("--causal", default="both", choices=["true", "false", "both"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup-ms", type=float, default=0.0, help="warm-up time before each timing (besides 3 calls)")
    ap.add_argument("--cool-ms", type=float, default=0.0, help="idle time before each workload")
    ap.add_argument("--queued", action="store_true", help="enqueue every timed call before reading the times (as attn-bench's)")
    ap.add_argument("--only", default="", help="only workloads whose name contains this")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--json", default="peers.jsonl")
    # bench.sh hands both programs the same arguments: ignore the ones only attn-bench knows (--variant).
    a, unknown = ap.parse_known_args()
    if unknown:
        print(f"peers.py: ignoring {' '.join(unknown)}", file=sys.stderr)
    lens = {int(x) for x in a.lens.split(",") if x}
    causals = {"true": [True], "false": [False], "both": [True, False]}[a.causal]
    groups = load_manifest(a.masks, lens, causals, a.only)
    if not groups:
        sys.exit(f"peers.py: nothing selected in {a.masks / 'manifest.jsonl'}")
    missing = lens - {s for _, s in groups}
    if missing:
        print(f"peers.py: S={sorted(missing)} not in the manifest: rerun attn-bench --dump-masks with them", file=sys.stderr)

    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("peers.py: no CUDA device")
    card = torch.cuda.get_device_name()
    print(f"device: {card}, torch {torch.__version__}", flush=True)
    flex = None if a.no_flex else compiled_flex()

    out = open(a.json, "w")
    print(f"{'impl':<11} {'workload':<28} {'S':>6} {'causal':>6} {'kept%':>7} {'ms':>9} {'TF/s':>8} {'TF/s*':>8}", flush=True)

    def record(row, impl, ms=None, error=None):
        s, causal = row["S"], row["causal"]
        rec = {k: v for k, v in row.items() if k not in ("mask_file", "mask_shape")}
        rec.update(impl=impl, card=card, iters=a.iters)
        if a.warmup_ms > 0:
            rec["warmup_ms"] = a.warmup_ms
        if a.cool_ms > 0:
            rec["cool_ms"] = a.cool_ms
        if a.queued:
            rec["queued"] = True
        if error is None:
            dense_flops = 4 * H * D * s * s * (0.5 if causal else 1.0)
            rec.update(ms=ms, useful_tflops=4 * D * row["visited_pairs"] / (ms * 1e9), dense_equiv_tflops=dense_flops / (ms * 1e9))
            print(f"{impl:<11} {row['workload']:<28} {s:>6} {str(causal):>6} {100 * row['kept_fraction']:>7.2f} "
                  f"{ms:>9.3f} {rec['useful_tflops']:>8.1f} {rec['dense_equiv_tflops']:>8.1f}", flush=True)
        else:
            rec["error"] = error
            print(f"{impl:<11} {row['workload']:<28} {s:>6} {str(causal):>6} {'':>7} {'FAILED':>9}  {error[:80]}", flush=True)
        out.write(json.dumps(rec) + "\n")
        out.flush()

    def attempt(row, impl, fn):
        """Times fn() and records the result, or records why it failed."""
        print(f"[causal={row['causal']} S={row['S']}] {impl} {row['workload']} ...", file=sys.stderr, flush=True)
        try:
            record(row, impl, ms=median_ms(fn, a.iters, a.warmup_ms / 1e3, a.cool_ms / 1e3, a.queued))
        except torch.OutOfMemoryError:
            record(row, impl, error="OOM")
        except Exception as e:  # a backend may refuse a shape; a compile may fail
            msg = f"{type(e).__name__}: {e}".strip().splitlines()[0]
            print(f"  {impl} {row['workload']}: {msg}", file=sys.stderr, flush=True)
            record(row, impl, error=msg[:300])
        torch.cuda.empty_cache()

    for (causal, s), rows in groups.items():
        need = 4 * s * H * D * 2 + (1 << 30)  # q, k, v, o, and a margin for the BlockMask and workspaces
        free, _ = torch.cuda.mem_get_info()
        if need > free:
            print(f"skipping S={s} causal={causal}: needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free", file=sys.stderr)
            for row in rows:
                for impl in (["sdpa_flash", "sdpa_cudnn"] if row["workload"] == "dense" else []) + ([] if flex is None else ["flex"]):
                    record(row, impl, error=f"skipped: needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
            continue
        q, k, v = (torch.randn(1, H, s, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
        for row in rows:
            if row["workload"] == "dense":
                for impl, backend in [("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]:
                    def sdpa(backend=backend):
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    attempt(row, impl, sdpa)
            if flex is not None:
                try:
                    bm = flex_block_mask(row, a.masks, s, causal, DEVICE)
                except Exception as e:
                    record(row, "flex", error="OOM" if isinstance(e, torch.OutOfMemoryError) else f"block mask: {type(e).__name__}: {e}"[:300])
                    torch.cuda.empty_cache()
                    continue
                attempt(row, "flex", lambda: flex(q, k, v, block_mask=bm))
                del bm
        del q, k, v
        torch.cuda.empty_cache()
    out.close()
    print("kept%: visited query-key pairs / dense pairs; TF/s: 4*D*visited pairs / time; TF/s*: dense-equivalent, 4*H*D*S^2 (halved if causal) / time")


if __name__ == "__main__":
    main()
