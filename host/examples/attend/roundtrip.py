#!/usr/bin/env python3
"""Round trip through the `attend` example with PyPI's safetensors.

Writes random inputs with safetensors.numpy (BF16 through ml_dtypes.bfloat16, F16 through
numpy.float16), runs the CLI, reads `o` and `lse` back and compares them with attention computed
in float64 by numpy; then checks that malformed inputs exit with status 2 and a message.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install numpy safetensors ml_dtypes
    /tmp/venv/bin/python host/examples/attend/roundtrip.py [--backend cpu|gpu] [--attend PATH]

Without --attend it runs the example through `cargo run --release` from this repository.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

REPO = pathlib.Path(__file__).resolve().parents[3]


def attention(q, k, v, causal, scale):
    """Dense attention in float64. q [B, Sq, H, D], k, v [B, Sk, Hkv, D] -> o, lse [B, H, Sq]."""
    q, k, v = (t.astype(np.float64) for t in (q, k, v))
    sq, heads, sk, heads_kv = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    k, v = (np.repeat(t, heads // heads_kv, axis=2) for t in (k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if causal:  # bottom-right aligned: query i sits on key i + Sk - Sq
        seen = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + sk - sq
        s = np.where(seen, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", np.divide(p, l, out=np.zeros_like(p), where=l > 0), v)
    with np.errstate(divide="ignore"):
        lse = (m + np.log(l))[..., 0]
    return o, lse


def run_attend(args, inp, out):
    cmd = [args.attend] if args.attend else ["cargo", "run", "--quiet", "--release", "--example", "attend", "-p", "block-sparse-attn", "--"]
    cmd += [str(inp), str(out)] + (["--backend", args.backend] if args.backend else [])
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def check(name, got, want, tol):
    got = got.astype(np.float64)
    inf_ok = np.array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    diff = np.abs(got[fin] - want[fin])
    ok = inf_ok and bool(np.all(diff <= tol * np.maximum(1.0, np.abs(want[fin]))))
    print(f"    {name}: max abs error {diff.max(initial=0.0):.2e} (tolerance {tol:g} x max(1, |ref|)) -> {'ok' if ok else 'FAIL'}")
    return ok


def roundtrip(args, tmp, label, tensors, metadata, reference):
    """Writes `tensors`, runs attend, compares with `reference()` -> (o, lse)."""
    inp, out = tmp / f"{label}.in.safetensors", tmp / f"{label}.out.safetensors"
    save_file(tensors, str(inp), metadata=metadata)
    r = run_attend(args, inp, out)
    print(f"  {label}: exit {r.returncode}; {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()}")
    if r.returncode != 0:
        print(r.stderr)
        return False
    result = load_file(str(out))
    o_ref, lse_ref = reference()
    q = tensors["q"]
    if result["o"].dtype != q.dtype or result["o"].shape != q.shape or result["lse"].shape != lse_ref.shape:
        print(f"    wrong output: o {result['o'].dtype} {result['o'].shape}, lse {result['lse'].shape}")
        return False
    tol = 1e-2  # the output's final rounding is 2^-9 (bf16) / 2^-12 (f16) relative
    return check("o", result["o"], o_ref, tol) & check("lse", result["lse"], lse_ref, 1e-3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["cpu", "gpu"])
    parser.add_argument("--attend", help="path of a built attend binary")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        print("round trips:")

        # 1. BF16, batched, dense causal with GQA (patterns absent: all dense).
        b, s, h, hkv, d = 2, 300, 4, 2, 64
        t = {"q": normal(b, s, h, d), "k": normal(b, s, hkv, d), "v": normal(b, s, hkv, d)}
        t = {n: x.astype(ml_dtypes.bfloat16) for n, x in t.items()}
        ok &= roundtrip(args, tmp, "bf16-batched-causal", t, {"causal": "true"},
                        lambda: attention(t["q"], t["k"], t["v"], True, d ** -0.5))

        # 2. F16, Sq != Sk, explicit dense patterns and softmax scale, not causal.
        b, sq, sk, h, hkv, d = 1, 200, 333, 4, 1, 32
        t = {"q": normal(b, sq, h, d), "k": normal(b, sk, hkv, d), "v": normal(b, sk, hkv, d)}
        t = {n: x.astype(np.float16) for n, x in t.items()}
        meta = {"patterns": json.dumps(["dense"] * h), "causal": "false", "softmax_scale": "0.1"}
        ok &= roundtrip(args, tmp, "f16-batched-scale", t, meta, lambda: attention(t["q"], t["k"], t["v"], False, 0.1))

        # 3. BF16, variable length with an empty sequence, dense causal.
        lens, h, hkv, d = [100, 0, 257], 4, 2, 64
        cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        t = {"q": normal(cu[-1], h, d), "k": normal(cu[-1], hkv, d), "v": normal(cu[-1], hkv, d)}
        t = {n: x.astype(ml_dtypes.bfloat16) for n, x in t.items()}
        t.update(cu_seqlens_q=cu, cu_seqlens_k=cu)

        def varlen_reference():
            o, lse = np.zeros(t["q"].shape), np.full((h, cu[-1]), -np.inf)
            for a, e in zip(cu[:-1], cu[1:]):
                if e > a:
                    ob, lb = attention(t["q"][None, a:e], t["k"][None, a:e], t["v"][None, a:e], True, d ** -0.5)
                    o[a:e], lse[:, a:e] = ob[0], lb[0]
            return o, lse

        ok &= roundtrip(args, tmp, "bf16-varlen-causal", t, {"causal": "true"}, varlen_reference)

        # 4. Every pattern, each set up to see what dense causal attention sees (a full block mask,
        #    windows longer than the sequence), so the same numpy reference applies.
        b, s, h, hkv, d = 1, 300, 4, 4, 128
        t = {"q": normal(b, s, h, d), "k": normal(b, s, hkv, d), "v": normal(b, s, hkv, d)}
        t = {n: x.astype(ml_dtypes.bfloat16) for n, x in t.items()}
        t["block_mask"] = np.ones((1, 1, 3, 3), dtype=np.uint8)
        patterns = ["dense", {"block_sparse": 0}, {"token_streaming": [0, 1000]}, {"block_streaming": [0, 10]}]
        ok &= roundtrip(args, tmp, "bf16-all-patterns", t, {"causal": "true", "patterns": json.dumps(patterns)},
                        lambda: attention(t["q"], t["k"], t["v"], True, d ** -0.5))

        print("malformed inputs (each must exit with status 2 and a message, no panic):")
        good = {"q": normal(1, 8, 2, 32).astype(np.float16), "k": normal(1, 8, 2, 32).astype(np.float16)}
        good["v"] = good["k"]
        bad_cases = {
            "not-safetensors": None,
            "missing-v": ({"q": good["q"], "k": good["k"]}, {}),
            "mixed-dtypes": ({**good, "v": good["k"].astype(np.float32)}, {}),
            "bad-patterns-json": (good, {"patterns": "[dense"}),
            "unknown-pattern": (good, {"patterns": json.dumps(["dense", {"sliding": 3}])}),
            "too-few-patterns": (good, {"patterns": json.dumps(["dense"])}),
            "bad-causal": (good, {"causal": "yes"}),
            "mask-missing": (good, {"patterns": json.dumps(["dense", {"block_sparse": 0}])}),
            "mask-value-2": ({**good, "block_mask": np.full((1, 1, 1, 1), 2, np.uint8)},
                             {"patterns": json.dumps(["dense", {"block_sparse": 0}])}),
            "mask-shape": ({**good, "block_mask": np.ones((1, 1, 2, 1), np.uint8)}, {}),
            "bad-head-dim": ({n: normal(1, 8, 2, 12).astype(np.float16) for n in "qkv"}, {}),
        }
        for label, case in bad_cases.items():
            inp = tmp / f"{label}.safetensors"
            if case is None:
                inp.write_bytes(b"this is not a safetensors file")
            else:
                save_file(case[0], str(inp), metadata=case[1])
            r = run_attend(args, inp, tmp / "out.safetensors")
            message = r.stderr.strip().splitlines()[0] if r.stderr.strip() else ""
            good_exit = r.returncode == 2 and message.startswith("attend: error:") and "panicked" not in r.stderr
            ok &= good_exit
            print(f"  {label}: exit {r.returncode}: {message} -> {'ok' if good_exit else 'FAIL'}")
    print("all ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
