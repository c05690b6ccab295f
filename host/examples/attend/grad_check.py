"""Gradient round trip through `attend`: writes q, k, v and `do` (F16, causal, GQA) with PyPI's
safetensors, runs the CLI, and compares dq, dk, dv with numpy float64 gradients.

    python3 grad_check.py PATH/TO/attend [cpu|gpu]
"""
import numpy as np, subprocess, sys
from safetensors.numpy import save_file, load_file
rng = np.random.default_rng(0)
B,S,H,Hkv,D = 1,200,2,1,32
q = rng.standard_normal((B,S,H,D)).astype(np.float16)
k = rng.standard_normal((B,S,Hkv,D)).astype(np.float16)
v = rng.standard_normal((B,S,Hkv,D)).astype(np.float16)
do = rng.standard_normal((B,S,H,D)).astype(np.float16)
save_file({"q":q,"k":k,"v":v,"do":do}, "/tmp/in.st", metadata={"causal":"true"})
backend = sys.argv[2] if len(sys.argv) > 2 else "cpu"
r = subprocess.run([sys.argv[1], "/tmp/in.st", "/tmp/out.st", "--backend", backend], capture_output=True, text=True)
assert r.returncode == 0, r.stderr
print(r.stdout, r.stderr)
out = load_file("/tmp/out.st")
# numpy reference gradients via autograd-free formulas
qf,kf,vf,gf = (x.astype(np.float64) for x in (q,k,v,do))
kf = np.repeat(kf, H//Hkv, axis=2); vf = np.repeat(vf, H//Hkv, axis=2)
scale = 1/np.sqrt(D)
s = np.einsum("bqhd,bkhd->bhqk", qf, kf)*scale
mask = np.arange(S)[None,:] <= np.arange(S)[:,None]
s = np.where(mask, s, -np.inf)
p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
o = np.einsum("bhqk,bkhd->bqhd", p, vf)
dv = np.einsum("bhqk,bqhd->bkhd", p, gf)
dp = np.einsum("bqhd,bkhd->bhqk", gf, vf)
Dm = (gf*o).sum(-1).transpose(0,2,1)[...,None]
ds = p*(dp - Dm)
dq = np.einsum("bhqk,bkhd->bqhd", ds, kf)*scale
dk = np.einsum("bhqk,bqhd->bkhd", ds, qf)*scale
dk = dk.reshape(B,S,Hkv,H//Hkv,D).sum(3); dv = dv.reshape(B,S,Hkv,H//Hkv,D).sum(3)
for name, ref in [("dq",dq),("dk",dk),("dv",dv)]:
    got = out[name].astype(np.float64)
    err = np.abs(got-ref).max()
    print(name, got.shape, "max err", err, "max |ref|", np.abs(ref).max())
    assert err < 1e-2 * max(1.0, np.abs(ref).max()), name
print("gradients ok")
