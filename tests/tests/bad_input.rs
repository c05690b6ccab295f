//! Every way to call the API wrongly returns its `Error` variant, and nothing panics: first one
//! test per misuse (each spec has exactly one fault, so the variant is unambiguous), then random
//! garbage thrown at `validate`, `cpu::forward` and `check_tensor`.
mod common;

use std::mem::discriminant;

use block_sparse_attn::half::{bf16, f16};
use block_sparse_attn::spec::MAX_SEQLEN;
use block_sparse_attn::{AttentionSpec, Error, HeadPattern, MaskShape, SeqLayout, Strides, cpu};
use proptest::prelude::*;

/// The error of a call that must fail.
fn err<T>(r: Result<T, Error>) -> Error {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e,
    }
}

/// A valid base: 2 sequences of 3 queries and 5 keys, 4 query heads over 2 kv heads, D = 16.
fn base() -> AttentionSpec {
    AttentionSpec::batched(2, 3, 5, 4, 2, 16)
}

fn zeros<T: Default + Clone>(n: usize) -> Vec<T> {
    vec![T::default(); n]
}

/// `cpu::forward` with contiguous zero inputs of the spec's sizes.
fn cpu_forward(spec: &AttentionSpec, mask: Option<&[u8]>) -> Result<cpu::CpuOutput<bf16>, Error> {
    cpu::forward::<bf16>(spec, &zeros(spec.q_len()), &zeros(spec.kv_len()), &zeros(spec.kv_len()), mask)
}

#[test]
fn base_spec_is_valid() {
    // The faults below are each one change away from this.
    base().validate().unwrap();
    cpu_forward(&base(), None).unwrap();
}

// ---- heads ----

#[test]
fn heads_kv_not_dividing_heads_q() {
    let e = err(AttentionSpec::batched(1, 4, 4, 4, 3, 64).validate());
    assert!(matches!(e, Error::Heads { heads_q: 4, heads_kv: 3 }), "{e:?}");
    let e = err(AttentionSpec::batched(1, 4, 4, 2, 4, 64).validate()); // more kv heads than query heads
    assert!(matches!(e, Error::Heads { heads_q: 2, heads_kv: 4 }), "{e:?}");
}

#[test]
fn zero_heads() {
    let e = err(AttentionSpec::batched(1, 4, 4, 0, 1, 64).validate());
    assert!(matches!(e, Error::Heads { heads_q: 0, heads_kv: 1 }), "{e:?}");
    // heads_kv = 0 must not divide by zero.
    let e = err(AttentionSpec::batched(1, 4, 4, 4, 0, 64).validate());
    assert!(matches!(e, Error::Heads { heads_q: 4, heads_kv: 0 }), "{e:?}");
    let e = err(AttentionSpec::batched(1, 4, 4, 0, 0, 64).validate());
    assert!(matches!(e, Error::Heads { .. }), "{e:?}");
}

#[test]
fn head_dims_no_kernel_serves() {
    for d in [0, 1, 12, 100, 127, 129, 136, 256] {
        let e = err(AttentionSpec::batched(1, 4, 4, 2, 1, d).validate());
        assert!(matches!(e, Error::HeadDim(got) if got == d), "D={d}: {e:?}");
    }
    // Every positive multiple of 8 up to 128 is served.
    for d in (8..=128).step_by(8) {
        AttentionSpec::batched(1, 4, 4, 2, 1, d).validate().unwrap_or_else(|e| panic!("D={d}: {e}"));
    }
}

// ---- patterns and masks ----

#[test]
fn pattern_count_mismatch() {
    let e = err(base().with_patterns(vec![HeadPattern::Dense; 3]).validate());
    assert!(matches!(e, Error::PatternCount { heads_q: 4, got: 3 }), "{e:?}");
    let e = err(base().with_patterns(vec![HeadPattern::Dense; 5]).validate());
    assert!(matches!(e, Error::PatternCount { heads_q: 4, got: 5 }), "{e:?}");
    let e = err(base().with_patterns(vec![]).validate());
    assert!(matches!(e, Error::PatternCount { heads_q: 4, got: 0 }), "{e:?}");
}

/// Heads 0..4 are `Dense, Dense, BlockSparse { mask }, Dense`.
fn sparse_head_2(mask: u32) -> AttentionSpec {
    let d = HeadPattern::Dense;
    base().with_patterns(vec![d, d, HeadPattern::BlockSparse { mask }, d])
}

#[test]
fn block_sparse_head_without_mask_shape() {
    let e = err(sparse_head_2(0).validate());
    assert!(matches!(e, Error::MissingMask { head: 2 }), "{e:?}");
}

#[test]
fn mask_index_out_of_range() {
    let e = err(sparse_head_2(2).with_block_mask(1, 2).validate());
    assert!(matches!(e, Error::MaskIndex { head: 2, mask: 2, n_masks: 2 }), "{e:?}");
    let e = err(sparse_head_2(u32::MAX).with_block_mask(1, 1).validate());
    assert!(matches!(e, Error::MaskIndex { head: 2, mask: u32::MAX, n_masks: 1 }), "{e:?}");
    // A mask shape with no slices at all.
    let e = err(sparse_head_2(0).with_block_mask(1, 0).validate());
    assert!(matches!(e, Error::MaskIndex { head: 2, mask: 0, n_masks: 0 }), "{e:?}");
}

#[test]
fn mask_batch_neither_one_nor_batch() {
    for got in [0, 3, 7] {
        let e = err(sparse_head_2(0).with_block_mask(got, 1).validate());
        assert!(matches!(e, Error::MaskBatch { got: g, batch: 2 } if g == got), "{e:?}");
    }
    sparse_head_2(0).with_block_mask(1, 1).validate().unwrap();
    sparse_head_2(0).with_block_mask(2, 1).validate().unwrap();
}

// ---- sequences ----

#[test]
fn cu_seqlens_not_starting_at_zero() {
    let e = err(AttentionSpec::varlen(vec![1, 3, 5], vec![0, 2, 4], 2, 1, 16).validate());
    assert!(matches!(e, Error::CuSeqlens { which: "q", .. }), "{e:?}");
    let e = err(AttentionSpec::varlen(vec![0, 3, 5], vec![-1, 2, 4], 2, 1, 16).validate());
    assert!(matches!(e, Error::CuSeqlens { which: "k", .. }), "{e:?}");
}

#[test]
fn cu_seqlens_decreasing() {
    let e = err(AttentionSpec::varlen(vec![0, 3, 2], vec![0, 2, 4], 2, 1, 16).validate());
    assert!(matches!(e, Error::CuSeqlens { which: "q", .. }), "{e:?}");
    let e = err(AttentionSpec::varlen(vec![0, 3, 5], vec![0, 4, 1], 2, 1, 16).validate());
    assert!(matches!(e, Error::CuSeqlens { which: "k", .. }), "{e:?}");
    // Equal neighbours are zero-length sequences: allowed.
    AttentionSpec::varlen(vec![0, 0, 5, 5], vec![0, 4, 4, 4], 2, 1, 16).validate().unwrap();
}

#[test]
fn cu_seqlens_q_and_k_different_lengths() {
    let e = err(AttentionSpec::varlen(vec![0, 3, 5], vec![0, 2], 2, 1, 16).validate());
    assert!(matches!(e, Error::CuSeqlensLen { q: 3, k: 2 }), "{e:?}");
    let e = err(AttentionSpec::varlen(vec![0], vec![0, 2], 2, 1, 16).validate());
    assert!(matches!(e, Error::CuSeqlensLen { q: 1, k: 2 }), "{e:?}");
}

#[test]
fn empty_batch() {
    let e = err(AttentionSpec::batched(0, 4, 4, 2, 1, 16).validate());
    assert!(matches!(e, Error::EmptyBatch), "{e:?}");
    let e = err(AttentionSpec::varlen(vec![0], vec![0], 2, 1, 16).validate());
    assert!(matches!(e, Error::EmptyBatch), "{e:?}");
    let e = err(AttentionSpec::varlen(vec![], vec![], 2, 1, 16).validate());
    assert!(matches!(e, Error::EmptyBatch), "{e:?}");
}

#[test]
fn sequence_too_long() {
    let e = err(AttentionSpec::batched(1, MAX_SEQLEN + 1, 4, 2, 1, 16).validate());
    assert!(matches!(e, Error::SeqTooLong { .. }), "{e:?}");
    let e = err(AttentionSpec::batched(1, 4, usize::MAX, 2, 1, 16).validate());
    assert!(matches!(e, Error::SeqTooLong { .. }), "{e:?}");
    // Lengths that fit alone but not as batch * length in i32.
    let e = err(AttentionSpec::batched(4, 4, 1 << 30, 2, 1, 16).validate());
    assert!(matches!(e, Error::SeqTooLong { .. }), "{e:?}");
    let e = err(AttentionSpec::varlen(vec![0, i32::MAX], vec![0, 1], 2, 1, 16).validate());
    assert!(matches!(e, Error::SeqTooLong { .. }), "{e:?}");
}

#[test]
fn softmax_scale_not_finite_positive() {
    for s in [f32::NAN, 0.0, -0.0, -1.0, f32::INFINITY, f32::NEG_INFINITY] {
        let e = err(base().with_softmax_scale(s).validate());
        assert!(matches!(e, Error::SoftmaxScale(_)), "scale {s}: {e:?}");
    }
    base().with_softmax_scale(1e-30).validate().unwrap();
}

// ---- cpu::forward buffers ----

#[test]
fn cpu_forward_wrong_q_k_v_lengths() {
    let s = base();
    let (nq, nkv) = (s.q_len(), s.kv_len());
    let cases: [(&str, usize, usize, usize); 6] = [
        ("q", nq - 1, nkv, nkv),
        ("q", nq + 8, nkv, nkv),
        ("k", nq, nkv - 1, nkv),
        ("k", nq, 0, nkv),
        ("v", nq, nkv, nkv + 1),
        ("v", nq, nkv, 0),
    ];
    for (name, a, b, c) in cases {
        let e = err(cpu::forward::<f16>(&s, &zeros(a), &zeros(b), &zeros(c), None));
        assert!(matches!(e, Error::Tensor { name: n, .. } if n == name), "{name}: {e:?}");
    }
}

#[test]
fn cpu_forward_mask_of_wrong_length() {
    let s = sparse_head_2(0).with_block_mask(2, 1);
    let need = s.mask_len();
    assert_eq!(need, 2); // [2, 1, 1, 1]
    for got in [0, 1, 3] {
        let e = err(cpu_forward(&s, Some(&vec![1; got])));
        assert!(matches!(e, Error::MaskLen { got: g, expected: 2, .. } if g == got), "{e:?}");
    }
}

#[test]
fn cpu_forward_mask_value_two() {
    let s = sparse_head_2(0).with_block_mask(2, 1);
    let e = err(cpu_forward(&s, Some(&[1, 2])));
    assert!(matches!(e, Error::MaskValue), "{e:?}");
    let e = err(cpu_forward(&s, Some(&[255, 0])));
    assert!(matches!(e, Error::MaskValue), "{e:?}");
    cpu_forward(&s, Some(&[1, 0])).unwrap();
}

#[test]
fn cpu_forward_mask_value_checked_even_without_sparse_heads() {
    // The mask is an input: a bad value is an error whatever the heads read.
    let s = base().with_block_mask(1, 1);
    let e = err(cpu_forward(&s, Some(&[2])));
    assert!(matches!(e, Error::MaskValue), "{e:?}");
}

#[test]
fn cpu_forward_block_sparse_with_shape_but_no_mask_buffer() {
    let s = sparse_head_2(0).with_block_mask(1, 1);
    let e = err(cpu_forward(&s, None));
    assert!(matches!(e, Error::MissingMask { .. }), "{e:?}");
}

#[test]
fn cpu_forward_missing_mask_names_the_block_sparse_head() {
    // Head 2 is the block-sparse one; `validate` and the GPU path both name it.
    let s = sparse_head_2(0).with_block_mask(1, 1);
    let e = err(cpu_forward(&s, None));
    assert!(matches!(e, Error::MissingMask { head: 2 }), "{e:?} (the block-sparse head is head 2)");
}

#[test]
fn cpu_forward_mask_buffer_without_mask_shape() {
    // `Attention::new` rejects a mask buffer when the spec has no mask shape
    // (Error::Tensor { name: "block_mask" }); the CPU backend must not silently run dense instead.
    let e = err(cpu_forward(&base(), Some(&[1, 0])));
    assert!(matches!(e, Error::Tensor { name: "block_mask", .. }), "{e:?}");
}

#[test]
fn cpu_forward_reports_spec_errors() {
    let e = err(cpu_forward(&base().with_softmax_scale(f32::NAN), None));
    assert!(matches!(e, Error::SoftmaxScale(_)), "{e:?}");
    // Wrong heads are caught before any length arithmetic divides by heads_kv.
    let e = err(cpu::forward::<bf16>(&AttentionSpec::batched(1, 2, 2, 2, 0, 16), &[], &[], &[], None));
    assert!(matches!(e, Error::Heads { .. }), "{e:?}");
}

// ---- check_tensor ----

#[test]
fn check_tensor_stride_not_multiple_of_8() {
    let s = base();
    let good = s.q_strides();
    for bad in [
        Strides { token: good.token + 4, ..good },
        Strides { head: 12, ..good },
        Strides { batch: good.batch + 1, ..good },
    ] {
        let e = err(s.check_tensor("q", &bad, 1 << 20, s.heads_q, true));
        assert!(matches!(e, Error::Tensor { name: "q", .. }), "{bad:?}: {e:?}");
    }
    s.check_tensor("q", &good, s.q_len(), s.heads_q, true).unwrap();
    s.check_tensor("k", &s.kv_strides(), s.kv_len(), s.heads_kv, false).unwrap();
}

#[test]
fn check_tensor_negative_strides() {
    let s = base();
    let good = s.kv_strides();
    for bad in [Strides { token: -good.token, ..good }, Strides { head: -16, ..good }, Strides { batch: -good.batch, ..good }] {
        let e = err(s.check_tensor("k", &bad, 1 << 20, s.heads_kv, false));
        assert!(matches!(e, Error::Tensor { name: "k", .. }), "{bad:?}: {e:?}");
    }
}

#[test]
fn check_tensor_buffer_too_short() {
    let s = base();
    let e = err(s.check_tensor("v", &s.kv_strides(), s.kv_len() - 1, s.heads_kv, false));
    assert!(matches!(e, Error::Tensor { name: "v", .. }), "{e:?}");
    // Padded rows (token stride 3 heads' worth, only 2 used) need a longer buffer.
    let padded = Strides { batch: 5 * 48, token: 48, head: 16 };
    let last = 5 * 48 + 4 * 48 + 16 + 16; // batch 1, token 4, head 1, then D elements
    s.check_tensor("k", &padded, last, s.heads_kv, false).unwrap();
    let e = err(s.check_tensor("k", &padded, last - 1, s.heads_kv, false));
    assert!(matches!(e, Error::Tensor { name: "k", .. }), "{e:?}");
}

#[test]
fn check_tensor_varlen_with_batch_stride() {
    let s = AttentionSpec::varlen(vec![0, 3, 5], vec![0, 2, 4], 2, 1, 16);
    let good = s.q_strides();
    assert_eq!(good.batch, 0);
    s.check_tensor("q", &good, s.q_len(), s.heads_q, true).unwrap();
    let e = err(s.check_tensor("q", &Strides { batch: 64, ..good }, 1 << 20, s.heads_q, true));
    assert!(matches!(e, Error::Tensor { name: "q", .. }), "{e:?}");
}

#[test]
fn check_tensor_stride_overflow_is_an_error() {
    // Strides whose products overflow i64 reach past any buffer; accepting them would let the
    // kernel read out of bounds. (3 tokens at stride 2^62: the last row starts at 2^63.)
    let s = AttentionSpec::batched(1, 3, 3, 1, 1, 8);
    let huge = Strides { batch: 0, token: 1 << 62, head: 0 };
    let r = s.check_tensor("q", &huge, 24, 1, true);
    assert!(matches!(r, Err(Error::Tensor { name: "q", .. })), "{r:?}");
    let huge = Strides { batch: i64::MAX - 7, token: 8, head: 8 };
    let s2 = AttentionSpec::batched(3, 1, 1, 1, 1, 8);
    let r = s2.check_tensor("q", &huge, 64, 1, true);
    assert!(matches!(r, Err(Error::Tensor { name: "q", .. })), "{r:?}");
}

// ---- garbage ----

/// Anything at all for a spec. Each knob is usually sane and sometimes garbage, so that a fair
/// share of specs is valid (and runs the reference) and every check of `validate` is reached.
fn garbage_spec() -> impl Strategy<Value = AttentionSpec> {
    let len = prop_oneof![20 => 0usize..40, 1 => prop::sample::select(vec![MAX_SEQLEN, MAX_SEQLEN + 1, usize::MAX, 1 << 31])];
    let cu_value = prop_oneof![8 => -2i32..40, 1 => prop::sample::select(vec![i32::MIN, -1, 1 << 30, (1 << 30) + 1, i32::MAX])];
    let raw_cu = prop::collection::vec(cu_value, 0..5);
    // Well-formed prefix sums (zero lengths included), possibly with huge lengths.
    let cu_pair = prop::collection::vec((len.clone(), len.clone()), 1..4).prop_map(|lens| {
        let (mut q, mut k) = (vec![0i32], vec![0i32]);
        for (a, b) in lens {
            q.push(q.last().unwrap().saturating_add(a.min(i32::MAX as usize) as i32));
            k.push(k.last().unwrap().saturating_add(b.min(i32::MAX as usize) as i32));
        }
        (q, k)
    });
    let layout = prop_oneof![
        2 => (prop_oneof![6 => 1usize..4, 1 => Just(0)], len.clone(), len)
            .prop_map(|(batch, seqlen_q, seqlen_k)| SeqLayout::Batched { batch, seqlen_q, seqlen_k }),
        2 => cu_pair.prop_map(|(cu_seqlens_q, cu_seqlens_k)| SeqLayout::VarLen { cu_seqlens_q, cu_seqlens_k }),
        1 => (raw_cu.clone(), raw_cu).prop_map(|(cu_seqlens_q, cu_seqlens_k)| SeqLayout::VarLen { cu_seqlens_q, cu_seqlens_k }),
    ];
    let heads = prop_oneof![
        5 => (1usize..4, 1usize..3).prop_map(|(kv, group)| (kv * group, kv)),
        1 => (0usize..7, 0usize..4),
    ];
    let head_dim = prop_oneof![5 => prop::sample::select(vec![8usize, 16, 24, 32]), 1 => prop::sample::select(vec![0usize, 1, 12, 128, 136])];
    let param = prop_oneof![4 => 0u32..300, 1 => any::<u32>()];
    let pattern = prop_oneof![
        Just(HeadPattern::Dense),
        (0u32..4).prop_map(|mask| HeadPattern::BlockSparse { mask }),
        (param.clone(), param.clone()).prop_map(|(sink_blocks, local_blocks)| HeadPattern::BlockStreaming { sink_blocks, local_blocks }),
        (param.clone(), param).prop_map(|(sink_tokens, local_tokens)| HeadPattern::TokenStreaming { sink_tokens, local_tokens }),
    ];
    let scale = prop_oneof![
        4 => Just(None),
        1 => prop::sample::select(vec![f32::NAN, f32::INFINITY, -1.0, 0.0, 1e-30, 0.125, 1e30, f32::MIN_POSITIVE]).prop_map(Some),
    ];
    let mask = prop::option::of((prop_oneof![4 => Just(1usize), 1 => 0usize..4], 0usize..5).prop_map(|(batch, n_masks)| MaskShape { batch, n_masks }));
    (
        layout,
        heads,
        head_dim,
        any::<bool>(),
        scale,
        prop::collection::vec(pattern, 1..7),
        prop::bool::weighted(0.85), // one pattern per head (cycling the generated ones)
        mask,
    )
        .prop_map(|(layout, (heads_q, heads_kv), head_dim, causal, softmax_scale, mut patterns, fit, mask)| {
            if fit {
                patterns = (0..heads_q).map(|h| patterns[h % patterns.len()]).collect();
            }
            AttentionSpec { layout, heads_q, heads_kv, head_dim, causal, softmax_scale, patterns, mask }
        })
}

/// How the garbage call's buffers are sized: right, or off by `delta` elements.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    q: i64,
    kv: i64,
    mask: Option<i64>,
    /// A mask value to plant at a random position (0, 1 are fine; 2 is not).
    mask_value: u8,
}

fn garbage_sizes() -> impl Strategy<Value = Sizes> {
    let delta = prop_oneof![6 => Just(0i64), 1 => -3i64..3];
    (delta.clone(), delta.clone(), prop::option::of(delta), prop::sample::select(vec![0u8, 1, 1, 2]))
        .prop_map(|(q, kv, mask, mask_value)| Sizes { q, kv, mask, mask_value })
}

/// Elements allocated for a real buffer: keeps the test fast and bounded.
const MAX_BUFFER: usize = 1 << 18;

fn sized(need: usize, delta: i64) -> usize {
    if need > MAX_BUFFER { 7 } else { (need as i64 + delta).max(0) as usize }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `validate` and `cpu::forward` never panic; `cpu::forward` fails exactly when `validate`
    /// does (with the same variant) or when a buffer is wrong, and otherwise returns outputs with
    /// no NaN.
    #[test]
    fn garbage_never_panics(spec in garbage_spec(), sizes in garbage_sizes(), seed in any::<u64>()) {
        let valid = spec.validate();
        // Sizes are only meaningful (and only computed) for a valid spec.
        let (nq, nkv, nmask) = if valid.is_ok() { (spec.q_len(), spec.kv_len(), spec.mask_len()) } else { (16, 16, 1) };
        let (q, kv) = (sized(nq, sizes.q), sized(nkv, sizes.kv));
        let mut mask = sizes.mask.map(|d| vec![1u8; sized(nmask, d)]);
        if let Some(m) = mask.as_mut().filter(|m| !m.is_empty()) {
            let at = (seed % m.len() as u64) as usize;
            m[at] = sizes.mask_value;
        }
        let out = cpu::forward::<bf16>(&spec, &zeros(q), &zeros(kv), &zeros(kv), mask.as_deref());
        let bad_buffers = q != nq || kv != nkv;
        // A mask of the wrong length or with a value other than 0/1 (or missing where a head reads it).
        let bad_mask = match (spec.mask, &mask) {
            (Some(_), Some(m)) => m.len() != nmask || m.iter().any(|&x| x > 1),
            (Some(_), None) => spec.uses_mask(),
            (None, _) => false,
        };
        // A mask buffer without a mask shape: an error on the GPU path; tolerated here (see
        // `cpu_forward_mask_buffer_without_mask_shape`, which pins that down).
        let stray_mask = spec.mask.is_none() && mask.is_some();
        match (&valid, &out) {
            (Err(v), Err(o)) => prop_assert_eq!(discriminant(v), discriminant(o), "validate: {:?}, forward: {:?}", v, o),
            (Err(v), Ok(_)) => prop_assert!(false, "validate fails ({:?}) but cpu::forward succeeds", v),
            (Ok(()), Ok(o)) => {
                prop_assert!(!bad_buffers, "cpu::forward accepted buffers of {q}/{kv} elements for {nq}/{nkv}");
                prop_assert!(!bad_mask, "cpu::forward accepted a bad mask {:?} for {} elements", mask, nmask);
                prop_assert!(o.o.iter().all(|x| !x.to_f32().is_nan()) && o.lse.iter().all(|x| !x.is_nan()));
            }
            (Ok(()), Err(e)) => {
                prop_assert!(bad_buffers || bad_mask || stray_mask, "valid call rejected: {:?}", e);
            }
        }
    }

    /// Whenever `check_tensor` accepts a tensor, every element the call touches lies inside
    /// the buffer (computed exactly, in i128), whatever the strides.
    #[test]
    fn check_tensor_ok_means_in_bounds(
        spec in common::arb_case(300, 2, 2, &[8, 16, 24]).prop_map(|c| c.spec),
        strides in (0usize..3, 0usize..3, 0usize..3, any::<i64>(), any::<i64>(), any::<i64>()),
        len in prop_oneof![0usize..100_000, any::<usize>()],
        is_q in any::<bool>(),
    ) {
        // Each stride: contiguous, a small multiple of 8, or anything.
        let pick = |kind: usize, contiguous: i64, raw: i64| match kind {
            0 => contiguous,
            1 => (raw.rem_euclid(64)) * 8,
            _ => raw,
        };
        let c = if is_q { spec.q_strides() } else { spec.kv_strides() };
        let st = Strides {
            batch: if spec.is_varlen() && strides.0 == 0 { 0 } else { pick(strides.0, c.batch, strides.3) },
            token: pick(strides.1, c.token, strides.4),
            head: pick(strides.2, c.head, strides.5),
        };
        let heads = if is_q { spec.heads_q } else { spec.heads_kv };
        if spec.check_tensor("x", &st, len, heads, is_q).is_ok() {
            for b in 0..spec.batch() {
                let s = spec.seq(b);
                let (start, n) = if is_q { (s.q_start, s.q_len) } else { (s.k_start, s.k_len) };
                if n == 0 {
                    continue;
                }
                for (t, h) in [(start, 0), (start + n - 1, heads - 1)] {
                    let first = b as i128 * st.batch as i128 + t as i128 * st.token as i128 + h as i128 * st.head as i128;
                    let end = first + spec.head_dim as i128;
                    prop_assert!(first >= 0 && end <= len as i128,
                        "check_tensor accepted {st:?} with {len} elements, but b={b} token={t} head={h} spans {first}..{end}");
                }
            }
        }
    }
}
