//! Times forward + backward (B=1, H=32, D=128, bf16, causal) per pattern workload: CUDA events,
//! warm-up, median. A stop-gap beside `attn-bench` until the bench covers the backward.
//! Usage: bwd_timing [--lens 8192,16384] [--iters N]
use block_sparse_attn::cudarc::driver::sys::CUevent_flags;
use block_sparse_attn::half::bf16;
use block_sparse_attn::{Attention, AttentionSpec, Device, HeadPattern};

const H: usize = 32;
const D: usize = 128;

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

fn main() -> block_sparse_attn::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let lens: Vec<usize> = arg("--lens").unwrap_or("8192,16384".into()).split(',').map(|s| s.parse().expect("--lens")).collect();
    let iters: usize = arg("--iters").map_or(10, |s| s.parse().expect("--iters"));
    let dev = Device::new(0)?;
    let stream = dev.default_stream();
    println!("device: {}", dev.describe());
    use HeadPattern::*;
    let token = TokenStreaming { sink_tokens: 64, local_tokens: 256 };
    let workloads: Vec<(&str, Vec<HeadPattern>)> = vec![
        ("dense", vec![Dense; H]),
        ("token_stream_64_256", vec![token; H]),
        ("block_stream_1_3", vec![BlockStreaming { sink_blocks: 1, local_blocks: 3 }; H]),
        ("mixed_half_dense_half_token", (0..H).map(|h| if h % 2 == 0 { Dense } else { token }).collect()),
    ];
    println!("{:<30} {:>6} {:>10} {:>10} {:>10}", "workload", "S", "fwd ms", "bwd ms", "fwd+bwd");
    for &s in &lens {
        let n = s * H * D;
        let (q, k, v, g) = (stream.clone_htod(&noise(n, 1))?, stream.clone_htod(&noise(n, 2))?, stream.clone_htod(&noise(n, 3))?, stream.clone_htod(&noise(n, 4))?);
        let mut o = stream.alloc_zeros::<bf16>(n)?;
        let (mut dq, mut dk, mut dv) = (stream.alloc_zeros::<bf16>(n)?, stream.alloc_zeros::<bf16>(n)?, stream.alloc_zeros::<bf16>(n)?);
        let mut lse = stream.alloc_zeros::<f32>(s * H)?;
        for (name, patterns) in &workloads {
            let spec = AttentionSpec::batched(1, s, s, H, H, D).with_causal(true).with_patterns(patterns.clone());
            let attn = Attention::new(&dev, &stream, spec, None)?;
            let time = |f: &mut dyn FnMut() -> block_sparse_attn::Result<()>| -> block_sparse_attn::Result<f64> {
                for _ in 0..2 {
                    f()?;
                }
                let mut t = Vec::new();
                for _ in 0..iters {
                    let a = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                    f()?;
                    let b = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                    t.push(a.elapsed_ms(&b)? as f64);
                }
                t.sort_by(f64::total_cmp);
                Ok(t[t.len() / 2])
            };
            let fwd = time(&mut || attn.forward(&dev, &stream, &q, &k, &v, &mut o, &mut lse))?;
            let bwd = time(&mut || attn.backward(&dev, &stream, &q, &k, &v, &o, &lse, &g, &mut dq, &mut dk, &mut dv))?;
            println!("{:<30} {:>6} {:>10.3} {:>10.3} {:>10.3}", name, s, fwd, bwd, fwd + bwd);
        }
    }
    Ok(())
}
