//! Helpers shared by the examples: seeded random inputs, the GPU-or-CPU backend with timing, the
//! error against the `f64` reference, kept fractions and FLOP counts, and the printed report.
//!
//! Included with `#[path = "common/mod.rs"] mod common;`; each example uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Instant;

use block_sparse_attn::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits, sys::CUevent_flags};
use block_sparse_attn::half::bf16;
use block_sparse_attn::reference::{self, round_bf16, round_f16};
use block_sparse_attn::{Attention, AttentionSpec, Device, Element, HeadPattern, cpu, gpu_available};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Inputs

/// `q`, `k`, `v` of one call, contiguous in the spec's layouts.
pub struct Inputs<T> {
    pub q: Vec<T>,
    pub k: Vec<T>,
    pub v: Vec<T>,
}

impl<T: Element> Inputs<T> {
    /// Unit-variance normal inputs drawn from a generator seeded with `seed`.
    pub fn random(spec: &AttentionSpec, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        Inputs { q: normal(&mut rng, spec.q_len()), k: normal(&mut rng, spec.kv_len()), v: normal(&mut rng, spec.kv_len()) }
    }
}

/// `n` standard normal samples (Box-Muller), rounded to `T`.
pub fn normal<T: Element>(rng: &mut StdRng, n: usize) -> Vec<T> {
    (0..n).map(|_| T::from_f64(gauss(rng))).collect()
}

/// One standard normal sample.
pub fn gauss(rng: &mut StdRng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A random block mask for the spec's mask shape, each block set with probability `density`.
pub fn random_mask(spec: &AttentionSpec, density: f64, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..spec.mask_len()).map(|_| rng.random_bool(density) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Backends

/// Where the forward pass runs.
pub enum Backend {
    Gpu { dev: Device, stream: Arc<CudaStream> },
    /// The library's CPU backend: the `f64` reference, rounded to the input type.
    Cpu,
}

/// Outputs of one forward pass and its time per call.
pub struct Run<T> {
    pub o: Vec<T>,
    pub lse: Vec<f32>,
    pub ms: f64,
    pub iters: usize,
}

impl Backend {
    /// The first GPU when a usable one is present, else the CPU backend (says which on stdout).
    pub fn pick() -> Self {
        if !gpu_available() {
            println!("no GPU found: running the CPU reference backend");
            return Backend::Cpu;
        }
        match Self::gpu() {
            Ok(b) => {
                println!("GPU: {}", b.describe_device());
                b
            }
            Err(e) => {
                println!("a GPU is present but unusable ({e}): running the CPU reference backend");
                Backend::Cpu
            }
        }
    }

    /// The backend an example's command line asks for: `--backend cpu|gpu`, by default
    /// [`Backend::pick`]. `--help` prints `about` and the usage and exits; a bad argument exits
    /// with status 2, `--backend gpu` without a usable GPU with status 1.
    pub fn from_args(about: &str) -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let usage = "usage: [--backend cpu|gpu]   (default: the GPU if there is a usable one)";
        match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [] => Self::pick(),
            ["-h" | "--help"] => {
                println!("{about}\n\n{usage}");
                std::process::exit(0);
            }
            ["--backend", "cpu"] | ["--backend=cpu"] => {
                println!("running the CPU reference backend (--backend cpu)");
                Backend::Cpu
            }
            ["--backend", "gpu"] | ["--backend=gpu"] => match Self::gpu() {
                Ok(b) => {
                    println!("GPU: {}", b.describe_device());
                    b
                }
                Err(e) => {
                    eprintln!("error: --backend gpu: {e}");
                    std::process::exit(1);
                }
            },
            _ => {
                eprintln!("error: unexpected arguments {args:?}\n{usage}");
                std::process::exit(2);
            }
        }
    }

    /// GPU 0, or the library's error.
    pub fn gpu() -> block_sparse_attn::Result<Self> {
        let dev = Device::new(0)?;
        Ok(Backend::Gpu { stream: dev.default_stream(), dev })
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Backend::Gpu { .. })
    }

    pub fn label(&self) -> String {
        match self {
            Backend::Gpu { .. } => "GPU".into(),
            Backend::Cpu => "CPU reference backend".into(),
        }
    }

    /// `dev.describe()`, e.g. "NVIDIA H100 80GB HBM3 (sm_90, Hopper path)", or "CPU".
    pub fn describe_device(&self) -> String {
        match self {
            Backend::Gpu { dev, .. } => dev.describe(),
            Backend::Cpu => "CPU".into(),
        }
    }

    /// The forward pass. On the GPU: plan once, one untimed warm-up call, then `iters` calls timed
    /// with CUDA events; the plan (mask compaction, work list) is not in the time. On the CPU:
    /// one call, timed with the wall clock.
    pub fn forward<T: Element>(&self, spec: &AttentionSpec, x: &Inputs<T>, mask: Option<&[u8]>, iters: usize) -> block_sparse_attn::Result<Run<T>> {
        let (dev, stream) = match self {
            Backend::Cpu => {
                let t = Instant::now();
                let out = cpu::forward(spec, &x.q, &x.k, &x.v, mask)?;
                return Ok(Run { o: out.o, lse: out.lse, ms: t.elapsed().as_secs_f64() * 1e3, iters: 1 });
            }
            Backend::Gpu { dev, stream } => (dev, stream),
        };
        let q = upload(stream, &x.q)?;
        let k = upload(stream, &x.k)?;
        let v = upload(stream, &x.v)?;
        let mask_dev = mask.map(|m| upload(stream, m)).transpose()?;
        let attn = Attention::new(dev, stream, spec.clone(), mask_dev.as_ref())?;
        let mut o = stream.alloc_zeros::<T>(spec.q_len().max(8))?;
        let mut lse = stream.alloc_zeros::<f32>(spec.lse_len().max(8))?;
        attn.forward(dev, stream, &q, &k, &v, &mut o, &mut lse)?; // warm-up
        let iters = iters.max(1);
        let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        for _ in 0..iters {
            attn.forward(dev, stream, &q, &k, &v, &mut o, &mut lse)?;
        }
        let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let ms = start.elapsed_ms(&end)? as f64 / iters as f64;
        let mut o = stream.clone_dtoh(&o)?;
        let mut lse = stream.clone_dtoh(&lse)?;
        o.truncate(spec.q_len());
        lse.truncate(spec.lse_len());
        Ok(Run { o, lse, ms, iters })
    }
}

impl Backend {
    /// dq, dk, dv of one backward pass from `d_o` (after a forward pass for `o` and `lse`), on
    /// the GPU in its `deterministic` mode or the default one.
    pub fn backward<T: Element>(&self, spec: &AttentionSpec, x: &Inputs<T>, d_o: &[T], mask: Option<&[u8]>, deterministic: bool) -> block_sparse_attn::Result<[Vec<T>; 3]> {
        let (dev, stream) = match self {
            Backend::Cpu => {
                let g = cpu::backward(spec, &x.q, &x.k, &x.v, d_o, mask)?;
                return Ok([g.dq, g.dk, g.dv]);
            }
            Backend::Gpu { dev, stream } => (dev, stream),
        };
        let (q, k, v, g) = (upload(stream, &x.q)?, upload(stream, &x.k)?, upload(stream, &x.v)?, upload(stream, d_o)?);
        let mask_dev = mask.map(|m| upload(stream, m)).transpose()?;
        let attn = Attention::new(dev, stream, spec.clone(), mask_dev.as_ref())?.with_deterministic_backward(deterministic);
        let mut o = stream.alloc_zeros::<T>(spec.q_len().max(8))?;
        let mut lse = stream.alloc_zeros::<f32>(spec.lse_len().max(8))?;
        attn.forward(dev, stream, &q, &k, &v, &mut o, &mut lse)?;
        let mut dq = stream.alloc_zeros::<T>(spec.q_len().max(8))?;
        let mut dk = stream.alloc_zeros::<T>(spec.kv_len().max(8))?;
        let mut dv = stream.alloc_zeros::<T>(spec.kv_len().max(8))?;
        attn.backward(dev, stream, &q, &k, &v, &o, &lse, &g, &mut dq, &mut dk, &mut dv)?;
        let mut out = [stream.clone_dtoh(&dq)?, stream.clone_dtoh(&dk)?, stream.clone_dtoh(&dv)?];
        out[0].truncate(spec.q_len());
        out[1].truncate(spec.kv_len());
        out[2].truncate(spec.kv_len());
        Ok(out)
    }
}

/// Copies `data` to the device (a few zeros for an empty slice: CUDA refuses 0-byte allocations).
fn upload<T: DeviceRepr + ValidAsZeroBits>(stream: &Arc<CudaStream>, data: &[T]) -> block_sparse_attn::Result<CudaSlice<T>> {
    Ok(if data.is_empty() { stream.alloc_zeros::<T>(8)? } else { stream.clone_htod(data)? })
}

// ---------------------------------------------------------------------------------------------
// Errors against the f64 reference

/// Max abs errors of a run against the `f64` reference, next to the error of the same
/// computation done in the input precision (the pass rule of `semantics.md`: at most twice that).
pub struct Check {
    pub o_err: f64,
    pub lse_err: f64,
    /// Error of `reference::forward_rounded` (scores, probabilities and `o` rounded to `T`).
    pub o_yardstick: f64,
    pub lse_yardstick: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.o_err <= 2.0 * self.o_yardstick + 1e-6 && self.lse_err <= 2.0 * self.lse_yardstick + 1e-6
    }
}

/// Computes the `f64` reference of the call (on the CPU) and compares the run with it.
pub fn check<T: Element>(spec: &AttentionSpec, x: &Inputs<T>, mask: Option<&[u8]>, run: &Run<T>) -> Check {
    let (q, k, v) = (to_f64(&x.q), to_f64(&x.k), to_f64(&x.v));
    let exact = reference::forward(spec, &q, &k, &v, mask);
    let round = if T::NAME == "bf16" { round_bf16 } else { round_f16 };
    let rounded = reference::forward_rounded(spec, &q, &k, &v, mask, round);
    Check {
        o_err: max_abs_diff(run.o.iter().map(|x| x.to_f64()), exact.o.iter().copied()),
        lse_err: max_abs_diff(run.lse.iter().map(|&x| x as f64), exact.lse.iter().copied()),
        o_yardstick: max_abs_diff(rounded.o.iter().copied(), exact.o.iter().copied()),
        lse_yardstick: max_abs_diff(rounded.lse.iter().copied(), exact.lse.iter().copied()),
    }
}

pub fn to_f64<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|e| e.to_f64()).collect()
}

/// Max `|a - b|`; equal infinities (`lse = -inf` of rows that see no key) count as 0, and any
/// NaN or unmatched infinity as infinite error.
pub fn max_abs_diff(a: impl Iterator<Item = f64>, b: impl Iterator<Item = f64>) -> f64 {
    a.zip(b)
        .map(|(x, y)| if x == y { 0.0 } else if (x - y).is_nan() { f64::INFINITY } else { (x - y).abs() })
        .fold(0.0, f64::max)
}

/// Error of a large run on `n` sampled query rows (the full reference would take hours on a
/// CPU), each recomputed in `f64` from `reference::visible`: `(max abs error, max abs error
/// relative to max(1, |reference|))`. The relative one is under 2^-8 when only the final
/// rounding of `o` to 16 bits differs.
pub fn spot_check<T: Element>(spec: &AttentionSpec, x: &Inputs<T>, mask: Option<&[u8]>, run: &Run<T>, n: usize, seed: u64) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (qs, ks, d) = (spec.q_strides(), spec.kv_strides(), spec.head_dim);
    let (mut abs, mut rel) = (0.0f64, 0.0f64);
    let mut compare = |got: f64, want: f64| {
        let e = max_abs_diff(std::iter::once(got), std::iter::once(want));
        abs = abs.max(e);
        rel = rel.max(e / want.abs().max(1.0));
    };
    for _ in 0..n {
        let b = rng.random_range(0..spec.batch());
        let s = spec.seq(b);
        if s.q_len == 0 {
            continue;
        }
        let (h, i) = (rng.random_range(0..spec.heads_q), rng.random_range(0..s.q_len as usize));
        let kh = h / spec.group();
        let q_at = (b as i64 * qs.batch + (s.q_start as i64 + i as i64) * qs.token + h as i64 * qs.head) as usize;
        let k_at = |j: usize| (b as i64 * ks.batch + (s.k_start as i64 + j as i64) * ks.token + kh as i64 * ks.head) as usize;
        let scores: Vec<(usize, f64)> = (0..s.k_len as usize)
            .filter(|&j| reference::visible(spec, mask, b, h, i, j))
            .map(|j| {
                let dot: f64 = (0..d).map(|c| x.q[q_at + c].to_f64() * x.k[k_at(j) + c].to_f64()).sum();
                (k_at(j), dot * spec.scale() as f64)
            })
            .collect();
        let mut o = vec![0.0; d];
        let mut lse = f64::NEG_INFINITY;
        if !scores.is_empty() {
            let m = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
            let l: f64 = scores.iter().map(|s| (s.1 - m).exp()).sum();
            for &(at, sc) in &scores {
                let p = (sc - m).exp() / l;
                for c in 0..d {
                    o[c] += p * x.v[at + c].to_f64();
                }
            }
            lse = m + l.ln();
        }
        for c in 0..d {
            compare(run.o[q_at + c].to_f64(), o[c]);
        }
        compare(run.lse[spec.lse_index(b, h, i)] as f64, lse);
    }
    (abs, rel)
}

// ---------------------------------------------------------------------------------------------
// Sparsity and FLOPs

/// Visible (query, key) pairs per query head, by `reference::visible`. `row_stride = 1` counts
/// every pair; a larger stride counts every `row_stride`-th query row and scales up (an
/// estimate for sizes where the exact count is too slow).
pub fn visible_pairs(spec: &AttentionSpec, mask: Option<&[u8]>, row_stride: usize) -> Vec<f64> {
    (0..spec.heads_q)
        .map(|h| {
            let mut n = 0u64;
            for b in 0..spec.batch() {
                let s = spec.seq(b);
                for i in (0..s.q_len as usize).step_by(row_stride) {
                    n += (0..s.k_len as usize).filter(|&j| reference::visible(spec, mask, b, h, i, j)).count() as u64;
                }
            }
            n as f64 * row_stride as f64
        })
        .collect()
}

/// Entries of one head's score matrices (`sum_b Sq_b * Sk_b`).
pub fn score_entries(spec: &AttentionSpec) -> f64 {
    (0..spec.batch()).map(|b| spec.seq(b).q_len as f64 * spec.seq(b).k_len as f64).sum()
}

/// Kept fraction of the score matrix per kind of pattern (block-sparse heads together), in order
/// of first appearance: `(name, heads, mean kept fraction)`.
pub fn kept_by_pattern(spec: &AttentionSpec, pairs: &[f64]) -> Vec<(String, usize, f64)> {
    let mut out: Vec<(String, usize, f64)> = Vec::new();
    let total = score_entries(spec).max(1.0);
    for (p, &n) in spec.patterns.iter().zip(pairs) {
        let name = pattern_name(p);
        match out.iter_mut().find(|e| e.0 == name) {
            Some(e) => {
                e.1 += 1;
                e.2 += n / total;
            }
            None => out.push((name, 1, n / total)),
        }
    }
    for e in &mut out {
        e.2 /= e.1 as f64;
    }
    out
}

/// TFLOP/s of `pairs` (query, key) pairs at `4 * D` FLOPs each (QK^T and PV) in `ms`.
pub fn tflops(spec: &AttentionSpec, pairs: f64, ms: f64) -> f64 {
    4.0 * spec.head_dim as f64 * pairs / (ms * 1e-3) / 1e12
}

/// The pairs dense attention would visit: `B * H * Sq * Sk`, halved if causal.
pub fn dense_pairs(spec: &AttentionSpec) -> f64 {
    let pairs = spec.heads_q as f64 * score_entries(spec);
    if spec.causal { pairs / 2.0 } else { pairs }
}

// ---------------------------------------------------------------------------------------------
// Printing

pub fn pattern_name(p: &HeadPattern) -> String {
    match *p {
        HeadPattern::Dense => "dense".into(),
        HeadPattern::BlockSparse { .. } => "block-sparse".into(),
        HeadPattern::BlockStreaming { sink_blocks, local_blocks } => format!("block streaming {sink_blocks}+{local_blocks} blocks"),
        HeadPattern::TokenStreaming { sink_tokens, local_tokens } => format!("token streaming {sink_tokens}+{local_tokens} tokens"),
    }
}

/// e.g. `B=1 Sq=1000 Sk=1000 H=8 Hkv=2 D=64 causal`.
pub fn shape(spec: &AttentionSpec) -> String {
    let seqs = if spec.is_varlen() {
        let lens: Vec<String> = (0..spec.batch()).map(|b| format!("{}/{}", spec.seq(b).q_len, spec.seq(b).k_len)).collect();
        format!("varlen Sq/Sk=[{}]", lens.join(", "))
    } else {
        format!("B={} Sq={} Sk={}", spec.batch(), spec.max_seqlen_q(), spec.max_seqlen_k())
    };
    let causal = if spec.causal { " causal" } else { "" };
    format!("{seqs} H={} Hkv={} D={}{causal}", spec.heads_q, spec.heads_kv, spec.head_dim)
}

/// Prints the kept fraction of each pattern of the call (exact count).
pub fn print_kept(spec: &AttentionSpec, mask: Option<&[u8]>) -> Vec<f64> {
    let pairs = visible_pairs(spec, mask, 1);
    let groups = kept_by_pattern(spec, &pairs);
    for (name, heads, kept) in &groups {
        println!("  {name:<32} {heads:>2} head(s)  keeps {:5.1}% of the score matrix", 100.0 * kept);
    }
    if groups.len() > 1 {
        let all = pairs.iter().sum::<f64>() / (score_entries(spec) * spec.heads_q as f64).max(1.0);
        println!("  {:<32} {:>2} head(s)  keeps {:5.1}%", "all heads", spec.heads_q, 100.0 * all);
    }
    pairs
}

/// Prints the time of a run; on a GPU also its TFLOP/s over the `pairs` (query, key) pairs its
/// heads see, and dense-equivalent TFLOP/s (as if it computed dense attention).
pub fn print_time<T>(backend: &Backend, spec: &AttentionSpec, run: &Run<T>, pairs: f64) {
    let mut line = format!("  {}: {:.3} ms/call", backend.label(), run.ms);
    if backend.is_gpu() {
        line += &format!(" (mean of {}), {:.1} TFLOP/s on visible pairs", run.iters, tflops(spec, pairs, run.ms));
        line += &format!(", {:.1} TFLOP/s dense-equivalent", tflops(spec, dense_pairs(spec), run.ms));
    }
    println!("{line}");
}

/// Prints the error against the reference; `Err` when it breaks the pass rule.
pub fn print_check(check: &Check) -> Result<()> {
    println!(
        "  max abs error vs f64 reference: o {:.2e}, lse {:.2e} (same computation in 16-bit: o {:.2e}, lse {:.2e}) -> {}",
        check.o_err,
        check.lse_err,
        check.o_yardstick,
        check.lse_yardstick,
        if check.passed() { "ok" } else { "TOO LARGE" }
    );
    if check.passed() { Ok(()) } else { Err("the error is over the tolerance (twice the error of the 16-bit computation)".into()) }
}

/// The common flow at a CPU-checkable size: print the kept fraction of each pattern, run, print
/// the time and the error against the `f64` reference.
pub fn run_checked(backend: &Backend, title: &str, spec: &AttentionSpec, x: &Inputs<bf16>, mask: Option<&[u8]>) -> Result<Run<bf16>> {
    println!("{title}: {}", shape(spec));
    let pairs = print_kept(spec, mask);
    let run = backend.forward(spec, x, mask, 5)?;
    print_time(backend, spec, &run, pairs.iter().sum());
    print_check(&check(spec, x, mask, &run))?;
    Ok(run)
}

/// The common flow at a size only a GPU runs: time it, and check a sample of query rows.
pub fn run_timed(backend: &Backend, title: &str, spec: &AttentionSpec, x: &Inputs<bf16>, mask: Option<&[u8]>) -> Result<Run<bf16>> {
    println!("{title}: {}", shape(spec));
    let pairs: f64 = visible_pairs(spec, mask, (spec.max_seqlen_q() / 256).max(1)).iter().sum();
    let kept = pairs / (score_entries(spec) * spec.heads_q as f64);
    println!("  keeps ~{:.1}% of the score matrix (counted on a sample of query rows)", 100.0 * kept);
    let run = backend.forward(spec, x, mask, 10)?;
    print_time(backend, spec, &run, pairs);
    let (abs, rel) = spot_check(spec, x, mask, &run, 64, 99);
    println!("  max abs error vs f64 reference on 64 sampled query rows: {abs:.2e} (relative to max(1, |ref|): {rel:.2e})");
    if !(rel < 1e-2) {
        return Err("the sampled relative error is over 1e-2".into());
    }
    Ok(run)
}

/// An example's `main`: runs its body and, on failure, prints the error and exits with 1.
pub fn exit_on_error(result: Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
