//! Shared strategies and helpers of the CPU tests: random attention calls (spec + block mask)
//! covering the corners of `semantics.md`, and random 16-bit inputs.
#![allow(dead_code)] // each test binary uses a different subset

use block_sparse_attn::reference::visible;
use block_sparse_attn::{AttentionSpec, HeadPattern, SeqLayout};
use proptest::prelude::*;
use proptest::strategy::Union;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One attention call: a valid spec and, when it has a mask shape, a 0/1 block mask of the
/// spec's `mask_len()`.
#[derive(Clone, Debug)]
pub struct Case {
    pub spec: AttentionSpec,
    pub mask: Option<Vec<u8>>,
}

impl Case {
    pub fn mask(&self) -> Option<&[u8]> {
        self.mask.as_deref()
    }
}

/// Sequence lengths up to `max`: uniform, or a block-boundary value (0, 1, 127, 128, 129, ...)
/// where off-by-one errors in the block arithmetic live.
pub fn arb_len(max: usize) -> impl Strategy<Value = usize> {
    let specials: Vec<usize> = [0, 1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257, 383, 384, 385, 511, 640, 700]
        .into_iter()
        .filter(|&x| x <= max)
        .collect();
    prop_oneof![2 => 0..=max, 1 => proptest::sample::select(specials)]
}

/// Batched (including `Sq = 1` decoding and empty sequences) or variable-length layouts
/// (1 to 4 sequences, zero-length ones included).
pub fn arb_layout(max_len: usize) -> impl Strategy<Value = SeqLayout> {
    prop_oneof![
        3 => (1usize..=3, arb_len(max_len), arb_len(max_len))
            .prop_map(|(batch, seqlen_q, seqlen_k)| SeqLayout::Batched { batch, seqlen_q, seqlen_k }),
        // Decoding: one or two new queries over a cache.
        1 => (1usize..=3, 1usize..=2, arb_len(max_len))
            .prop_map(|(batch, seqlen_q, seqlen_k)| SeqLayout::Batched { batch, seqlen_q, seqlen_k }),
        3 => prop::collection::vec((arb_len(max_len), arb_len(max_len)), 1..=4).prop_map(|lens| {
            let (mut cq, mut ck) = (vec![0i32], vec![0i32]);
            for (q, k) in lens {
                cq.push(cq.last().unwrap() + q as i32);
                ck.push(ck.last().unwrap() + k as i32);
            }
            SeqLayout::VarLen { cu_seqlens_q: cq, cu_seqlens_k: ck }
        }),
    ]
}

/// Token counts for token streaming: uniform up to `max`, or a block-boundary value.
fn arb_tokens(max: u32) -> impl Strategy<Value = u32> {
    let specials: Vec<u32> = [0, 1, 2, 127, 128, 129].into_iter().filter(|&x| x <= max).collect();
    prop_oneof![3 => 0..=max, 1 => proptest::sample::select(specials)]
}

/// One head's pattern; block-sparse only when there are `n_masks > 0` mask slices to name.
pub fn arb_pattern(n_masks: usize) -> BoxedStrategy<HeadPattern> {
    let mut options = vec![
        Just(HeadPattern::Dense).boxed(),
        (0u32..=3, 0u32..=4)
            .prop_map(|(sink_blocks, local_blocks)| HeadPattern::BlockStreaming { sink_blocks, local_blocks })
            .boxed(),
        (arb_tokens(200), arb_tokens(300))
            .prop_map(|(sink_tokens, local_tokens)| HeadPattern::TokenStreaming { sink_tokens, local_tokens })
            .boxed(),
    ];
    if n_masks > 0 {
        // Twice as likely as the others: it is the pattern with the most moving parts.
        let sparse = (0..n_masks as u32).prop_map(|mask| HeadPattern::BlockSparse { mask });
        options.push(sparse.clone().boxed());
        options.push(sparse.boxed());
    }
    Union::new(options).boxed()
}

/// Fraction of set mask blocks: all zero, all one, or anything between.
fn arb_density() -> impl Strategy<Value = f64> {
    prop_oneof![1 => Just(0.0), 1 => Just(1.0), 3 => 0.0..1.0]
}

/// A valid attention call with lengths up to `max_len`, `heads_kv` up to `max_heads_kv`, GQA
/// groups up to `max_group`, a head dim from `head_dims`, mixed per-head patterns and (for
/// about three calls in four) a random block mask of batch 1 or B with 1 to 3 slices.
pub fn arb_case(max_len: usize, max_heads_kv: usize, max_group: usize, head_dims: &'static [usize]) -> impl Strategy<Value = Case> {
    (
        arb_layout(max_len),
        1..=max_heads_kv,
        1..=max_group,
        proptest::sample::select(head_dims),
        any::<bool>(),
        0usize..=3, // n_masks; 0 = no mask shape at all
        any::<bool>(),
        arb_density(),
        any::<u64>(),
    )
        .prop_flat_map(move |(layout, heads_kv, group, head_dim, causal, n_masks, per_batch, density, seed)| {
            let heads_q = heads_kv * group;
            prop::collection::vec(arb_pattern(n_masks), heads_q).prop_map(move |patterns| {
                let mut spec = AttentionSpec {
                    layout: layout.clone(),
                    heads_q,
                    heads_kv,
                    head_dim,
                    causal,
                    softmax_scale: None,
                    patterns,
                    mask: None,
                };
                let mask = (n_masks > 0).then(|| {
                    let batch = if per_batch { spec.batch() } else { 1 };
                    spec = spec.clone().with_block_mask(batch, n_masks);
                    random_mask(spec.mask_len(), density, seed)
                });
                Case { spec, mask }
            })
        })
}

/// `len` mask values, each 1 with probability `density`.
pub fn random_mask(len: usize, density: f64, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_bool(density) as u8).collect()
}

/// `n` standard normal samples (Box-Muller), rounded by `round` (to the input dtype).
pub fn normal_inputs(n: usize, seed: u64, round: fn(f64) -> f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
            let u2: f64 = rng.random();
            round((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos())
        })
        .collect()
}

/// Value of the block mask of `spec` for sequence `b`, slice `m`, query block `qb`, key block
/// `kb`, indexed straight from `semantics.md` (`[B or 1, n_masks, q_blocks, k_blocks]`).
pub fn mask_bit(spec: &AttentionSpec, mask: &[u8], b: usize, m: u32, qb: usize, kb: usize) -> bool {
    let shape = spec.mask.unwrap();
    let mb = if shape.batch == 1 { 0 } else { b };
    let (nq, nk) = (spec.max_seqlen_q().div_ceil(128), spec.max_seqlen_k().div_ceil(128));
    mask[((mb * shape.n_masks + m as usize) * nq + qb) * nk + kb] != 0
}

/// Brute-force visibility of one (sequence, head) from the reference: `vis[i * sk + j]`.
pub fn visibility(spec: &AttentionSpec, mask: Option<&[u8]>, b: usize, h: usize) -> Vec<bool> {
    let s = spec.seq(b);
    let (sq, sk) = (s.q_len as usize, s.k_len as usize);
    let mut vis = vec![false; sq * sk];
    for i in 0..sq {
        for j in 0..sk {
            vis[i * sk + j] = visible(spec, mask, b, h, i, j);
        }
    }
    vis
}

/// One head of every pattern kind at the parameters that stress tile boundaries: windows of 1
/// and 0 tokens, sink and window past a block, sink and window meeting inside a tile, no blocks.
pub fn boundary_patterns() -> Vec<HeadPattern> {
    vec![
        HeadPattern::Dense,
        HeadPattern::BlockSparse { mask: 0 },
        HeadPattern::BlockStreaming { sink_blocks: 1, local_blocks: 1 },
        HeadPattern::BlockStreaming { sink_blocks: 0, local_blocks: 2 },
        HeadPattern::TokenStreaming { sink_tokens: 4, local_tokens: 1 },
        HeadPattern::TokenStreaming { sink_tokens: 0, local_tokens: 0 },
        HeadPattern::TokenStreaming { sink_tokens: 129, local_tokens: 130 },
        HeadPattern::TokenStreaming { sink_tokens: 100, local_tokens: 50 },
        HeadPattern::BlockStreaming { sink_blocks: 0, local_blocks: 0 },
    ]
}

/// Runs `check` on one batch-1 call per `(Sq, Sk)` of `geometries` and causal mode, with every
/// pattern of `patterns` (one head each) and a checkerboard block mask, so set and unset blocks
/// alternate in both directions; panics naming the geometry of the first failure.
pub fn check_checkerboard_geometries(
    patterns: &[HeadPattern],
    geometries: &[(usize, usize)],
    check: impl Fn(&Case) -> Result<(), TestCaseError>,
) {
    for &(sq, sk) in geometries {
        for causal in [false, true] {
            let spec = AttentionSpec::batched(1, sq, sk, patterns.len(), 1, 64)
                .with_causal(causal)
                .with_patterns(patterns.to_vec())
                .with_block_mask(1, 1);
            let (nq, nk) = (spec.mask_q_blocks(), spec.mask_k_blocks());
            let mask = (0..nq * nk).map(|x| ((x / nk + x % nk) % 2) as u8).collect();
            if let Err(e) = check(&Case { spec, mask: Some(mask) }) {
                panic!("Sq={sq} Sk={sk} causal={causal}: {e}");
            }
        }
    }
}
