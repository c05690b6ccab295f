//! The CPU backend (`cpu::forward`, 16-bit in and out) against the `f64` reference run on the
//! same inputs upcast: each output may differ from the exact value only by the final rounding to
//! the output type (`o` to bf16/f16, `lse` to f32), for every pattern, layout and mask.
mod common;

use block_sparse_attn::half::{bf16, f16};
use block_sparse_attn::reference::{self, round_bf16, round_f16};
use block_sparse_attn::{AttentionSpec, Element, HeadPattern, cpu};
use common::{Case, arb_case, normal_inputs};
use proptest::prelude::*;

/// Whether `got` is a nearest representable value to `exact`: no farther from it than the
/// correctly rounded value (equal to it, or its partner in a tie).
fn correctly_rounded(got: f64, exact: f64, rounded: f64) -> bool {
    if exact.is_infinite() || exact.is_nan() {
        return got == exact;
    }
    (got - exact).abs() <= (rounded - exact).abs()
}

/// Runs `cpu::forward::<T>` on `case` with random inputs rounded to `T`, and compares it with
/// `reference::forward` on the same (upcast) inputs.
fn check<T: Element + std::fmt::Debug>(case: &Case, seed: u64, round: fn(f64) -> f64) -> Result<(), TestCaseError> {
    let spec = &case.spec;
    let q64 = normal_inputs(spec.q_len(), seed, round);
    let k64 = normal_inputs(spec.kv_len(), seed ^ 0x9e37_79b9, round);
    let v64 = normal_inputs(spec.kv_len(), seed ^ 0x7f4a_7c15, round);
    let to_t = |x: &[f64]| x.iter().map(|&e| T::from_f64(e)).collect::<Vec<T>>();
    let (q, k, v) = (to_t(&q64), to_t(&k64), to_t(&v64));
    // The inputs are exactly representable, so the upcast is the f64 data itself.
    prop_assert!(q.iter().zip(&q64).all(|(a, b)| a.to_f64() == *b));

    let got = cpu::forward(spec, &q, &k, &v, case.mask()).map_err(|e| TestCaseError::fail(format!("cpu::forward failed: {e}")))?;
    let want = reference::forward(spec, &q64, &k64, &v64, case.mask());
    prop_assert_eq!(got.o.len(), spec.q_len());
    prop_assert_eq!(got.lse.len(), spec.lse_len());
    for (n, (g, &w)) in got.o.iter().zip(&want.o).enumerate() {
        let g = g.to_f64();
        prop_assert!(!g.is_nan(), "o[{}] is NaN", n);
        prop_assert!(correctly_rounded(g, w, T::from_f64(w).to_f64()), "o[{}] = {} but the exact value is {} ({})", n, g, w, T::NAME);
    }
    for (n, (&g, &w)) in got.lse.iter().zip(&want.lse).enumerate() {
        prop_assert!(!g.is_nan(), "lse[{}] is NaN", n);
        prop_assert!(correctly_rounded(g as f64, w, w as f32 as f64), "lse[{}] = {} but the exact value is {}", n, g, w);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// bf16: mixed patterns, batched and variable length, GQA, random masks.
    #[test]
    fn bf16_matches_f64_reference(case in arb_case(400, 2, 3, &[8, 16, 32]), seed in any::<u64>()) {
        check::<bf16>(&case, seed, round_bf16)?;
    }

    /// f16: the same, with f16's narrower range and finer mantissa.
    #[test]
    fn f16_matches_f64_reference(case in arb_case(400, 2, 3, &[8, 16, 32]), seed in any::<u64>()) {
        check::<f16>(&case, seed, round_f16)?;
    }
}

/// Rows that see no key come out as `o = 0` and `lse = -inf` in the 16-bit backend too.
#[test]
fn empty_rows_are_zero_and_minus_infinity() {
    // Causal with Sq > Sk: rows 0..3 see nothing.
    let spec = AttentionSpec::batched(1, 6, 3, 2, 1, 16).with_causal(true);
    let n = spec.q_len();
    let q = vec![f16::from_f32(1.0); n];
    let kv = vec![f16::from_f32(0.5); spec.kv_len()];
    let out = cpu::forward(&spec, &q, &kv, &kv, None).unwrap();
    for h in 0..2 {
        for i in 0..6 {
            let l = out.lse[spec.lse_index(0, h, i)];
            let row = &out.o[(i * 2 + h) * 16..][..16];
            if i < 3 {
                assert_eq!(l, f32::NEG_INFINITY, "h={h} i={i}");
                assert!(row.iter().all(|x| x.to_f32() == 0.0), "h={h} i={i}: {row:?}");
            } else {
                assert!(l.is_finite(), "h={h} i={i}");
                assert!(row.iter().all(|x| x.to_f32() == 0.5), "h={h} i={i}: constant v gives o = v");
            }
        }
    }
}

/// The forward pass is deterministic: the same call twice gives bitwise the same outputs.
#[test]
fn deterministic() {
    let spec = AttentionSpec::varlen(vec![0, 130, 131], vec![0, 300, 301], 4, 2, 32)
        .with_causal(true)
        .with_patterns(vec![
            HeadPattern::Dense,
            HeadPattern::BlockSparse { mask: 0 },
            HeadPattern::BlockStreaming { sink_blocks: 1, local_blocks: 1 },
            HeadPattern::TokenStreaming { sink_tokens: 5, local_tokens: 40 },
        ])
        .with_block_mask(1, 1);
    let mask: Vec<u8> = (0..spec.mask_len()).map(|x| (x % 3 != 1) as u8).collect();
    let q: Vec<bf16> = normal_inputs(spec.q_len(), 1, round_bf16).into_iter().map(bf16::from_f64).collect();
    let k: Vec<bf16> = normal_inputs(spec.kv_len(), 2, round_bf16).into_iter().map(bf16::from_f64).collect();
    let v: Vec<bf16> = normal_inputs(spec.kv_len(), 3, round_bf16).into_iter().map(bf16::from_f64).collect();
    let a = cpu::forward(&spec, &q, &k, &v, Some(&mask)).unwrap();
    let b = cpu::forward(&spec, &q, &k, &v, Some(&mask)).unwrap();
    assert!(a.o.iter().zip(&b.o).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(a.lse.iter().zip(&b.lse).all(|(x, y)| x.to_bits() == y.to_bits()));
}
