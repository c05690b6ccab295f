//! GPU correctness suite: every option of `semantics.md` against the f64 CPU reference, on fresh
//! random inputs, with outputs poisoned (NaN) before each run so unwritten elements show.
//!
//! Pass rule (FlashAttention's): the kernel's max error is at most twice the error of the same
//! computation done in the input precision, plus a tiny absolute slack, and below 1e-2; `lse`
//! within 1e-3 (and exactly -inf where the reference is); no NaN; bitwise-identical reruns.
//! Ends with `N passed, M failed`.
//! Gradients (dq, dk, dv against the f64 reference backward, same rule) are checked on every case
//! with contiguous tensors, in the fast (default) mode and in the deterministic mode, whose two
//! runs must agree bitwise.
//! Usage: `gpu_suite [--quick] [--seed N] [--filter TEXT] [--path portable|hopper|hopper-portable] [--no-grad]`.
use std::sync::Arc;
use std::time::Instant;

use block_sparse_attn::cudarc::driver::{CudaSlice, CudaStream};
use block_sparse_attn::half::{bf16, f16};
use block_sparse_attn::reference::{self, Rounding};
use block_sparse_attn::{Attention, AttentionSpec, Device, Element, HeadPattern, Strides, TensorArg, TensorArgMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug)]
struct Case {
    name: String,
    f16: bool,
    spec: AttentionSpec,
    /// Density of the random block mask (when some head is block-sparse).
    density: f64,
    /// q/k/v packed in one `[tokens, 3, H, D]`-like buffer (free strides) instead of contiguous.
    packed: bool,
    seed: u64,
    /// Key row `r` (in the token dimension) is scaled by `1 + ramp * r`: scores that keep rising
    /// far past the running max, the case the forward's max-free softmax must hand to its exact
    /// path (0: unit-variance keys).
    ramp: f64,
    /// Inputs built for one probability just under 2^16 in a tile the max-free softmax takes
    /// (see `spike_inputs`) instead of random ones.
    spike: bool,
}

/// Patterns for `h` heads by mix name.
fn mix(name: &str, h: usize) -> Vec<HeadPattern> {
    use HeadPattern::*;
    let cycle = [
        Dense,
        TokenStreaming { sink_tokens: 64, local_tokens: 256 },
        BlockStreaming { sink_blocks: 1, local_blocks: 3 },
        BlockSparse { mask: 0 },
        TokenStreaming { sink_tokens: 3, local_tokens: 77 },
        BlockSparse { mask: 1 },
        BlockStreaming { sink_blocks: 0, local_blocks: 1 },
        TokenStreaming { sink_tokens: 0, local_tokens: 1 },
    ];
    let streaming: Vec<HeadPattern> = cycle.iter().copied().filter(|p| matches!(p, TokenStreaming { .. } | BlockStreaming { .. })).collect();
    let formula: Vec<HeadPattern> = cycle.iter().copied().filter(|p| !matches!(p, BlockSparse { .. })).collect();
    (0..h)
        .map(|i| match name {
            "dense" => Dense,
            "token" => TokenStreaming { sink_tokens: 64, local_tokens: 256 },
            "block" => BlockStreaming { sink_blocks: 1, local_blocks: 3 },
            "sparse" => BlockSparse { mask: (i % 2) as u32 },
            // Streaming heads only.
            "streaming" => streaming[i % streaming.len()],
            // Every pattern but block-sparse (formula walks only).
            "formula" => formula[i % formula.len()],
            _ => cycle[i % cycle.len()],
        })
        .collect()
}

fn grid(quick: bool) -> Vec<Case> {
    let lens: &[(usize, usize)] = if quick {
        &[(113, 203), (128, 217), (1, 512), (1023, 1024), (300, 300)]
    } else {
        &[(113, 203), (128, 217), (1, 512), (1023, 1024), (2048, 2048), (300, 129), (256, 256), (77, 1)]
    };
    let mixes = ["dense", "token", "block", "sparse", "mixed"];
    let dims = [32, 64, 128, 96, 40];
    let heads = [(4, 4), (4, 2), (4, 1)]; // MHA, GQA, MQA
    let mut cases = Vec::new();
    let mut n = 0usize;
    for &(sq, sk) in lens {
        for mx in mixes {
            for causal in [false, true] {
                // Rotate the remaining axes so each value meets every length and mix.
                let d = dims[n % dims.len()];
                let (hq, hkv) = heads[n % heads.len()];
                let batch = 1 + n % 2;
                let f16 = n % 4 == 3;
                let big = sq * sk >= 1 << 20;
                let (hq, hkv) = if big { (2, 1 + (n % 2)) } else { (hq, hkv) };
                let spec = AttentionSpec::batched(batch, sq, sk, hq, hkv, d)
                    .with_causal(causal)
                    .with_patterns(mix(mx, hq))
                    .with_block_mask(if n % 3 == 0 { batch } else { 1 }, 2);
                cases.push(Case {
                    name: format!("{} d{d} {sq}x{sk} {} H{hq}/{hkv} B{batch} {mx}", if f16 { "f16" } else { "bf16" }, if causal { "causal" } else { "full" }),
                    f16,
                    spec,
                    density: [0.1, 0.3, 0.6, 1.0, 0.0][n % 5],
                    packed: false,
                    seed: n as u64,
                    ramp: 0.0,
                    spike: false,
                });
                n += 1;
            }
        }
    }
    // Variable-length batches, zero-length sequences included.
    for (i, cu) in [[0, 0, 200, 531, 531, 1000], [0, 17, 17, 300, 428, 428]].iter().enumerate() {
        for causal in [false, true] {
            let cu_k: Vec<i32> = cu.iter().enumerate().map(|(b, &x)| x + 29 * b as i32).collect();
            let spec = AttentionSpec::varlen(cu.to_vec(), cu_k, 4, 2, if i == 0 { 128 } else { 64 })
                .with_causal(causal)
                .with_patterns(mix("mixed", 4))
                .with_block_mask(1, 2);
            cases.push(Case { name: format!("varlen#{i} {}", if causal { "causal" } else { "full" }), f16: i == 1, spec, density: 0.4, packed: false, seed: 100 + i as u64, ramp: 0.0, spike: false });
        }
    }
    // Free strides: q, k, v interleaved in one buffer.
    for causal in [false, true] {
        let spec = AttentionSpec::batched(2, 300, 300, 4, 4, 64).with_causal(causal).with_patterns(mix("mixed", 4)).with_block_mask(2, 2);
        cases.push(Case { name: format!("packed qkv {}", if causal { "causal" } else { "full" }), f16: false, spec, density: 0.5, packed: true, seed: 200, ramp: 0.0, spike: false });
    }
    // More query-block items than the GPU has SMs (16 blocks x 16 heads = 256): the persistent
    // Hopper grid's CTAs then take several items each and chain them (the next item's first
    // tile behind this one's last, its softmax on a half tile where the rows see only that);
    // every case above has fewer items than SMs.
    for (i, causal) in [true, false].into_iter().enumerate() {
        let d = if causal { 128 } else { 64 };
        let spec = AttentionSpec::batched(1, 2048, 2048, 16, 4, d).with_causal(causal).with_patterns(mix("mixed", 16)).with_block_mask(1, 2);
        cases.push(Case { name: format!("many items {}", if causal { "causal" } else { "full" }), f16: !causal, spec, density: 0.5, packed: false, seed: 500 + i as u64, ramp: 0.0, spike: false });
        // The same with formula heads only: streaming items chained behind dense ones.
        let spec = AttentionSpec::batched(1, 2048, 2048, 16, 4, d).with_causal(causal).with_patterns(mix("formula", 16));
        cases.push(Case { name: format!("many items formula {}", if causal { "causal" } else { "full" }), f16: causal, spec, density: 0.0, packed: false, seed: 510 + i as u64, ramp: 0.0, spike: false });
    }
    // Streaming heads only, many items chained.
    for (i, causal) in [true, false].into_iter().enumerate() {
        let spec = AttentionSpec::batched(1, 2048, 2048, 16, 4, 128).with_causal(causal).with_patterns(mix("streaming", 16));
        cases.push(Case { name: format!("many items streaming {}", if causal { "causal" } else { "full" }), f16: !causal, spec, density: 0.0, packed: false, seed: 530 + i as u64, ramp: 0.0, spike: false });
    }
    // Formula heads, then streaming heads only, over sequences of odd block counts and empty
    // ones, chained.
    let cu = vec![0, 300, 300, 1000, 1129, 2200];
    let cu_k: Vec<i32> = cu.iter().enumerate().map(|(b, &x)| x + 40 * b as i32).collect();
    for (i, causal) in [true, false].into_iter().enumerate() {
        let spec = AttentionSpec::varlen(cu.clone(), cu_k.clone(), 8, 2, if causal { 128 } else { 64 }).with_causal(causal).with_patterns(mix("formula", 8));
        cases.push(Case { name: format!("varlen formula {}", if causal { "causal" } else { "full" }), f16: !causal, spec, density: 0.0, packed: false, seed: 520 + i as u64, ramp: 0.0, spike: false });
        let spec = AttentionSpec::varlen(cu.clone(), cu_k.clone(), 8, 2, if causal { 64 } else { 128 }).with_causal(causal).with_patterns(mix("streaming", 8));
        cases.push(Case { name: format!("varlen streaming {}", if causal { "causal" } else { "full" }), f16: causal, spec, density: 0.0, packed: false, seed: 540 + i as u64, ramp: 0.0, spike: false });
    }
    // Rising scores: gently (the running max moves past the softmax's slack now and then) and
    // steeply (later scores would overflow exp2 against an early max).
    for (i, ramp) in [0.01, 0.5].into_iter().enumerate() {
        for causal in [false, true] {
            let d = if i == 0 { 128 } else { 64 };
            let spec = AttentionSpec::batched(1, 700, 1100, 4, 2, d).with_causal(causal).with_patterns(mix("mixed", 4)).with_block_mask(1, 2);
            cases.push(Case { name: format!("rising keys x{ramp} {}", if causal { "causal" } else { "full" }), f16: causal, spec, density: 0.6, packed: false, seed: 300 + i as u64, ramp, spike: false });
        }
    }
    // One probability just under 2^16 (f16's largest is 65504) in a tile the max-free softmax
    // takes: it must go to the exact path, not round P to inf.
    let spike_scale = 15.9999 / (SPIKE_KEY * std::f64::consts::LOG2_E);
    let spec = AttentionSpec::batched(1, 130, 300, 2, 2, 128).with_causal(false).with_patterns(mix("dense", 2)).with_softmax_scale(spike_scale as f32);
    cases.push(Case { name: "f16 probability near 2^16".into(), f16: true, spec, density: 1.0, packed: false, seed: 400, ramp: 0.0, spike: true });
    cases
}

/// The spike case's keys: key 128 (the second key tile) scores `SPIKE_KEY` against every query,
/// the rest of its tile very low, the first tile 0. The running max after the first tile is 0,
/// so on the second the max-free softmax sees a probability of 2^15.9999 (65531) with a tile sum
/// that stays under 2^16.
const SPIKE_KEY: f64 = 125.5;

/// Random configurations: any pattern parameters, lengths, dims, layouts.
fn random_cases(count: usize, seed: u64) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|n| {
            let hkv = [1, 2, 3][rng.random_range(0..3)];
            let hq = hkv * rng.random_range(1..=3);
            let d = 8 * rng.random_range(1..=16);
            let causal = rng.random_bool(0.5);
            let patterns: Vec<HeadPattern> = (0..hq)
                .map(|_| match rng.random_range(0..4) {
                    0 => HeadPattern::Dense,
                    1 => HeadPattern::BlockSparse { mask: rng.random_range(0..2) },
                    2 => HeadPattern::BlockStreaming { sink_blocks: rng.random_range(0..3), local_blocks: rng.random_range(0..4) },
                    _ => HeadPattern::TokenStreaming { sink_tokens: rng.random_range(0..300), local_tokens: rng.random_range(0..400) },
                })
                .collect();
            let spec = if rng.random_bool(0.3) {
                let b = rng.random_range(1..4);
                let mut cq = vec![0];
                let mut ck = vec![0];
                for _ in 0..b {
                    cq.push(cq.last().unwrap() + rng.random_range(0..600));
                    ck.push(ck.last().unwrap() + rng.random_range(0..600));
                }
                AttentionSpec::varlen(cq, ck, hq, hkv, d)
            } else {
                let b = rng.random_range(1..3);
                AttentionSpec::batched(b, rng.random_range(1..700), rng.random_range(1..700), hq, hkv, d)
            };
            let mb = if rng.random_bool(0.5) { 1 } else { spec.batch() };
            let spec = spec.with_causal(causal).with_patterns(patterns).with_block_mask(mb, 2).with_softmax_scale(rng.random_range(0.02..0.3));
            Case { name: format!("random#{n}"), f16: rng.random_bool(0.5), spec, density: rng.random_range(0.0..1.0), packed: false, seed: seed + 1000 + n as u64, ramp: 0.0, spike: false }
        })
        .collect()
}

/// Whether to check gradients too (`--no-grad` turns it off).
static GRADS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

struct Inputs {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    mask: Vec<u8>,
}

fn inputs<T: Element>(case: &Case) -> Inputs {
    let mut rng = StdRng::seed_from_u64(case.seed ^ 0x9e37_79b9_7f4a_7c15);
    let s = &case.spec;
    // Unit variance, rounded to the input type so the reference sees exactly what the GPU sees.
    let mut draw = |n: usize| (0..n).map(|_| T::from_f64(rng.random_range(-1.732..1.732)).to_f64()).collect::<Vec<_>>();
    let (mut q, mut k, v) = (draw(s.q_len()), draw(s.kv_len()), draw(s.kv_len()));
    if case.spike {
        // q = e0 for every row; k row j (per kv head) = e0 * (0 | SPIKE_KEY | -64).
        let d = s.head_dim;
        for (i, x) in q.iter_mut().enumerate() {
            *x = if i % d == 0 { 1.0 } else { 0.0 };
        }
        for (i, x) in k.iter_mut().enumerate() {
            let j = i / (s.heads_kv * d);
            *x = match (i % d, j) {
                (0, 128) => SPIKE_KEY,
                (0, 129..256) => -64.0,
                _ => 0.0,
            };
        }
    }
    if case.ramp > 0.0 {
        let row = s.heads_kv * s.head_dim;
        for (i, x) in k.iter_mut().enumerate() {
            *x = T::from_f64(*x * (1.0 + case.ramp * (i / row) as f64)).to_f64();
        }
    }
    let mask = (0..s.mask_len()).map(|_| rng.random_bool(case.density) as u8).collect();
    Inputs { q, k, v, mask }
}

struct Outcome {
    err: f64,
    err_lowp: f64,
    lse_err: f64,
    /// Worst of dq, dk, dv: (error, input-precision error), when gradients were checked.
    grad: Option<(f64, f64)>,
    problems: Vec<String>,
    gpu_ms: f64,
}

/// Forward, then the backward into poisoned gradient buffers: in the default (fast) mode, then
/// twice in the deterministic mode. Returns the fast gradients, the deterministic ones, and
/// whether the two deterministic runs agree bitwise.
#[allow(clippy::type_complexity)]
fn run_gpu_bwd<T: Element>(dev: &Device, stream: &Arc<CudaStream>, case: &Case, inp: &Inputs, d_o: &[f64]) -> Result<([[Vec<f64>; 3]; 2], bool), String> {
    let s = &case.spec;
    let e = |x: block_sparse_attn::cudarc::driver::DriverError| x.to_string();
    let conv = |x: &[f64]| x.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>();
    let mask = if s.mask_len() > 0 { Some(stream.clone_htod(&inp.mask).map_err(e)?) } else { None };
    let mut attn = Attention::new(dev, stream, s.clone(), mask.as_ref()).map_err(|x| x.to_string())?;
    let (q, k, v, g) = (
        stream.clone_htod(&conv(&inp.q)).map_err(e)?,
        stream.clone_htod(&conv(&inp.k)).map_err(e)?,
        stream.clone_htod(&conv(&inp.v)).map_err(e)?,
        stream.clone_htod(&conv(d_o)).map_err(e)?,
    );
    let mut o = stream.alloc_zeros::<T>(s.q_len().max(1)).map_err(e)?;
    let mut lse = stream.alloc_zeros::<f32>(s.lse_len().max(1)).map_err(e)?;
    attn.forward(dev, stream, &q, &k, &v, &mut o, &mut lse).map_err(|x| x.to_string())?;
    let mut runs = Vec::new();
    for run in 0..3 {
        attn = attn.with_deterministic_backward(run > 0);
        let nan_q = vec![T::from_f64(f64::NAN); s.q_len().max(1)];
        let nan_kv = vec![T::from_f64(f64::NAN); s.kv_len().max(1)];
        let mut dq = stream.clone_htod(&nan_q).map_err(e)?;
        let mut dk = stream.clone_htod(&nan_kv).map_err(e)?;
        let mut dv = stream.clone_htod(&nan_kv).map_err(e)?;
        attn.backward(dev, stream, &q, &k, &v, &o, &lse, &g, &mut dq, &mut dk, &mut dv).map_err(|x| x.to_string())?;
        let back = |x: &CudaSlice<T>| -> Result<Vec<f64>, String> { Ok(stream.clone_dtoh(x).map_err(e)?.iter().map(|v| v.to_f64()).collect()) };
        runs.push([back(&dq)?, back(&dk)?, back(&dv)?]);
    }
    let bits = |r: &[Vec<f64>; 3]| r.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    let same = bits(&runs[1]) == bits(&runs[2]);
    runs.pop();
    let det = runs.pop().unwrap();
    Ok(([runs.pop().unwrap(), det], same))
}

fn run_gpu<T: Element>(dev: &Device, stream: &Arc<CudaStream>, case: &Case, inp: &Inputs) -> Result<(Vec<f64>, Vec<f32>, bool, f64), String> {
    let s = &case.spec;
    let conv = |x: &[f64]| x.iter().map(|&e| T::from_f64(e)).collect::<Vec<T>>();
    let e = |x: block_sparse_attn::cudarc::driver::DriverError| x.to_string();
    let mask = if s.mask_len() > 0 { Some(stream.clone_htod(&inp.mask).map_err(e)?) } else { None };
    let attn = Attention::new(dev, stream, s.clone(), mask.as_ref()).map_err(|x| x.to_string())?;
    let poison_o = vec![T::from_f64(f64::NAN); s.q_len()];
    let poison_lse = vec![f32::NAN; s.lse_len()];
    let mut lse: CudaSlice<f32> = stream.clone_htod(&poison_lse).map_err(e)?;
    let run = |o: &mut CudaSlice<T>, lse: &mut CudaSlice<f32>| -> Result<(), String> {
        if case.packed {
            // [tokens, 3, H, D]: q, k, v interleaved, token stride 3*H*D.
            let (hq, d) = (s.heads_q, s.head_dim);
            let per_tok = 3 * hq * d;
            let mut packed = vec![T::default(); s.total_q() * per_tok];
            for t in 0..s.total_q() {
                for (w, src) in [&inp.q, &inp.k, &inp.v].iter().enumerate() {
                    for x in 0..hq * d {
                        packed[t * per_tok + w * hq * d + x] = T::from_f64(src[t * hq * d + x]);
                    }
                }
            }
            let buf = stream.clone_htod(&packed).map_err(e)?;
            let st = Strides { batch: (s.seq(0).q_len as usize * per_tok) as i64, token: per_tok as i64, head: d as i64 };
            let view = |w: usize| -> Result<CudaSlice<T>, String> {
                // A sub-buffer starting at q, k or v: copy of the packed tail (same strides).
                let tail = packed[w * hq * d..].to_vec();
                stream.clone_htod(&tail).map_err(e)
            };
            let (qb, kb, vb) = (buf, view(1)?, view(2)?);
            attn.forward_strided(dev, stream, TensorArg { data: &qb, strides: st }, TensorArg { data: &kb, strides: st }, TensorArg { data: &vb, strides: st }, TensorArgMut { data: o, strides: s.q_strides() }, lse)
                .map_err(|x| x.to_string())
        } else {
            let (q, k, v) = (stream.clone_htod(&conv(&inp.q)).map_err(e)?, stream.clone_htod(&conv(&inp.k)).map_err(e)?, stream.clone_htod(&conv(&inp.v)).map_err(e)?);
            attn.forward(dev, stream, &q, &k, &v, o, lse).map_err(|x| x.to_string())
        }
    };
    let mut o = stream.clone_htod(&poison_o).map_err(e)?;
    let t0 = Instant::now();
    run(&mut o, &mut lse)?;
    stream.synchronize().map_err(e)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let o1 = stream.clone_dtoh(&o).map_err(e)?;
    let lse1 = stream.clone_dtoh(&lse).map_err(e)?;
    // Rerun into freshly poisoned buffers: the forward pass must be bitwise deterministic.
    let mut o2b = stream.clone_htod(&poison_o).map_err(e)?;
    let mut lse2b = stream.clone_htod(&poison_lse).map_err(e)?;
    run(&mut o2b, &mut lse2b)?;
    let o2 = stream.clone_dtoh(&o2b).map_err(e)?;
    let lse2 = stream.clone_dtoh(&lse2b).map_err(e)?;
    let bits = |x: &[T]| x.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
    let same = bits(&o1) == bits(&o2) && lse1.iter().map(|x| x.to_bits()).eq(lse2.iter().map(|x| x.to_bits()));
    Ok((o1.iter().map(|x| x.to_f64()).collect(), lse1, same, ms))
}

fn check<T: Element>(dev: &Device, stream: &Arc<CudaStream>, case: &Case, round: Rounding) -> Outcome {
    let inp = inputs::<T>(case);
    let s = &case.spec;
    let mask = (s.mask_len() > 0).then_some(&inp.mask[..]);
    let (reference, lowp) = std::thread::scope(|sc| {
        let a = sc.spawn(|| reference::forward(s, &inp.q, &inp.k, &inp.v, mask));
        let b = sc.spawn(|| reference::forward_rounded(s, &inp.q, &inp.k, &inp.v, mask, round));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut problems = Vec::new();
    let (o, lse, deterministic, gpu_ms) = match run_gpu::<T>(dev, stream, case, &inp) {
        Ok(x) => x,
        Err(msg) => {
            return Outcome { err: f64::NAN, err_lowp: 0.0, lse_err: f64::NAN, grad: None, problems: vec![format!("GPU call failed: {msg}")], gpu_ms: 0.0 };
        }
    };
    if !deterministic {
        problems.push("two runs differ bitwise".into());
    }
    let max_diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f64, |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) });
    let nan = o.iter().filter(|x| x.is_nan()).count();
    if nan > 0 {
        problems.push(format!("{nan} NaN (unwritten?) elements in o"));
    }
    let err = max_diff(&o, &reference.o);
    let err_lowp = max_diff(&lowp.o, &reference.o);
    let mut lse_err = 0.0f64;
    for (i, (&g, &r)) in lse.iter().zip(&reference.lse).enumerate() {
        let g = g as f64;
        if r == f64::NEG_INFINITY {
            if g != f64::NEG_INFINITY {
                problems.push(format!("lse[{i}] = {g}, expected -inf"));
                break;
            }
        } else if g.is_nan() || (g - r).abs() > 1e-3 * (1.0 + r.abs()) {
            problems.push(format!("lse[{i}] = {g}, expected {r}"));
            break;
        } else {
            lse_err = lse_err.max((g - r).abs());
        }
    }
    if !(err <= 2.0 * err_lowp + 1e-4 && err < 1e-2) {
        let worst = o.iter().zip(&reference.o).enumerate().max_by(|a, b| ((a.1.0 - a.1.1).abs()).total_cmp(&(b.1.0 - b.1.1).abs())).map(|(i, (g, r))| format!("at {i}: {g} vs {r}")).unwrap_or_default();
        problems.push(format!("o error {err:.3e} > 2 x {err_lowp:.3e} ({worst})"));
    }
    let mut grad = None;
    if GRADS.load(std::sync::atomic::Ordering::Relaxed) && !case.packed {
        let mut rng = StdRng::seed_from_u64(case.seed ^ 0xd0d0);
        let d_o: Vec<f64> = (0..s.q_len()).map(|_| T::from_f64(rng.random_range(-1.732..1.732)).to_f64()).collect();
        let (exact, rounded) = std::thread::scope(|sc| {
            let a = sc.spawn(|| reference::backward(s, &inp.q, &inp.k, &inp.v, &reference.o, &reference.lse, &d_o, mask));
            let b = sc.spawn(|| reference::backward_rounded(s, &inp.q, &inp.k, &inp.v, &lowp.o, &lowp.lse, &d_o, mask, round));
            (a.join().unwrap(), b.join().unwrap())
        });
        match run_gpu_bwd::<T>(dev, stream, case, &inp, &d_o) {
            Err(msg) => problems.push(format!("GPU backward failed: {msg}")),
            Ok((modes, same)) => {
                if !same {
                    problems.push("two deterministic backward runs differ bitwise".into());
                }
                let (mut worst, mut worst_lowp) = (0.0f64, 0.0f64);
                for (mode, g) in ["fast", "deterministic"].iter().zip(&modes) {
                    for (name, gpu, ex, lo) in [("dq", &g[0], &exact.dq, &rounded.dq), ("dk", &g[1], &exact.dk, &rounded.dk), ("dv", &g[2], &exact.dv, &rounded.dv)] {
                        let nan = gpu.iter().filter(|x| x.is_nan()).count();
                        if nan > 0 {
                            problems.push(format!("{mode}: {nan} NaN (unwritten?) elements in {name}"));
                        }
                        let (e, el) = (max_diff(gpu, ex), max_diff(lo, ex));
                        // Gradients grow with the number of keys a row sees; the slack is relative
                        // to the largest reference gradient.
                        let scale = ex.iter().fold(1.0f64, |m, x| m.max(x.abs()));
                        if !(e <= 2.0 * el + 1e-4 * scale) {
                            problems.push(format!("{mode}: {name} error {e:.3e} > 2 x {el:.3e}"));
                        }
                        worst = worst.max(e);
                        worst_lowp = worst_lowp.max(el);
                    }
                }
                grad = Some((worst, worst_lowp));
            }
        }
    }
    Outcome { err, err_lowp, lse_err, grad, problems, gpu_ms }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let seed = args.iter().position(|a| a == "--seed").and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
    });
    let filter = args.iter().position(|a| a == "--filter").and_then(|i| args.get(i + 1)).cloned();
    GRADS.store(!args.iter().any(|a| a == "--no-grad"), std::sync::atomic::Ordering::Relaxed);
    if !block_sparse_attn::gpu_available() {
        println!("skipped: no GPU");
        println!("0 passed, 0 failed");
        return;
    }
    // --path portable|hopper loads that module explicitly (default: the device's own);
    // hopper-portable loads the sm_90a module but runs its portable kernels (forward and
    // backward).
    let path_arg = args.iter().position(|a| a == "--path").and_then(|i| args.get(i + 1)).map(|s| s.as_str());
    let path = match path_arg {
        Some("portable") => Some(block_sparse_attn::KernelPath::Portable),
        Some("hopper" | "hopper-portable") => Some(block_sparse_attn::KernelPath::Hopper),
        _ => None,
    };
    let opened = Device::with_path(0, path).and_then(|mut d| {
        if path_arg == Some("hopper-portable") {
            d.use_hopper_forward(false)?;
            d.use_hopper_backward(false)?;
        }
        Ok(d)
    });
    let dev = match opened {
        Ok(d) => d,
        Err(e) => {
            println!("cannot open the GPU: {e}");
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    let stream = dev.default_stream();
    println!("device: {}; random seed {seed}", dev.describe());
    let mut cases = grid(quick);
    cases.extend(random_cases(if quick { 10 } else { 40 }, seed));
    if let Some(f) = &filter {
        cases.retain(|c| c.name.contains(f.as_str()));
    }
    let (mut passed, mut failed) = (0, 0);
    let t0 = Instant::now();
    for case in &cases {
        let out = if case.f16 { check::<f16>(&dev, &stream, case, reference::round_f16) } else { check::<bf16>(&dev, &stream, case, reference::round_bf16) };
        let ok = out.problems.is_empty();
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
        let grad = out.grad.map_or(String::new(), |(e, el)| format!(" grad {e:.2e} ({el:.2e})"));
        println!(
            "{} {:<48} err {:.2e} (input-precision {:.2e}) lse {:.1e}{grad} gpu {:.2} ms{}",
            if ok { "PASS" } else { "FAIL" },
            case.name,
            out.err,
            out.err_lowp,
            out.lse_err,
            out.gpu_ms,
            if ok { String::new() } else { format!("\n     {}\n     spec: {:?}", out.problems.join("; "), case.spec) }
        );
    }
    println!("suite time {:.1} s", t0.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
