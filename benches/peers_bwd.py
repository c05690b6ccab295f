"""Forward + backward times of the peers (B=1, H=32, D=128, bf16, causal): SDPA flash and cuDNN
(dense), FlexAttention on every attn-bench workload with the same BlockMasks as the forward peers
(benches/peers.py: block-sparse masks from attn-bench's mask files, streaming from their
mask_mods, mixed per head). Median of CUDA-event timings of forward+backward after warm-up.

    attn-bench --dump-masks MASKS --dump-only --lens 8192,16384 --causal true
    python3 benches/peers_bwd.py --masks MASKS --lens 8192,16384 [--only SUBSTR]
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from peers import D, H, compiled_flex, flex_block_mask, load_manifest, median_ms  # same shapes, masks and timing as the forward peers


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks", required=True, type=Path, help="directory written by attn-bench --dump-masks")
    ap.add_argument("--lens", default="8192,16384")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup-ms", type=float, default=0.0, help="warm-up time before each timing (besides 3 calls)")
    ap.add_argument("--only", default="", help="only workloads whose name contains this")
    a = ap.parse_args()
    flex = compiled_flex()
    print("device:", torch.cuda.get_device_name(), flush=True)
    groups = load_manifest(a.masks, {int(x) for x in a.lens.split(",")}, [True], a.only)
    for (causal, s), rows in groups.items():
        q, k, v = (torch.randn(1, H, s, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn(1, H, s, D, device="cuda", dtype=torch.bfloat16)

        def report(impl, name, step):
            try:
                ms = f"{median_ms(step, a.iters, a.warmup_ms / 1e3):9.3f} ms"
            except torch.OutOfMemoryError:
                ms = "OOM"
            except Exception as e:  # a backend may refuse a shape; a compile may fail
                ms = f"FAILED {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
            print(f"{impl:<11} {name:<30} {s:>6} fwd+bwd {ms}", flush=True)
            torch.cuda.empty_cache()

        for row in rows:
            if row["workload"] == "dense":
                for impl, backend in [("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]:
                    def sdpa(backend=backend):
                        with sdpa_kernel(backend):
                            F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(g)
                    report(impl, "dense", sdpa)
            try:
                bm = flex_block_mask(row, a.masks, s, causal, "cuda")
            except Exception as e:
                print(f"flex        {row['workload']:<30} {s:>6} block mask failed: {type(e).__name__}", flush=True)
                continue
            report("flex", row["workload"], lambda: flex(q, k, v, block_mask=bm).backward(g))
            del bm
        del q, k, v, g
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
