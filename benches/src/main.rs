//! Times the forward kernels on shapes that fill the GPU: B=1, H=32, D=128, bf16, for each
//! pattern workload and sequence length. CUDA events around each launch, warm-up, median of
//! many runs. Prints a table and writes JSON lines to `--json PATH` (default bench.jsonl).
//! Usage: attn-bench [--lens 8192,16384,32768] [--causal true|false|both] [--iters N]
use std::time::Instant;

use block_sparse_attn::cudarc::driver::sys::CUevent_flags;
use block_sparse_attn::half::bf16;
use block_sparse_attn::{Attention, AttentionSpec, Device, HeadPattern};

const H: usize = 32;
const D: usize = 128;

/// Fast deterministic unit-variance-ish bf16 noise (the bench needs non-trivial data, not quality).
fn noise(n: usize, seed: u64) -> Vec<bf16> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bf16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.46)
        })
        .collect()
}

struct Workload {
    name: &'static str,
    patterns: Vec<HeadPattern>,
    mask_density: Option<f64>,
}

fn workloads() -> Vec<Workload> {
    use HeadPattern::*;
    let token = TokenStreaming { sink_tokens: 64, local_tokens: 256 };
    let mut v = vec![
        Workload { name: "dense", patterns: vec![Dense; H], mask_density: None },
        Workload { name: "token_stream_64_256", patterns: vec![token; H], mask_density: None },
        Workload { name: "block_stream_1_3", patterns: vec![BlockStreaming { sink_blocks: 1, local_blocks: 3 }; H], mask_density: None },
        Workload { name: "mixed_half_dense_half_token", patterns: (0..H).map(|h| if h % 2 == 0 { Dense } else { token }).collect(), mask_density: None },
    ];
    for pct in [5u32, 10, 20, 50, 100] {
        let name: &'static str = Box::leak(format!("sparse_{pct}pct").into_boxed_str());
        v.push(Workload { name, patterns: (0..H).map(|h| BlockSparse { mask: h as u32 }).collect(), mask_density: Some(pct as f64 / 100.0) });
    }
    v
}

/// Random mask rows with the given density; every row keeps its diagonal block so that no query
/// block is left empty (as real importance masks do).
fn mask(n_masks: usize, nq: usize, nk: usize, density: f64, causal: bool, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = vec![0u8; n_masks * nq * nk];
    for m in 0..n_masks {
        for qb in 0..nq {
            let reach = if causal { (qb + 1).min(nk) } else { nk };
            for kb in 0..reach {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let keep = kb == qb || ((x >> 11) as f64 / (1u64 << 53) as f64) < density;
                out[(m * nq + qb) * nk + kb] = keep as u8;
            }
        }
    }
    out
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|s| s.as_str())
}

fn main() -> block_sparse_attn::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let lens: Vec<usize> = arg(&args, "--lens").unwrap_or("8192,16384,32768").split(',').map(|s| s.parse().expect("--lens")).collect();
    let causals: Vec<bool> = match arg(&args, "--causal").unwrap_or("true") {
        "both" => vec![true, false],
        s => vec![s == "true"],
    };
    let iters: usize = arg(&args, "--iters").map_or(20, |s| s.parse().expect("--iters"));
    let only = arg(&args, "--only");
    let json_path = arg(&args, "--json").unwrap_or("bench.jsonl").to_string();
    let mut dev = Device::new(0)?;
    // --variant ENTRY:KEY_TILE:THREADS swaps the bf16 d128 kernel for an experimental entry.
    if let Some(v) = arg(&args, "--variant") {
        let f: Vec<&str> = v.split(':').collect();
        dev.use_fwd_variant(false, D, f[0], f[1].parse().expect("key tile"), f[2].parse().expect("threads"))?;
        println!("variant: {v}");
    }
    let stream = dev.default_stream();
    println!("device: {}", dev.describe());
    let smax = *lens.iter().max().unwrap();
    let t0 = Instant::now();
    let q = stream.clone_htod(&noise(smax * H * D, 1))?;
    let k = stream.clone_htod(&noise(smax * H * D, 2))?;
    let v = stream.clone_htod(&noise(smax * H * D, 3))?;
    let mut o = stream.alloc_zeros::<bf16>(smax * H * D)?;
    let mut lse = stream.alloc_zeros::<f32>(smax * H)?;
    eprintln!("inputs ready in {:.1} s", t0.elapsed().as_secs_f64());
    let mut json = String::new();
    println!("{:<30} {:>6} {:>6} {:>9} {:>9} {:>10}", "workload", "S", "causal", "ms", "TFLOP/s*", "vs dense");
    for &causal in &causals {
        for &s in &lens {
            let mut dense_ms = f64::NAN;
            for w in workloads() {
                if only.is_some_and(|o| !w.name.contains(o)) {
                    continue;
                }
                let mut spec = AttentionSpec::batched(1, s, s, H, H, D).with_causal(causal).with_patterns(w.patterns.clone());
                let nb = s.div_ceil(128);
                let mask_buf = match w.mask_density {
                    Some(dens) => {
                        spec = spec.with_block_mask(1, H);
                        Some(stream.clone_htod(&mask(H, nb, nb, dens, causal, s as u64))?)
                    }
                    None => None,
                };
                let attn = Attention::new(&dev, &stream, spec, mask_buf.as_ref())?;
                for _ in 0..3 {
                    attn.forward(&dev, &stream, &q, &k, &v, &mut o, &mut lse)?;
                }
                let mut times = Vec::with_capacity(iters);
                for _ in 0..iters {
                    let a = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                    attn.forward(&dev, &stream, &q, &k, &v, &mut o, &mut lse)?;
                    let b = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                    times.push(a.elapsed_ms(&b)? as f64);
                }
                times.sort_by(f64::total_cmp);
                let ms = times[times.len() / 2];
                if w.name == "dense" {
                    dense_ms = ms;
                }
                // Dense-equivalent FLOPs (the peers' convention): 4 * H * D * S^2, halved if causal.
                let flops = 4.0 * (H * D) as f64 * (s as f64).powi(2) * if causal { 0.5 } else { 1.0 };
                let tflops = flops / (ms * 1e-3) / 1e12;
                println!("{:<30} {:>6} {:>6} {:>9.3} {:>9.1} {:>10.3}", w.name, s, causal, ms, tflops, ms / dense_ms);
                json.push_str(&format!(
                    "{{\"impl\":\"ours\",\"workload\":\"{}\",\"S\":{s},\"causal\":{causal},\"ms\":{ms:.4},\"dense_equiv_tflops\":{tflops:.2},\"work_items\":{}}}\n",
                    w.name,
                    attn.work_items()
                ));
            }
        }
    }
    std::fs::write(&json_path, json).expect("write json");
    println!("* dense-equivalent TFLOP/s: 4*H*D*S^2 (halved if causal) over time");
    Ok(())
}
