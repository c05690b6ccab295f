//! The `f64` reference on cases small enough to check by hand or by a naive softmax written
//! here. The reference is the oracle of every other test, so it gets its own.
mod common;

use block_sparse_attn::reference::{self, Output, forward, forward_rounded, round_bf16, visible};
use block_sparse_attn::{AttentionSpec, HeadPattern};
use common::normal_inputs;

fn inputs(spec: &AttentionSpec, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let id = |x| x;
    (
        normal_inputs(spec.q_len(), seed, id),
        normal_inputs(spec.kv_len(), seed + 1, id),
        normal_inputs(spec.kv_len(), seed + 2, id),
    )
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// Naive attention of one query row over the keys `js` (contiguous batched layout, `b = 0`):
/// scores, max-free softmax, weighted sum. Returns `(o row, lse)`.
fn naive_row(spec: &AttentionSpec, q: &[f64], k: &[f64], v: &[f64], h: usize, i: usize, js: &[usize]) -> (Vec<f64>, f64) {
    let (d, hq, hkv) = (spec.head_dim, spec.heads_q, spec.heads_kv);
    let kh = h / (hq / hkv);
    let qrow = &q[(i * hq + h) * d..][..d];
    let krow = |j: usize| &k[(j * hkv + kh) * d..][..d];
    let vrow = |j: usize| &v[(j * hkv + kh) * d..][..d];
    let scale = spec.scale() as f64;
    let s: Vec<f64> = js.iter().map(|&j| scale * qrow.iter().zip(krow(j)).map(|(a, b)| a * b).sum::<f64>()).collect();
    let denom: f64 = s.iter().map(|x| x.exp()).sum();
    let mut o = vec![0.0; d];
    for (n, &j) in js.iter().enumerate() {
        for (od, vd) in o.iter_mut().zip(vrow(j)) {
            *od += s[n].exp() / denom * vd;
        }
    }
    (o, denom.ln())
}

/// Asserts row `(h, i)` of a batched, `b = 0` output is `(o, lse)`.
fn assert_row(spec: &AttentionSpec, out: &Output, h: usize, i: usize, o: &[f64], lse: f64, what: &str) {
    let d = spec.head_dim;
    let got = &out.o[(i * spec.heads_q + h) * d..][..d];
    for (x, y) in got.iter().zip(o) {
        assert!(close(*x, *y, 1e-12), "{what}: o[h={h}, i={i}] = {got:?}, want {o:?}");
    }
    let l = out.lse[spec.lse_index(0, h, i)];
    assert!(close(l, lse, 1e-12), "{what}: lse[h={h}, i={i}] = {l}, want {lse}");
}

/// Asserts row `(b, h, i)` saw no key: `o = 0` and `lse = -inf` (never NaN).
fn assert_empty_row(spec: &AttentionSpec, out: &Output, b: usize, h: usize, i: usize) {
    let d = spec.head_dim;
    let qs = spec.q_strides();
    let at = (b as i64 * qs.batch + (spec.seq(b).q_start as i64 + i as i64) * qs.token + h as i64 * qs.head) as usize;
    assert!(out.o[at..at + d].iter().all(|&x| x == 0.0), "row b={b} h={h} i={i} sees no key but o = {:?}", &out.o[at..at + d]);
    let l = out.lse[spec.lse_index(b, h, i)];
    assert!(l == f64::NEG_INFINITY, "row b={b} h={h} i={i} sees no key but lse = {l}");
}

#[test]
fn one_query_one_key_returns_v_and_scaled_dot() {
    let spec = AttentionSpec::batched(1, 1, 1, 1, 1, 8);
    let (q, k, v) = inputs(&spec, 1);
    let out = forward(&spec, &q, &k, &v, None);
    // One key: its probability is exactly 1, so o is v bit for bit.
    assert_eq!(out.o, v);
    let dot: f64 = q.iter().zip(&k).map(|(a, b)| a * b).sum();
    let scale = (1.0f32 / 8f32.sqrt()) as f64; // the default scale, computed in f32 as the spec does
    assert!(close(out.lse[0], scale * dot, 1e-14), "lse {} want {}", out.lse[0], scale * dot);
}

#[test]
fn dense_non_causal_equals_naive_softmax() {
    // Two heads, Sq != Sk, an explicit scale, several rows.
    let spec = AttentionSpec::batched(1, 3, 5, 2, 2, 8).with_softmax_scale(0.7);
    let (q, k, v) = inputs(&spec, 10);
    let out = forward(&spec, &q, &k, &v, None);
    let all: Vec<usize> = (0..5).collect();
    for h in 0..2 {
        for i in 0..3 {
            let (o, lse) = naive_row(&spec, &q, &k, &v, h, i, &all);
            assert_row(&spec, &out, h, i, &o, lse, "dense");
        }
    }
}

#[test]
fn batched_lse_layout_is_b_h_sq() {
    // lse is [B, H, Sq]: check the reference writes where lse_index says, batch by batch,
    // by comparing with the same sequences run one at a time.
    let spec = AttentionSpec::batched(2, 3, 4, 2, 1, 8);
    let (q, k, v) = inputs(&spec, 20);
    let out = forward(&spec, &q, &k, &v, None);
    assert_eq!(spec.lse_index(1, 1, 2), 2 * 3 + 3 + 2);
    let one = AttentionSpec::batched(1, 3, 4, 2, 1, 8);
    for b in 0..2 {
        let part = |x: &[f64], n: usize| x[b * n..(b + 1) * n].to_vec();
        let o1 = forward(&one, &part(&q, one.q_len()), &part(&k, one.kv_len()), &part(&v, one.kv_len()), None);
        assert_eq!(part(&out.o, one.q_len()), o1.o, "o of batch {b}");
        assert_eq!(part(&out.lse, one.lse_len()), o1.lse, "lse of batch {b}");
    }
}

#[test]
fn causal_matches_naive_softmax_over_the_prefix() {
    // Sk > Sq: bottom-right alignment, query i sits on key p = i + Sk - Sq.
    let spec = AttentionSpec::batched(1, 3, 6, 1, 1, 8).with_causal(true);
    let (q, k, v) = inputs(&spec, 30);
    let out = forward(&spec, &q, &k, &v, None);
    for i in 0..3 {
        let keys: Vec<usize> = (0..=i + 3).collect();
        let (o, lse) = naive_row(&spec, &q, &k, &v, 0, i, &keys);
        assert_row(&spec, &out, 0, i, &o, lse, "causal");
    }
}

#[test]
fn gqa_query_head_reads_kv_head_h_over_group() {
    // 6 query heads over 3 kv heads (group 2): heads 0,1 read kv 0; 2,3 read kv 1; 4,5 read kv 2.
    let spec = AttentionSpec::batched(1, 2, 4, 6, 3, 8);
    let (q, k, mut v) = inputs(&spec, 40);
    // Constant v per kv head: whatever the weights, o is that constant (weights sum to 1).
    for (n, x) in v.iter_mut().enumerate() {
        let kv_head = (n / 8) % 3;
        *x = [1.0, -2.0, 5.0][kv_head];
    }
    let out = forward(&spec, &q, &k, &v, None);
    for i in 0..2 {
        for h in 0..6 {
            let want = [1.0, -2.0, 5.0][h / 2];
            let row = &out.o[(i * 6 + h) * 8..][..8];
            assert!(row.iter().all(|&x| close(x, want, 1e-13)), "head {h} row {i}: {row:?}, want {want}");
        }
    }
    // And with random v, every head matches the naive computation on kv head h / 2.
    let (_, _, v) = inputs(&spec, 41);
    let out = forward(&spec, &q, &k, &v, None);
    let all: Vec<usize> = (0..4).collect();
    for h in 0..6 {
        for i in 0..2 {
            let (o, lse) = naive_row(&spec, &q, &k, &v, h, i, &all);
            assert_row(&spec, &out, h, i, &o, lse, "gqa");
        }
    }
}

#[test]
fn mqa_every_query_head_reads_the_one_kv_head() {
    let spec = AttentionSpec::batched(1, 2, 3, 4, 1, 8);
    let (q, k, v) = inputs(&spec, 50);
    let out = forward(&spec, &q, &k, &v, None);
    let all: Vec<usize> = (0..3).collect();
    for h in 0..4 {
        for i in 0..2 {
            let (o, lse) = naive_row(&spec, &q, &k, &v, h, i, &all);
            assert_row(&spec, &out, h, i, &o, lse, "mqa");
        }
    }
}

#[test]
fn causal_with_more_queries_than_keys_leaves_first_rows_empty() {
    // Sq = 5, Sk = 3: p = i - 2, so rows 0 and 1 see no key; row 2 sees key 0 only.
    let spec = AttentionSpec::batched(1, 5, 3, 1, 1, 8).with_causal(true);
    let (q, k, v) = inputs(&spec, 60);
    let out = forward(&spec, &q, &k, &v, None);
    assert_empty_row(&spec, &out, 0, 0, 0);
    assert_empty_row(&spec, &out, 0, 0, 1);
    assert_eq!(&out.o[2 * 8..3 * 8], &v[0..8], "row 2 sees only key 0: o = v[0]");
    let dot: f64 = q[16..24].iter().zip(&k[0..8]).map(|(a, b)| a * b).sum();
    assert!(close(out.lse[2], spec.scale() as f64 * dot, 1e-14));
    for i in 2..5 {
        let keys: Vec<usize> = (0..=i - 2).collect();
        let (o, lse) = naive_row(&spec, &q, &k, &v, 0, i, &keys);
        assert_row(&spec, &out, 0, i, &o, lse, "causal Sq > Sk");
    }
}

#[test]
fn token_streaming_with_no_sink_and_no_window_sees_nothing() {
    for causal in [false, true] {
        let spec = AttentionSpec::batched(1, 4, 4, 1, 1, 8)
            .with_causal(causal)
            .with_pattern_all(HeadPattern::TokenStreaming { sink_tokens: 0, local_tokens: 0 });
        let (q, k, v) = inputs(&spec, 70);
        let out = forward(&spec, &q, &k, &v, None);
        for i in 0..4 {
            assert_empty_row(&spec, &out, 0, 0, i);
        }
    }
}

#[test]
fn all_zero_mask_row_sees_nothing() {
    // Sq = 200 (two query blocks), Sk = 50 (one key block); mask keeps query block 0 only.
    let spec = AttentionSpec::batched(1, 200, 50, 1, 1, 8)
        .with_pattern_all(HeadPattern::BlockSparse { mask: 0 })
        .with_block_mask(1, 1);
    assert_eq!(spec.mask_len(), 2);
    let mask = [1u8, 0];
    let (q, k, v) = inputs(&spec, 80);
    let out = forward(&spec, &q, &k, &v, Some(&mask));
    let dense = forward(&AttentionSpec::batched(1, 200, 50, 1, 1, 8), &q, &k, &v, None);
    for i in 0..128 {
        assert_eq!(out.lse[i], dense.lse[i], "row {i} of a kept block is dense");
    }
    for i in 128..200 {
        assert_empty_row(&spec, &out, 0, 0, i);
    }
}

#[test]
fn zero_length_key_sequence_gives_empty_rows() {
    // Varlen: sequence 0 has 3 queries and no keys; sequence 1 is ordinary.
    let spec = AttentionSpec::varlen(vec![0, 3, 5], vec![0, 0, 4], 2, 1, 8);
    let (q, k, v) = inputs(&spec, 90);
    let out = forward(&spec, &q, &k, &v, None);
    for h in 0..2 {
        for i in 0..3 {
            assert_empty_row(&spec, &out, 0, h, i);
        }
        for i in 0..2 {
            assert!(out.lse[spec.lse_index(1, h, i)].is_finite());
        }
    }
    assert!(out.o.iter().all(|x| x.is_finite()));
}

#[test]
fn varlen_equals_each_sequence_run_alone() {
    // Sequences (Sq, Sk) = (2, 3), (0, 2), (3, 1), (1, 0): zero lengths on either side. lse is [H, total_q].
    let lens = [(2usize, 3usize), (0, 2), (3, 1), (1, 0)];
    let cu = |f: fn(&(usize, usize)) -> usize| {
        let mut c = vec![0i32];
        for l in &lens {
            c.push(c.last().unwrap() + f(l) as i32);
        }
        c
    };
    let (cq, ck) = (cu(|l| l.0), cu(|l| l.1));
    let patterns = vec![HeadPattern::Dense, HeadPattern::TokenStreaming { sink_tokens: 1, local_tokens: 1 }];
    let spec = AttentionSpec::varlen(cq.clone(), ck.clone(), 2, 1, 8).with_causal(true).with_patterns(patterns.clone());
    let (q, k, v) = inputs(&spec, 100);
    let out = forward(&spec, &q, &k, &v, None);
    let (hq, d) = (2, 8);
    for (b, &(sq, sk)) in lens.iter().enumerate() {
        let one = AttentionSpec::batched(1, sq, sk, 2, 1, 8).with_causal(true).with_patterns(patterns.clone());
        let (q0, k0) = (cq[b] as usize, ck[b] as usize);
        let qs = &q[q0 * hq * d..(q0 + sq) * hq * d];
        let ks = &k[k0 * d..(k0 + sk) * d];
        let vs = &v[k0 * d..(k0 + sk) * d];
        let alone = forward(&one, qs, ks, vs, None);
        assert_eq!(&out.o[q0 * hq * d..(q0 + sq) * hq * d], &alone.o[..], "o of sequence {b}");
        for h in 0..hq {
            for i in 0..sq {
                assert_eq!(spec.lse_index(b, h, i), h * spec.total_q() + q0 + i);
                assert_eq!(out.lse[spec.lse_index(b, h, i)], alone.lse[one.lse_index(0, h, i)], "lse of b={b} h={h} i={i}");
            }
        }
    }
}

#[test]
fn token_streaming_local_one_sees_itself_and_the_sinks() {
    // local_tokens = 1 counts the query's own token: row i (p = i + 2) sees key p and key 0.
    let spec = AttentionSpec::batched(1, 3, 5, 1, 1, 8)
        .with_pattern_all(HeadPattern::TokenStreaming { sink_tokens: 1, local_tokens: 1 });
    let (q, k, v) = inputs(&spec, 110);
    let out = forward(&spec, &q, &k, &v, None);
    for i in 0..3 {
        let (o, lse) = naive_row(&spec, &q, &k, &v, 0, i, &[0, i + 2]);
        assert_row(&spec, &out, 0, i, &o, lse, "token streaming");
    }
}

#[test]
fn streaming_windows_end_at_the_query_even_without_causal() {
    // The cases where `semantics.md` differs from the seed.
    // Decoding, Sq = 1, Sk = 300: p = 299, diagonal block d = 2. One sink block and one local
    // block show keys 0..128 and 256..300 (the seed's partial-block window would lose block 2).
    let spec = AttentionSpec::batched(1, 1, 300, 1, 1, 8)
        .with_pattern_all(HeadPattern::BlockStreaming { sink_blocks: 1, local_blocks: 1 });
    for j in 0..300 {
        assert_eq!(visible(&spec, None, 0, 0, 0, j), j < 128 || j >= 256, "decode, key {j}");
    }
    // Sq = 200 > Sk = 100, non-causal, one local block: row 0 has p = -100 and d = floor(-100/128)
    // = -1, so it sees no block (truncation would give d = 0 and show block 0); row 100 has p = 0.
    let spec = AttentionSpec::batched(1, 200, 100, 1, 1, 8)
        .with_pattern_all(HeadPattern::BlockStreaming { sink_blocks: 0, local_blocks: 1 });
    assert!((0..100).all(|j| !visible(&spec, None, 0, 0, 0, j)), "row 0 (p = -100) sees nothing");
    assert!((0..100).all(|j| visible(&spec, None, 0, 0, 100, j)), "row 100 (p = 0) sees block 0");
    // Non-causal token streaming still ends at p: Sq = Sk = 10, row 3 with a 2-token window sees 2..=3.
    let spec = AttentionSpec::batched(1, 10, 10, 1, 1, 8)
        .with_pattern_all(HeadPattern::TokenStreaming { sink_tokens: 0, local_tokens: 2 });
    for j in 0..10 {
        assert_eq!(visible(&spec, None, 0, 0, 3, j), j == 2 || j == 3, "token window, key {j}");
    }
}

#[test]
fn rounded_bf16_is_close_to_but_not_exactly_f64() {
    let spec = AttentionSpec::batched(1, 16, 24, 2, 1, 32).with_causal(true);
    let (q, k, v) = inputs(&spec, 120);
    let exact = forward(&spec, &q, &k, &v, None);
    let rounded = forward_rounded(&spec, &q, &k, &v, None, round_bf16);
    let err = exact.o.iter().zip(&rounded.o).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err > 0.0, "bf16 rounding changed nothing: the yardstick would be zero");
    assert!(err < 3e-2, "bf16 rounding error {err} is too large for unit-variance inputs");
    // Every rounded output is a bf16 value.
    assert!(rounded.o.iter().all(|&x| round_bf16(x) == x));
    // lse is not rounded by construction, but its scores are: close, and finite where exact is.
    for (a, b) in exact.lse.iter().zip(&rounded.lse) {
        assert!((a - b).abs() < 0.1, "lse {a} vs {b}");
    }
    // The exact path is the identity rounding.
    assert_eq!(reference::exact(0.1), 0.1);
}
