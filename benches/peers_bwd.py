"""Forward + backward times of the peers (B=1, H=32, D=128, bf16, causal): SDPA flash and cuDNN
(dense), FlexAttention (dense, token streaming 64/256, block streaming 1/3, mixed). Median of
CUDA-event timings of forward+backward after warm-up.

python3 benches/peers_bwd.py --lens 8192,16384
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from peers import D, H, median_ms  # same shapes and timing as the forward peers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", default="8192,16384")
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    from torch.nn.attention.flex_attention import flex_attention, create_block_mask
    flex = torch.compile(flex_attention, dynamic=False)
    print("device:", torch.cuda.get_device_name(), flush=True)
    for s in [int(x) for x in a.lens.split(",")]:
        q, k, v = (torch.randn(1, H, s, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn(1, H, s, D, device="cuda", dtype=torch.bfloat16)
        for name, backend in [("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]:
            def step():
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)
            print(f"{name:<11} dense                          {s:>6} fwd+bwd {median_ms(step, a.iters):9.3f} ms", flush=True)
        def dense(b, h, qi, ki): return ki <= qi
        def token(b, h, qi, ki): return ((ki < 64) | (qi - 256 < ki)) & (ki <= qi)
        def block(b, h, qi, ki): return ((ki // 128 < 1) | (qi // 128 - 3 < ki // 128)) & (ki <= qi)
        def mixed(b, h, qi, ki): return torch.where(h % 2 == 0, dense(b, h, qi, ki), token(b, h, qi, ki))
        for name, mm, heads in [("dense", dense, None), ("token_stream_64_256", token, None), ("block_stream_1_3", block, None), ("mixed_half_dense_half_token", mixed, H)]:
            try:
                bm = create_block_mask(mm, None, heads, s, s, device="cuda")
                step = lambda: flex(q, k, v, block_mask=bm).backward(g)
                print(f"flex        {name:<30} {s:>6} fwd+bwd {median_ms(step, a.iters):9.3f} ms", flush=True)
            except Exception as e:
                print(f"flex {name}: {type(e).__name__}", flush=True)


if __name__ == "__main__":
    main()
