//! Times the forward kernels on one card: B=1, H=32, D=128, bf16, for every workload (dense, token
//! streaming 64/256, block streaming 1/3, block-sparse masks at kept fractions 5..100%, and
//! DuoAttention-style heads: half dense, half token streaming) at every sequence length, causal
//! and non-causal. CUDA events around each launch after a warm-up (3 runs, and with
//! `--warmup-ms N` at least N ms: the clock settles under the power cap in ~100 ms, so ~300
//! times the sustained rather than the burst rate; peers.py takes the same option); the median
//! of `--iters` runs. `--cool-ms N` idles the GPU N ms before each workload (peers.py too), so
//! that each is timed from the same state rather than after whatever ran before it (a burst
//! timing taken right after dense 32k ran ~10% slower for the streaming workloads).
//! `--queued` enqueues every timed call (each between its own pair of events) before reading any
//! time, as a program that does not wait for each call runs them: the host's work for a call (a
//! Hopper call encodes its tensor maps and uploads them) then overlaps the GPU's work on the one
//! before, and each time is the call's GPU time. By default the host waits for each call before
//! it starts the next, so each time also holds the host's work between the first event and the
//! launch (peers.py takes the same option).
//! Progress goes to stderr, a table to stdout, and one JSON line per result to `--json PATH`
//! (default bench.jsonl), written as each result comes in so that a run cut short keeps them.
//!
//! ```text
//! attn-bench [--lens 1024,2048,...,131072] [--causal true|false|both] [--iters N] [--only SUBSTR|=NAME]
//!            [--variant portable|portable-bwd|ENTRY:KEY_TILE:THREADS] [--json PATH] [--dump-masks DIR [--dump-only]]
//!            [--bwd [--deterministic]] [--heads-kv N] [--warmup-ms N] [--cool-ms N] [--queued]
//! ```
//!
//! `--bwd` also times forward + backward (the backward in its default, fast mode, or with
//! `--deterministic` in the deterministic one); `--heads-kv N` runs GQA/MQA shapes (32 query
//! heads over N key/value heads; default 32).
//!
//! `--dump-masks DIR` writes, for every (workload, S, causal) selected, one line to
//! `DIR/manifest.jsonl` (visited query-key pairs, kept fractions, the mask file) and each
//! block-sparse mask as raw `u8` `[H, S/128, S/128]` to `DIR/<workload>_S<S>_<causal|noncausal>.u8`;
//! `benches/peers.py --masks DIR` times the peers on exactly these workloads. `--dump-only` stops
//! after writing them and needs no GPU.
//!
//! JSON keys (shared with peers.py): `impl`, `card`, `workload`, `S`, `causal`, `B`, `H`, `D`,
//! `dtype`, `mask_density` (the nominal kept fraction of a random mask, else null), `kept_fraction`
//! (query-key pairs visited / pairs dense attention visits in the same causal mode), `kept_blocks`
//! (the same for 128x128 blocks with at least one visible pair), `visited_pairs`, `ms`,
//! `useful_tflops` (4·D·visited_pairs / time), `dense_equiv_tflops` (4·H·D·S², halved if causal,
//! / time: the peers' convention), `iters`, `H_kv`, `queued` (with `--queued`), with `--bwd`
//! `fwd_bwd_ms` and `deterministic`;
//! `error` instead of `ms` when a run failed or was skipped.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use block_sparse_attn::cudarc::driver::sys::CUevent_flags;
use block_sparse_attn::cudarc::driver::{CudaSlice, CudaStream};
use block_sparse_attn::half::bf16;
use block_sparse_attn::{Attention, AttentionSpec, BLOCK, Device, HeadPattern};
use serde_json::{Value, json};

const H: usize = 32;
const D: usize = 128;
const DEFAULT_LENS: &str = "1024,2048,4096,8192,16384,32768,65536,131072";
const SPARSE_PCTS: [u32; 7] = [5, 10, 20, 30, 50, 75, 100];
const TOKEN: HeadPattern = HeadPattern::TokenStreaming { sink_tokens: 64, local_tokens: 256 };
const BLOCKS: HeadPattern = HeadPattern::BlockStreaming { sink_blocks: 1, local_blocks: 3 };

/// One set of per-head patterns. `density` is set for the block-sparse workloads, whose head `h`
/// reads mask slice `h`.
struct Workload {
    name: String,
    patterns: Vec<HeadPattern>,
    density: Option<f64>,
}

/// The names are part of the JSON schema (peers.py and `cargo xtask bench-report` match on them).
fn workloads() -> Vec<Workload> {
    use HeadPattern::*;
    let uniform = |name: &str, p| Workload { name: name.into(), patterns: vec![p; H], density: None };
    let mut v = vec![
        uniform("dense", Dense),
        uniform("token_stream_64_256", TOKEN),
        uniform("block_stream_1_3", BLOCKS),
        Workload {
            name: "mixed_half_dense_half_token".into(),
            patterns: (0..H).map(|h| if h % 2 == 0 { Dense } else { TOKEN }).collect(),
            density: None,
        },
    ];
    for pct in SPARSE_PCTS {
        v.push(Workload {
            name: format!("sparse_{pct}pct"),
            patterns: (0..H as u32).map(|mask| BlockSparse { mask }).collect(),
            density: Some(pct as f64 / 100.0),
        });
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Masks

/// splitmix64's finaliser. Used as a counter-based generator: each mask cell is a pure function of
/// (seed, cell index), so a mask does not depend on the order its cells are drawn in.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Random block masks `[n_masks, nb, nb]`. The diagonal block is always kept, so that no query
/// block is left empty (as real importance masks do); every other reachable block (all of them,
/// or those below the diagonal under causal) is kept with the probability that makes the expected
/// kept fraction of reachable blocks equal `density` (at small `nb` the diagonal alone may exceed
/// it: the recorded `kept_blocks` is the truth). Blocks above the diagonal are 0 under causal, so
/// that no implementation is handed blocks that causal empties anyway.
fn block_mask(n_masks: usize, nb: usize, density: f64, causal: bool, seed: u64) -> Vec<u8> {
    let reachable = if causal { nb * (nb + 1) / 2 } else { nb * nb } as f64;
    let p = ((density * reachable - nb as f64) / (reachable - nb as f64).max(1.0)).clamp(0.0, 1.0);
    let threshold = (p * 2f64.powi(64)).min(u64::MAX as f64) as u64;
    let mut out = vec![0u8; n_masks * nb * nb];
    for (idx, cell) in out.iter_mut().enumerate() {
        let (qb, kb) = ((idx / nb) % nb, idx % nb);
        let keep = qb == kb || ((!causal || kb < qb) && (p >= 1.0 || mix(seed ^ mix(idx as u64)) < threshold));
        *cell = keep as u8;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// What a workload visits, counted exactly from semantics.md (Sq = Sk = S, one sequence)

/// Visited query-key pairs and 128x128 blocks holding at least one visited pair, over all heads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Coverage {
    pairs: u64,
    blocks: u64,
}

/// Keys that row `i` sees under a formula pattern: `[0, sink_end) ∪ [lo, hi]`, either part may be
/// empty. With Sq = Sk the row's aligned position is `i` itself and its diagonal block `i / 128`.
fn row_keys(p: HeadPattern, s: i64, causal: bool, i: i64) -> (i64, i64, i64) {
    let blk = BLOCK as i64;
    let cap = if causal { i } else { s - 1 }; // the last key the row may see
    match p {
        HeadPattern::Dense => (0, 0, cap),
        HeadPattern::TokenStreaming { sink_tokens, local_tokens } => {
            ((sink_tokens as i64).min(cap + 1), (i - local_tokens as i64 + 1).max(0), i)
        }
        HeadPattern::BlockStreaming { sink_blocks, local_blocks } => {
            let d = i / blk;
            let lo = ((d - local_blocks as i64 + 1) * blk).max(0);
            ((sink_blocks as i64 * blk).min(cap + 1), lo, ((d + 1) * blk - 1).min(cap))
        }
        HeadPattern::BlockSparse { .. } => unreachable!("block-sparse heads are counted from their mask"),
    }
}

/// Size of `[0, a) ∪ [lo, hi]`.
fn union_len(a: i64, lo: i64, hi: i64) -> i64 {
    let window = (hi - lo + 1).max(0);
    let overlap = if window > 0 { (a.min(hi + 1) - lo).max(0) } else { 0 };
    a + window - overlap
}

/// Visited pairs of the 128x128 block (qb, kb) of a block-sparse head that keeps it.
fn pairs_in_block(s: usize, causal: bool, qb: usize, kb: usize) -> u64 {
    let rows = (s.min((qb + 1) * BLOCK) - qb * BLOCK) as u64;
    let cols = (s.min((kb + 1) * BLOCK) - kb * BLOCK) as u64;
    match (causal, kb.cmp(&qb)) {
        (false, _) | (true, std::cmp::Ordering::Less) => rows * cols,
        (true, std::cmp::Ordering::Equal) => rows * (rows + 1) / 2, // Sq = Sk: the diagonal block is square
        (true, std::cmp::Ordering::Greater) => 0,
    }
}

/// Exact coverage: O(S) per formula head (a sum over rows), O((S/128)²) per mask head.
fn coverage(patterns: &[HeadPattern], mask: Option<&[u8]>, s: usize, causal: bool) -> Coverage {
    let nb = s.div_ceil(BLOCK);
    let blk = BLOCK as i64;
    let mut c = Coverage::default();
    for &p in patterns {
        if let HeadPattern::BlockSparse { mask: m } = p {
            let slice = &mask.expect("block-sparse workloads have a mask")[m as usize * nb * nb..][..nb * nb];
            for (cell, &keep) in slice.iter().enumerate() {
                if keep == 0 {
                    continue;
                }
                let n = pairs_in_block(s, causal, cell / nb, cell % nb);
                c.pairs += n;
                c.blocks += (n > 0) as u64;
            }
            continue;
        }
        for i in 0..s as i64 {
            let (a, lo, hi) = row_keys(p, s as i64, causal, i);
            c.pairs += union_len(a, lo, hi) as u64;
        }
        // The bounds grow with the row, and consecutive rows' windows touch (they are empty in
        // every row or in none: only a zero-length window is empty), so the keys of a query block
        // are its last row's sink and the window from its first row's `lo` to its last row's
        // `hi`. Count the key blocks of that union.
        for qb in 0..nb as i64 {
            let (first, last) = (qb * blk, (s as i64).min((qb + 1) * blk) - 1);
            let (a, last_lo, hi) = row_keys(p, s as i64, causal, last);
            let (_, lo, _) = row_keys(p, s as i64, causal, first);
            let sink_blocks = (a + blk - 1) / blk;
            let (lo_b, hi_b) = if last_lo <= hi { (lo / blk, hi / blk) } else { (1, 0) };
            c.blocks += union_len(sink_blocks, lo_b, hi_b) as u64;
        }
    }
    c
}

// ---------------------------------------------------------------------------------------------
// The GPU side

/// The device, one stream and inputs sized for the longest length that fits; shorter lengths use
/// a prefix of each buffer (a contiguous `[1, S, H, D]` tensor is a prefix of a longer one).
struct Gpu {
    dev: Device,
    stream: Arc<CudaStream>,
    card: String,
    /// Free device memory before the inputs were allocated.
    free: usize,
    capacity: usize,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    o: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
    /// With `--bwd`: dO, dQ, dK, dV.
    grads: Option<[CudaSlice<bf16>; 4]>,
    /// Key/value heads (`--heads-kv`).
    heads_kv: usize,
    /// The backward's mode (`--deterministic`).
    deterministic: bool,
    /// Seconds of warm-up besides the 3 runs (`--warmup-ms`).
    warmup_s: f64,
    /// Seconds the GPU idles before each workload (`--cool-ms`).
    cool_s: f64,
    /// Every timed call enqueued before any time is read (`--queued`).
    queued: bool,
}

/// Device bytes one length needs: q, k, v, o (and dO, dQ, dK, dV with the backward), lse, the
/// mask and its compacted lists (i32 per block, both orientations), plus a margin for the plan
/// and the driver.
fn bytes_needed(s: usize, bwd: bool) -> usize {
    let nb = s.div_ceil(BLOCK);
    (if bwd { 8 } else { 4 }) * s * H * D * 2 + 2 * s * H * 4 + 9 * H * nb * nb + (512 << 20)
}

impl Gpu {
    fn new(variant: Option<&str>, lens: &[usize], bwd: bool) -> block_sparse_attn::Result<Self> {
        let mut dev = Device::new(0)?;
        // --variant portable runs the portable kernels on Hopper; --variant
        // ENTRY:KEY_TILE:THREADS swaps the portable bf16 d128 kernel for an experimental entry.
        // --variant portable-bwd keeps the Hopper forward and runs the portable backward.
        if let Some(v) = variant {
            if dev.path() == block_sparse_attn::KernelPath::Hopper {
                dev.use_hopper_backward(false)?;
                if v != "portable-bwd" {
                    dev.use_hopper_forward(false)?;
                }
            }
            if v != "portable" && v != "portable-bwd" {
                let f: Vec<&str> = v.split(':').collect();
                assert_eq!(f.len(), 3, "--variant ENTRY:KEY_TILE:THREADS");
                dev.use_fwd_variant(false, D, f[0], f[1].parse().expect("key tile"), f[2].parse().expect("threads"))?;
            }
            println!("variant: {v}");
        }
        let stream = dev.default_stream();
        let card = dev.context().name().unwrap_or_else(|_| "unknown GPU".into());
        let (free, total) = dev.context().mem_get_info()?;
        println!("device: {} ({:.1} of {:.1} GiB free)", dev.describe(), gib(free), gib(total));
        let capacity = lens.iter().copied().filter(|&s| bytes_needed(s, bwd) <= free).max().unwrap_or(0);
        let t0 = Instant::now();
        let n = capacity * H * D;
        let (q, k, v) = (stream.clone_htod(&noise(n, 1))?, stream.clone_htod(&noise(n, 2))?, stream.clone_htod(&noise(n, 3))?);
        let o = stream.alloc_zeros::<bf16>(n.max(1))?;
        let lse = stream.alloc_zeros::<f32>((capacity * H).max(1))?;
        let grads = if bwd {
            let z = || stream.alloc_zeros::<bf16>(n.max(1));
            Some([stream.clone_htod(&noise(n, 4))?, z()?, z()?, z()?])
        } else {
            None
        };
        eprintln!("inputs for S <= {capacity} ready in {:.1} s", t0.elapsed().as_secs_f64());
        Ok(Gpu { dev, stream, card, free, capacity, q, k, v, o, lse, grads, heads_kv: H, deterministic: false, warmup_s: 0.0, cool_s: 0.0, queued: false })
    }

    /// Median ms of `iters` timed forwards after the warm-up ([`warm_up`]), the plan's work item
    /// count, and with `--bwd` the median ms of as many forward + backward passes.
    fn time(&mut self, w: &Workload, s: usize, causal: bool, mask: Option<&[u8]>, iters: usize) -> block_sparse_attn::Result<(f64, u32, Option<f64>)> {
        let mut spec = AttentionSpec::batched(1, s, s, H, self.heads_kv, D).with_causal(causal).with_patterns(w.patterns.clone());
        let mask_buf = match mask {
            Some(m) => {
                spec = spec.with_block_mask(1, H);
                Some(self.stream.clone_htod(m)?)
            }
            None => None,
        };
        let attn = Attention::new(&self.dev, &self.stream, spec, mask_buf.as_ref())?.with_deterministic_backward(self.deterministic);
        let (dev, stream) = (&self.dev, &self.stream);
        let warm = self.warmup_s;
        if self.cool_s > 0.0 {
            stream.synchronize()?;
            std::thread::sleep(std::time::Duration::from_secs_f64(self.cool_s));
        }
        warm_up(stream, warm, &mut || attn.forward(dev, stream, &self.q, &self.k, &self.v, &mut self.o, &mut self.lse))?;
        let queued = self.queued;
        let median = |f: &mut dyn FnMut() -> block_sparse_attn::Result<()>| -> block_sparse_attn::Result<f64> {
            let mut events = Vec::with_capacity(iters);
            let mut times = Vec::with_capacity(iters);
            for _ in 0..iters {
                let a = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                f()?;
                let b = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                if queued {
                    events.push((a, b));
                } else {
                    times.push(a.elapsed_ms(&b)? as f64);
                }
            }
            stream.synchronize()?;
            for (a, b) in &events {
                times.push(a.elapsed_ms(b)? as f64);
            }
            times.sort_by(f64::total_cmp);
            Ok(times[times.len() / 2])
        };
        let (q, k, v, o, lse) = (&self.q, &self.k, &self.v, &mut self.o, &mut self.lse);
        let fwd = median(&mut || attn.forward(dev, stream, q, k, v, o, lse))?;
        let fwd_bwd = match &mut self.grads {
            Some([d_o, dq, dk, dv]) => {
                let mut step = || {
                    attn.forward(dev, stream, q, k, v, o, lse)?;
                    attn.backward(dev, stream, q, k, v, o, lse, d_o, dq, dk, dv)
                };
                warm_up(stream, warm, &mut step)?;
                Some(median(&mut step)?)
            }
            None => None,
        };
        Ok((fwd, attn.work_items(), fwd_bwd))
    }
}

/// Runs `f` at least 3 times and for at least `secs` seconds of GPU time. The GPU's clock settles
/// under the power cap over ~100 ms (perf notes, session 5, T8): a 3-run warm-up times the burst
/// rate, ~0.3 s the sustained one (session 6, S5).
fn warm_up(stream: &CudaStream, secs: f64, f: &mut dyn FnMut() -> block_sparse_attn::Result<()>) -> block_sparse_attn::Result<()> {
    let t0 = std::time::Instant::now();
    let mut n = 0;
    while n < 3 || t0.elapsed().as_secs_f64() < secs {
        f()?;
        n += 1;
        // Keep the launch queue short so that the wall clock tracks the GPU's.
        if n % 4 == 0 {
            stream.synchronize()?;
        }
    }
    Ok(stream.synchronize()?)
}

/// Fast deterministic unit-variance-ish bf16 noise (the bench needs non-trivial data, not quality).
fn noise(n: usize, seed: u64) -> Vec<bf16> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n.max(1))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bf16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.46)
        })
        .collect()
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

// ---------------------------------------------------------------------------------------------
// Driver

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|s| s.as_str())
}

/// Appends one JSON line and flushes it, so that a run cut short keeps what it measured.
fn emit(file: &mut File, line: &Value) {
    writeln!(file, "{line}").and_then(|_| file.flush()).expect("write JSON lines");
}

fn mask_file_name(workload: &str, s: usize, causal: bool) -> String {
    format!("{workload}_S{s}_{}.u8", if causal { "causal" } else { "noncausal" })
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attn-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> block_sparse_attn::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: attn-bench [--lens {DEFAULT_LENS}] [--causal true|false|both] [--iters 20] [--only SUBSTR|=NAME] [--bwd]");
        println!("                  [--variant portable|portable-bwd|ENTRY:KEY_TILE:THREADS] [--json bench.jsonl] [--dump-masks DIR [--dump-only]]");
        println!("                  [--deterministic] [--heads-kv 32] [--warmup-ms 0] [--cool-ms 0] [--queued]");
        println!("--bwd also times forward + backward (column fwd+bwd, JSON fwd_bwd_ms); --deterministic runs the backward's");
        println!("deterministic mode; --heads-kv N: 32 query heads over N key/value heads (GQA/MQA); --warmup-ms N: warm up");
        println!("at least N ms before each timing (besides 3 runs): ~300 times the sustained, power-capped rate, not the burst;");
        println!("--cool-ms N: idle the GPU N ms before each workload, so that none is timed in the wake of the one before;");
        println!("--queued: enqueue every timed call before reading the times (each call's GPU time, the host's launch work");
        println!("overlapped), instead of waiting for each call before the next");
        return Ok(());
    }
    let lens: Vec<usize> = arg(&args, "--lens").unwrap_or(DEFAULT_LENS).split(',').map(|s| s.trim().parse().expect("--lens")).collect();
    let causals: Vec<bool> = match arg(&args, "--causal").unwrap_or("both") {
        "both" => vec![true, false],
        "true" => vec![true],
        "false" => vec![false],
        other => panic!("--causal true|false|both, not {other}"),
    };
    let iters: usize = arg(&args, "--iters").map_or(20, |s| s.parse().expect("--iters"));
    assert!(iters > 0, "--iters must be positive");
    let only = arg(&args, "--only");
    let dump_dir = arg(&args, "--dump-masks").map(PathBuf::from);
    let dump_only = args.iter().any(|a| a == "--dump-only");
    assert!(!dump_only || dump_dir.is_some(), "--dump-only needs --dump-masks DIR");
    let variant = arg(&args, "--variant");
    let bwd = args.iter().any(|a| a == "--bwd");
    let deterministic = args.iter().any(|a| a == "--deterministic");
    let warmup_ms: f64 = arg(&args, "--warmup-ms").map_or(0.0, |s| s.parse().expect("--warmup-ms"));
    let cool_ms: f64 = arg(&args, "--cool-ms").map_or(0.0, |s| s.parse().expect("--cool-ms"));
    let queued = args.iter().any(|a| a == "--queued");
    let heads_kv: usize = arg(&args, "--heads-kv").map_or(H, |s| s.parse().expect("--heads-kv"));
    assert!(heads_kv > 0 && H % heads_kv == 0, "--heads-kv must divide {H}");

    let mut manifest = dump_dir.as_ref().map(|dir| {
        std::fs::create_dir_all(dir).expect("create the --dump-masks directory");
        File::create(dir.join("manifest.jsonl")).expect("create manifest.jsonl")
    });
    let mut gpu = if dump_only { None } else { Some(Gpu::new(variant, &lens, bwd)?) };
    if let Some(g) = gpu.as_mut() {
        (g.heads_kv, g.deterministic, g.warmup_s, g.cool_s, g.queued) = (heads_kv, deterministic, warmup_ms / 1e3, cool_ms / 1e3, queued);
    }
    let json_path = arg(&args, "--json").unwrap_or("bench.jsonl");
    let mut json = gpu.as_ref().map(|_| File::create(json_path).expect("create the --json file"));
    if gpu.is_some() {
        println!(
            "{:<28} {:>6} {:>6} {:>7} {:>7} {:>9} {:>8} {:>8} {:>8}{}",
            "workload", "S", "causal", "kept%", "blocks%", "ms", "TF/s", "TF/s*", "vs dense",
            if bwd { format!(" {:>9}", "fwd+bwd") } else { String::new() }
        );
    }

    for &causal in &causals {
        for &s in &lens {
            let nb = s.div_ceil(BLOCK);
            let dense_pairs = H as u64 * if causal { s as u64 * (s as u64 + 1) / 2 } else { (s * s) as u64 };
            let dense_blocks = H as u64 * if causal { (nb * (nb + 1) / 2) as u64 } else { (nb * nb) as u64 };
            let fits = gpu.as_ref().map(|g| s <= g.capacity);
            if fits == Some(false) {
                let g = gpu.as_ref().unwrap();
                eprintln!(
                    "skipping S={s} causal={causal}: needs about {:.1} GiB of device memory, {:.1} GiB were free",
                    gib(bytes_needed(s, bwd)),
                    gib(g.free)
                );
            }
            let mut dense_ms = f64::NAN;
            for w in workloads() {
                if only.is_some_and(|o| o.strip_prefix('=').map_or(!w.name.contains(o), |exact| w.name != exact)) {
                    continue;
                }
                let mask = w.density.map(|d| block_mask(H, nb, d, causal, mix(s as u64) ^ (d * 1000.0) as u64));
                let cov = coverage(&w.patterns, mask.as_deref(), s, causal);
                let (kept, kept_blocks) = (cov.pairs as f64 / dense_pairs as f64, cov.blocks as f64 / dense_blocks as f64);
                let mut record = json!({
                    "impl": "ours", "workload": w.name, "S": s, "causal": causal, "B": 1, "H": H, "D": D, "dtype": "bf16",
                    "mask_density": w.density, "kept_fraction": kept, "kept_blocks": kept_blocks, "visited_pairs": cov.pairs,
                });
                if let (Some(dir), Some(file)) = (&dump_dir, manifest.as_mut()) {
                    let mut line = record.clone();
                    line.as_object_mut().unwrap().remove("impl");
                    if let Some(m) = &mask {
                        let name = mask_file_name(&w.name, s, causal);
                        std::fs::write(dir.join(&name), m).expect("write a mask file");
                        line["mask_file"] = name.into();
                        line["mask_shape"] = json!([H, nb, nb]);
                    }
                    emit(file, &line);
                }
                let (Some(g), Some(out)) = (gpu.as_mut(), json.as_mut()) else { continue };
                record["card"] = g.card.clone().into();
                record["iters"] = iters.into();
                if warmup_ms > 0.0 {
                    record["warmup_ms"] = warmup_ms.into();
                }
                if queued {
                    record["queued"] = true.into();
                }
                if cool_ms > 0.0 {
                    record["cool_ms"] = cool_ms.into();
                }
                if let Some(v) = variant {
                    record["variant"] = v.into();
                }
                record["H_kv"] = heads_kv.into();
                if bwd {
                    record["deterministic"] = deterministic.into();
                }
                if fits == Some(false) {
                    record["error"] = format!("skipped: needs about {:.1} GiB, {:.1} GiB free", gib(bytes_needed(s, bwd)), gib(g.free)).into();
                    emit(out, &record);
                    continue;
                }
                eprintln!("[causal={causal} S={s}] {} ...", w.name);
                let (ms, items, fwd_bwd) = match g.time(&w, s, causal, mask.as_deref(), iters) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("  failed: {e}");
                        record["error"] = e.to_string().into();
                        emit(out, &record);
                        continue;
                    }
                };
                if w.name == "dense" {
                    dense_ms = ms;
                }
                // Dense-equivalent FLOPs (the peers' convention): 4 * H * D * S^2, halved if causal.
                let dense_flops = 4.0 * (H * D) as f64 * (s as f64).powi(2) * if causal { 0.5 } else { 1.0 };
                let (useful, dense_eq) = (4.0 * D as f64 * cov.pairs as f64 / (ms * 1e9), dense_flops / (ms * 1e9));
                println!(
                    "{:<28} {:>6} {:>6} {:>7.2} {:>7.2} {:>9.3} {:>8.1} {:>8.1} {:>8.3}{}",
                    w.name,
                    s,
                    causal,
                    100.0 * kept,
                    100.0 * kept_blocks,
                    ms,
                    useful,
                    dense_eq,
                    ms / dense_ms,
                    fwd_bwd.map_or(String::new(), |t| format!(" {t:>9.3}"))
                );
                if let Some(t) = fwd_bwd {
                    record["fwd_bwd_ms"] = t.into();
                }
                record["ms"] = ms.into();
                record["useful_tflops"] = useful.into();
                record["dense_equiv_tflops"] = dense_eq.into();
                record["work_items"] = items.into();
                emit(out, &record);
            }
        }
    }
    if let Some(dir) = &dump_dir {
        eprintln!("masks and manifest.jsonl written to {}", dir.display());
    }
    if gpu.is_some() {
        println!("kept%: visited query-key pairs / dense pairs; blocks%: the same for 128x128 blocks; TF/s: 4*D*visited pairs / time;");
        println!("TF/s*: dense-equivalent, 4*H*D*S^2 (halved if causal) / time; results in {}", Path::new(json_path).display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use block_sparse_attn::reference::visible;

    /// Counts visited pairs and blocks by asking the CPU reference about every (head, i, j).
    fn brute_force(patterns: &[HeadPattern], mask: Option<&[u8]>, s: usize, causal: bool) -> Coverage {
        let mut spec = AttentionSpec::batched(1, s, s, patterns.len(), patterns.len(), 8).with_causal(causal).with_patterns(patterns.to_vec());
        if mask.is_some() {
            spec = spec.with_block_mask(1, patterns.len());
        }
        let nb = s.div_ceil(BLOCK);
        let mut c = Coverage::default();
        for h in 0..patterns.len() {
            let mut touched = vec![false; nb * nb];
            for i in 0..s {
                for j in 0..s {
                    if visible(&spec, mask, 0, h, i, j) {
                        c.pairs += 1;
                        touched[(i / BLOCK) * nb + j / BLOCK] = true;
                    }
                }
            }
            c.blocks += touched.iter().filter(|&&t| t).count() as u64;
        }
        c
    }

    #[test]
    fn coverage_matches_the_reference() {
        use HeadPattern::*;
        let patterns = [
            Dense,
            TOKEN,
            BLOCKS,
            TokenStreaming { sink_tokens: 0, local_tokens: 1 },
            TokenStreaming { sink_tokens: 300, local_tokens: 40 },
            TokenStreaming { sink_tokens: 100, local_tokens: 0 },
            BlockStreaming { sink_blocks: 0, local_blocks: 1 },
            BlockStreaming { sink_blocks: 2, local_blocks: 0 },
            BlockSparse { mask: 0 },
            BlockSparse { mask: 1 },
        ];
        // Lengths with a partial last block, and shorter than the streaming windows.
        for s in [100usize, 333, 520] {
            for causal in [false, true] {
                let nb = s.div_ceil(BLOCK);
                let mut mask = block_mask(1, nb, 0.5, causal, 7);
                mask.extend(block_mask(1, nb, 0.2, false, 9)); // blocks above the diagonal under causal too
                let got = coverage(&patterns, Some(&mask), s, causal);
                assert_eq!(got, brute_force(&patterns, Some(&mask), s, causal), "S={s} causal={causal}");
            }
        }
    }

    #[test]
    fn masks_hit_their_density_and_keep_the_diagonal() {
        let nb = 256;
        for causal in [false, true] {
            for d in [0.05, 0.3, 0.75] {
                let m = block_mask(2, nb, d, causal, 42);
                let reachable = 2.0 * if causal { (nb * (nb + 1) / 2) as f64 } else { (nb * nb) as f64 };
                let kept = m.iter().map(|&x| x as f64).sum::<f64>() / reachable;
                assert!((kept - d).abs() < 0.01, "density {d}, causal {causal}: kept {kept}");
                for (idx, &x) in m.iter().enumerate() {
                    let (qb, kb) = ((idx / nb) % nb, idx % nb);
                    assert!(qb != kb || x == 1, "diagonal block dropped");
                    assert!(!causal || kb <= qb || x == 0, "block above the diagonal under causal");
                }
            }
        }
        assert!(block_mask(1, 8, 1.0, false, 1).iter().all(|&x| x == 1));
        assert_eq!(block_mask(1, 64, 0.3, true, 5), block_mask(1, 64, 0.3, true, 5));
    }
}
