//! The `f64` backward reference against finite differences of the `f64` forward reference.
//!
//! The loss is `L = Σ o ∘ d_o`, so `reference::backward` must return `∂L/∂q`, `∂L/∂k`, `∂L/∂v`.
//! Central differences in `f64` (`h = 1e-6`) agree with the exact gradient to about 1e-9, far
//! inside the 1e-6 relative tolerance. Small calls check every coordinate; calls long enough for
//! 128-token blocks check a directional derivative per sampled row (a random direction in that
//! row's `D` coordinates). Every call also checks, against `reference::visible`, that keys no
//! query sees and rows that see no key get exactly zero gradients, and two identities that hold
//! only when `lse` normalises the probabilities: `Σ_j dV_j = Σ_i dO_i` over the rows that see a
//! key, and `Σ_j dK_j = 0` (shifting every key by one vector leaves each softmax unchanged).
mod common;

use block_sparse_attn::reference::{self, Grads, backward, backward_rounded, forward, round_bf16, visible};
use block_sparse_attn::{AttentionSpec, HeadPattern};
use common::{arb_case, normal_inputs, random_mask};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

/// One call with its inputs, forward outputs and gradients.
struct Run {
    spec: AttentionSpec,
    mask: Option<Vec<u8>>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    d_o: Vec<f64>,
    lse: Vec<f64>,
    g: Grads,
}

impl Run {
    fn new(spec: AttentionSpec, mask: Option<Vec<u8>>, seed: u64) -> Self {
        spec.validate().expect("a valid test spec");
        let id = |x| x;
        let q = normal_inputs(spec.q_len(), seed, id);
        let k = normal_inputs(spec.kv_len(), seed + 1, id);
        let v = normal_inputs(spec.kv_len(), seed + 2, id);
        let d_o = normal_inputs(spec.q_len(), seed + 3, id);
        let out = forward(&spec, &q, &k, &v, mask.as_deref());
        let g = backward(&spec, &q, &k, &v, &out.o, &out.lse, &d_o, mask.as_deref());
        Run { spec, mask, q, k, v, d_o, lse: out.lse, g }
    }

    fn mask(&self) -> Option<&[u8]> {
        self.mask.as_deref()
    }

    /// `(L(x + h u) - L(x - h u)) / 2h` for `x` one of q, k, v (`which` = 0, 1, 2), summing the
    /// differences of the outputs before the products so the cancellation happens term by term.
    fn fd(&self, which: usize, dir: &[(usize, f64)]) -> f64 {
        let shifted = |sign: f64| {
            let (mut q, mut k, mut v) = (self.q.clone(), self.k.clone(), self.v.clone());
            let x = match which {
                0 => &mut q,
                1 => &mut k,
                _ => &mut v,
            };
            for &(at, u) in dir {
                x[at] += sign * H * u;
            }
            forward(&self.spec, &q, &k, &v, self.mask()).o
        };
        let (plus, minus) = (shifted(1.0), shifted(-1.0));
        plus.iter().zip(&minus).zip(&self.d_o).map(|((a, b), d)| (a - b) * d).sum::<f64>() / (2.0 * H)
    }

    fn grad(&self, which: usize) -> &[f64] {
        [&self.g.dq, &self.g.dk, &self.g.dv][which]
    }

    /// The directional derivative along `dir` against the gradient.
    fn check_dir(&self, which: usize, dir: &[(usize, f64)], what: &str) {
        let fd = self.fd(which, dir);
        let an: f64 = dir.iter().map(|&(at, u)| self.grad(which)[at] * u).sum();
        let name = ["dq", "dk", "dv"][which];
        assert!(
            (fd - an).abs() <= TOL * (1.0 + fd.abs().max(an.abs())),
            "{what}: {name} along {dir:?}: backward gives {an}, finite differences {fd} (spec {:?})",
            self.spec
        );
    }

    /// Finite differences of every coordinate of q, k and v.
    fn check_all_coords(&self, what: &str) {
        for which in 0..3 {
            for at in 0..self.grad(which).len() {
                self.check_dir(which, &[(at, 1.0)], what);
            }
        }
    }

    /// A directional derivative per row (`[token, head]`) of q, k and v, for the rows `keep`
    /// accepts, each along a random direction in the row's coordinates.
    fn check_rows(&self, what: &str, seed: u64, keep: impl Fn(usize, usize) -> bool) {
        let d = self.spec.head_dim;
        let mut rng = StdRng::seed_from_u64(seed);
        for which in 0..3 {
            let heads = if which == 0 { self.spec.heads_q } else { self.spec.heads_kv };
            for row in 0..self.grad(which).len() / d {
                if keep(row / heads, row % heads) {
                    let dir: Vec<(usize, f64)> = (0..d).map(|c| (row * d + c, rng.random_range(-1.0..1.0))).collect();
                    self.check_dir(which, &dir, what);
                }
            }
        }
    }

    /// One random direction over all of q, k and v each.
    fn check_global(&self, what: &str, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        for which in 0..3 {
            let dir: Vec<(usize, f64)> = (0..self.grad(which).len()).map(|at| (at, rng.random_range(-1.0..1.0))).collect();
            self.check_dir(which, &dir, what);
        }
    }

    /// Offset of row `(b, token i of the sequence, head)` of q (`is_q`) or k/v.
    fn row_at(&self, is_q: bool, b: usize, i: usize, head: usize) -> usize {
        let s = self.spec.seq(b);
        let st = if is_q { self.spec.q_strides() } else { self.spec.kv_strides() };
        let start = if is_q { s.q_start } else { s.k_start } as i64;
        (b as i64 * st.batch + (start + i as i64) * st.token + head as i64 * st.head) as usize
    }

    /// Exact zeros where nothing flows, and the two normalisation identities (see the module doc).
    fn check_structure(&self, what: &str) {
        let spec = &self.spec;
        let d = spec.head_dim;
        let group = spec.group();
        for b in 0..spec.batch() {
            let s = spec.seq(b);
            let (sq, sk) = (s.q_len as usize, s.k_len as usize);
            for h in 0..spec.heads_q {
                for i in 0..sq {
                    let sees_any = (0..sk).any(|j| visible(spec, self.mask(), b, h, i, j));
                    let lse = self.lse[spec.lse_index(b, h, i)];
                    assert_eq!(sees_any, lse != f64::NEG_INFINITY, "{what}: lse {lse} of b={b} h={h} i={i}");
                    let at = self.row_at(true, b, i, h);
                    if !sees_any {
                        assert!(self.g.dq[at..at + d].iter().all(|&x| x == 0.0), "{what}: dq of the empty row b={b} h={h} i={i}");
                    }
                }
            }
            for kh in 0..spec.heads_kv {
                let heads = kh * group..(kh + 1) * group;
                let mut sum_dv = vec![0.0; d];
                let mut sum_do = vec![0.0; d];
                let mut sum_dk = vec![0.0; d];
                for j in 0..sk {
                    let at = self.row_at(false, b, j, kh);
                    let seen = heads.clone().any(|h| (0..sq).any(|i| visible(spec, self.mask(), b, h, i, j)));
                    if !seen {
                        assert!(self.g.dk[at..at + d].iter().all(|&x| x == 0.0), "{what}: dk of the unseen key b={b} kh={kh} j={j}");
                        assert!(self.g.dv[at..at + d].iter().all(|&x| x == 0.0), "{what}: dv of the unseen key b={b} kh={kh} j={j}");
                    }
                    for c in 0..d {
                        sum_dv[c] += self.g.dv[at + c];
                        sum_dk[c] += self.g.dk[at + c];
                    }
                }
                for h in heads.clone() {
                    for i in 0..sq {
                        if self.lse[spec.lse_index(b, h, i)] != f64::NEG_INFINITY {
                            let at = self.row_at(true, b, i, h);
                            for c in 0..d {
                                sum_do[c] += self.d_o[at + c];
                            }
                        }
                    }
                }
                for c in 0..d {
                    assert!((sum_dv[c] - sum_do[c]).abs() <= 1e-9 * (1.0 + sum_do[c].abs()), "{what}: Σ dv {sum_dv:?} != Σ dO {sum_do:?} (b={b} kh={kh})");
                    assert!(sum_dk[c].abs() <= 1e-9, "{what}: Σ dk = {sum_dk:?}, not 0 (b={b} kh={kh})");
                }
            }
        }
    }
}

/// Small calls: every coordinate.
fn check_small(spec: AttentionSpec, mask: Option<Vec<u8>>, seed: u64, what: &str) -> Run {
    let run = Run::new(spec, mask, seed);
    run.check_structure(what);
    run.check_all_coords(what);
    run
}

/// Calls over several 128-token blocks: rows whose token is near a block boundary, the first
/// and last tokens, and a sample of the rest.
fn check_long(spec: AttentionSpec, mask: Option<Vec<u8>>, seed: u64, what: &str) -> Run {
    let run = Run::new(spec, mask, seed);
    run.check_structure(what);
    run.check_global(what, seed + 10);
    run.check_rows(what, seed + 11, |t, head| {
        let r = t % 128;
        r == 0 || r == 127 || (t * 7 + head * 3) % 37 == 0
    });
    run
}

fn dense_call(b: usize, sq: usize, sk: usize, hq: usize, hkv: usize) -> AttentionSpec {
    AttentionSpec::batched(b, sq, sk, hq, hkv, 8)
}

#[test]
fn dense_non_causal_with_gqa() {
    // Sq < Sk and Sq > Sk, GQA groups of 2, two sequences, an explicit scale.
    for (sq, sk) in [(3, 5), (5, 3), (1, 4)] {
        let spec = dense_call(2, sq, sk, 4, 2).with_softmax_scale(0.6);
        check_small(spec, None, 100 + sq as u64, &format!("dense Sq={sq} Sk={sk}"));
    }
}

#[test]
fn dense_causal_both_alignments() {
    // Sq > Sk under causal: the first Sq - Sk rows see no key.
    let run = check_small(dense_call(1, 6, 4, 2, 1).with_causal(true), None, 200, "causal Sq=6 Sk=4");
    assert_eq!(run.lse[run.spec.lse_index(0, 1, 1)], f64::NEG_INFINITY);
    assert!(run.lse[run.spec.lse_index(0, 1, 2)].is_finite());
    check_small(dense_call(1, 3, 7, 2, 2).with_causal(true), None, 210, "causal Sq=3 Sk=7");
    check_small(dense_call(2, 5, 5, 3, 1).with_causal(true), None, 220, "causal Sq=Sk=5 MQA");
}

#[test]
fn token_streaming_mixed_heads() {
    let patterns = vec![
        HeadPattern::TokenStreaming { sink_tokens: 2, local_tokens: 3 },
        HeadPattern::TokenStreaming { sink_tokens: 0, local_tokens: 0 }, // sees nothing
        HeadPattern::TokenStreaming { sink_tokens: 3, local_tokens: 1 },
        HeadPattern::Dense,
        HeadPattern::TokenStreaming { sink_tokens: 0, local_tokens: 4 },
        HeadPattern::TokenStreaming { sink_tokens: 20, local_tokens: 2 }, // sink covers everything
    ];
    for causal in [false, true] {
        for (sq, sk) in [(12, 12), (5, 13), (9, 4)] {
            let spec = AttentionSpec::batched(1, sq, sk, 6, 3, 8).with_causal(causal).with_patterns(patterns.clone());
            let run = check_small(spec, None, 300 + sq as u64, &format!("token streaming causal={causal} Sq={sq} Sk={sk}"));
            // The head with no sink and no window has no gradient at all.
            let d = run.spec.head_dim;
            for i in 0..sq {
                let at = (i * 6 + 1) * d;
                assert!(run.g.dq[at..at + d].iter().all(|&x| x == 0.0));
            }
        }
    }
}

#[test]
fn block_streaming_over_several_blocks() {
    let patterns = vec![
        HeadPattern::BlockStreaming { sink_blocks: 1, local_blocks: 1 },
        HeadPattern::BlockStreaming { sink_blocks: 0, local_blocks: 2 },
        HeadPattern::TokenStreaming { sink_tokens: 5, local_tokens: 130 },
        HeadPattern::BlockStreaming { sink_blocks: 1, local_blocks: 0 },
    ];
    for causal in [false, true] {
        for (sq, sk) in [(140, 290), (270, 150)] {
            let spec = AttentionSpec::batched(1, sq, sk, 4, 2, 8).with_causal(causal).with_patterns(patterns.clone());
            check_long(spec, None, 400 + sq as u64, &format!("block streaming causal={causal} Sq={sq} Sk={sk}"));
        }
    }
}

#[test]
fn block_sparse_with_empty_mask_rows_and_columns() {
    // 2 x 3 blocks; slice 0 has an empty query-block row (1) and an empty key-block column (2).
    #[rustfmt::skip]
    let slice0 = [
        1, 1, 0,
        0, 0, 0,
    ];
    #[rustfmt::skip]
    let slice1 = [
        0, 1, 1,
        1, 0, 1,
    ];
    for causal in [false, true] {
        let spec = AttentionSpec::batched(2, 150, 260, 2, 1, 8)
            .with_causal(causal)
            .with_patterns(vec![HeadPattern::BlockSparse { mask: 0 }, HeadPattern::BlockSparse { mask: 1 }])
            .with_block_mask(2, 2);
        // Batch 1 uses a random mask.
        let mut mask: Vec<u8> = slice0.iter().chain(&slice1).copied().collect();
        mask.extend(random_mask(12, 0.5, 7));
        assert_eq!(mask.len(), spec.mask_len());
        let run = check_long(spec, Some(mask), 500, &format!("block sparse causal={causal}"));
        // Query block 1 of head 0 (batch 0) sees nothing.
        let lse = run.lse[run.spec.lse_index(0, 0, 140)];
        assert_eq!(lse, f64::NEG_INFINITY);
    }
}

#[test]
fn varlen_with_empty_sequences() {
    // Sequences (Sq, Sk): (4, 6), (0, 0), (5, 0) whose rows see nothing, (0, 5) whose keys no
    // query sees, (3, 3).
    let cu_q = vec![0, 4, 4, 9, 9, 12];
    let cu_k = vec![0, 6, 6, 6, 11, 14];
    let patterns = vec![
        HeadPattern::Dense,
        HeadPattern::TokenStreaming { sink_tokens: 1, local_tokens: 2 },
        HeadPattern::BlockSparse { mask: 0 },
        HeadPattern::BlockStreaming { sink_blocks: 0, local_blocks: 1 },
    ];
    for causal in [false, true] {
        for mask_bit in [0u8, 1] {
            let spec = AttentionSpec::varlen(cu_q.clone(), cu_k.clone(), 4, 2, 8)
                .with_causal(causal)
                .with_patterns(patterns.clone())
                .with_block_mask(1, 1);
            let run = check_small(spec, Some(vec![mask_bit]), 600, &format!("varlen causal={causal} mask={mask_bit}"));
            // The keys of sequence 3 (no queries) have zero gradients.
            assert!(run.g.dk[6 * 2 * 8..11 * 2 * 8].iter().all(|&x| x == 0.0));
            assert!(run.g.dv[6 * 2 * 8..11 * 2 * 8].iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn rows_with_lse_minus_inf_contribute_nothing() {
    // Causal with Sq > Sk: rows 0..3 see nothing. Their dO must not reach any gradient, even when
    // huge; nothing is NaN.
    let spec = dense_call(1, 7, 4, 2, 1).with_causal(true);
    let run = Run::new(spec.clone(), None, 700);
    let mut d_o = run.d_o.clone();
    for i in 0..3 {
        for x in &mut d_o[i * 2 * 8..(i + 1) * 2 * 8] {
            *x = 1e300;
        }
    }
    let out = forward(&spec, &run.q, &run.k, &run.v, None);
    let g = backward(&spec, &run.q, &run.k, &run.v, &out.o, &out.lse, &d_o, None);
    assert_eq!(g, run.g);
    assert!(g.dq.iter().chain(&g.dk).chain(&g.dv).all(|x| x.is_finite()));
}

#[test]
fn backward_reads_the_given_lse() {
    // P is exp(s - lse) with the lse it is given: shifting lse by δ scales P, so dv, by exp(-δ).
    let spec = dense_call(1, 4, 6, 2, 2).with_causal(true);
    let run = Run::new(spec.clone(), None, 800);
    let out = forward(&spec, &run.q, &run.k, &run.v, None);
    let shifted: Vec<f64> = out.lse.iter().map(|x| x + 0.5).collect();
    let g = backward(&spec, &run.q, &run.k, &run.v, &out.o, &shifted, &run.d_o, None);
    for (a, b) in g.dv.iter().zip(&run.g.dv) {
        assert!((a - b * (-0.5f64).exp()).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn rounded_exact_is_backward_and_bf16_is_close() {
    let spec = AttentionSpec::batched(1, 130, 140, 2, 1, 16)
        .with_causal(true)
        .with_patterns(vec![HeadPattern::Dense, HeadPattern::TokenStreaming { sink_tokens: 4, local_tokens: 20 }]);
    let q = normal_inputs(spec.q_len(), 900, round_bf16);
    let k = normal_inputs(spec.kv_len(), 901, round_bf16);
    let v = normal_inputs(spec.kv_len(), 902, round_bf16);
    let d_o = normal_inputs(spec.q_len(), 903, round_bf16);
    let out = forward(&spec, &q, &k, &v, None);
    let exact = backward(&spec, &q, &k, &v, &out.o, &out.lse, &d_o, None);
    assert_eq!(backward_rounded(&spec, &q, &k, &v, &out.o, &out.lse, &d_o, None, reference::exact), exact);

    let out16 = reference::forward_rounded(&spec, &q, &k, &v, None, round_bf16);
    let r = backward_rounded(&spec, &q, &k, &v, &out16.o, &out16.lse, &d_o, None, round_bf16);
    for (name, a, b) in [("dq", &r.dq, &exact.dq), ("dk", &r.dk, &exact.dk), ("dv", &r.dv, &exact.dv)] {
        assert!(a.iter().all(|&x| round_bf16(x) == x), "{name} is not rounded to bf16");
        let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let err = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(err > 0.0, "{name}: rounding changed nothing");
        assert!(err <= 0.05 * scale, "{name}: bf16 error {err} against max |grad| {scale}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random small calls (every pattern, both layouts, GQA, empty sequences, random masks):
    /// the structure checks and one random direction per tensor.
    #[test]
    fn random_calls_match_finite_differences(case in arb_case(40, 2, 2, &[8]), seed in 0u64..1000) {
        let run = Run::new(case.spec.clone(), case.mask.clone(), seed);
        run.check_structure("random call");
        run.check_global("random call", seed + 5);
    }
}
