"""Times the peers on the shapes of attn-bench: PyTorch SDPA (flash and cuDNN backends) and
FlexAttention with the same patterns. CUDA events, warm-up, median. JSON lines to --json.

python3 benches/peers.py --lens 8192,16384,32768 --causal true [--no-flex] [--json peers.jsonl]
"""
import argparse, json, statistics, sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, D = 32, 128


def median_ms(fn, iters):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def flex_masks(s, causal):
    """mask_mod functions equal to attn-bench's workloads (bottom-right aligned, Sq == Sk)."""
    def dense(b, h, q, k):
        return (k <= q) if causal else (k >= 0)
    def token(b, h, q, k):
        vis = (k < 64) | ((q - 256 < k) & (k <= q))
        return vis & (k <= q) if causal else vis
    def block(b, h, q, k):
        qb, kb = q // 128, k // 128
        vis = (kb < 1) | ((qb - 3 < kb) & (kb <= qb))
        return vis & (k <= q) if causal else vis
    def mixed(b, h, q, k):
        return torch.where(h % 2 == 0, dense(b, h, q, k), token(b, h, q, k))
    return {"dense": dense, "token_stream_64_256": token, "block_stream_1_3": block,
            "mixed_half_dense_half_token": mixed}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", default="8192,16384,32768")
    ap.add_argument("--causal", default="true")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--json", default="peers.jsonl")
    a = ap.parse_args()
    lens = [int(x) for x in a.lens.split(",")]
    causals = [True, False] if a.causal == "both" else [a.causal == "true"]
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    out = open(a.json, "w")
    flex = None
    if not a.no_flex:
        from torch.nn.attention.flex_attention import flex_attention, create_block_mask
        flex = torch.compile(flex_attention, dynamic=False)
    for causal in causals:
        for s in lens:
            q, k, v = (torch.randn(1, H, s, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            flops = 4 * H * D * s * s * (0.5 if causal else 1.0)
            rows = []
            for name, backend in [("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]:
                try:
                    with sdpa_kernel(backend):
                        ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), a.iters)
                    rows.append((name, "dense", ms))
                except Exception as e:  # a backend may refuse a shape
                    print(f"{name}: {e}", file=sys.stderr)
            if flex is not None:
                for wname, mm in flex_masks(s, causal).items():
                    try:
                        # Head-independent masks broadcast over heads; _compile avoids materialising
                        # the dense [H, S, S] mask, which needs 32 GiB at 32k.
                        heads = H if wname.startswith("mixed") else None
                        bm = create_block_mask(mm, None, heads, s, s, device="cuda", _compile=True)
                        ms = median_ms(lambda: flex(q, k, v, block_mask=bm), a.iters)
                        rows.append(("flex", wname, ms))
                    except Exception as e:
                        print(f"flex {wname}: {e}", file=sys.stderr)
            for impl, wname, ms in rows:
                tf = flops / (ms * 1e-3) / 1e12
                print(f"{impl:<12} {wname:<30} {s:>6} {str(causal):>6} {ms:9.3f} ms {tf:7.1f} TFLOP/s*", flush=True)
                out.write(json.dumps({"impl": impl, "workload": wname, "S": s, "causal": causal, "ms": ms, "dense_equiv_tflops": tf}) + "\n")
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
