//! Reading an attention call from a safetensors file: the tensors `q`, `k`, `v`, optionally
//! `cu_seqlens_q`, `cu_seqlens_k` and `block_mask`, and the metadata `patterns`, `causal` and
//! `softmax_scale`. Every problem is reported as a message, never a panic.
use block_sparse_attn::half::{bf16, f16};
use block_sparse_attn::{AttentionSpec, Element, HeadPattern};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::common::Inputs;

/// The 16-bit element types a file may hold.
pub trait Half: Element {
    const DTYPE: Dtype;
    fn from_bits(bits: u16) -> Self;
    fn to_bits(self) -> u16;
}

impl Half for bf16 {
    const DTYPE: Dtype = Dtype::BF16;
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
    fn to_bits(self) -> u16 {
        bf16::to_bits(self)
    }
}

impl Half for f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
    fn to_bits(self) -> u16 {
        f16::to_bits(self)
    }
}

/// `q`, `k`, `v` in the file's dtype.
pub enum Data {
    Bf16(Inputs<bf16>),
    F16(Inputs<f16>),
}

/// One attention call read from a file.
pub struct Problem {
    pub spec: AttentionSpec,
    pub data: Data,
    pub mask: Option<Vec<u8>>,
    /// Shape of `o` (that of `q`).
    pub o_shape: Vec<usize>,
    /// `[B, H, Sq]`, or `[H, total_q]` for variable length.
    pub lse_shape: Vec<usize>,
    /// Bits of the optional output gradient `do` (dtype and shape of `q`).
    pub d_o: Option<Vec<u16>>,
    /// Shape of `k` (and of `dk`, `dv`).
    pub kv_shape: Vec<usize>,
}

const TENSORS: [&str; 7] = ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "block_mask", "do"];
const PATTERN_FORMS: &str =
    r#"each entry must be "dense", {"block_sparse": mask}, {"block_streaming": [sink_blocks, local_blocks]} or {"token_streaming": [sink_tokens, local_tokens]}"#;

pub fn read(path: &str) -> Result<Problem, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format!("{path} is not a valid safetensors file: {e}"))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if let Some(name) = file.names().into_iter().find(|n| !TENSORS.contains(n)) {
        return Err(format!("unexpected tensor `{name}` (the tensors are {})", TENSORS.join(", ")));
    }
    let tensor = |name: &str| file.tensor(name).ok();
    let need = |name: &str| tensor(name).ok_or_else(|| format!("the tensor `{name}` is missing"));
    let (q, k, v) = (need("q")?, need("k")?, need("v")?);
    for (name, t) in [("k", &k), ("v", &v)] {
        if t.dtype() != q.dtype() {
            return Err(format!("`{name}` is {:?} but `q` is {:?}: q, k and v must have one dtype", t.dtype(), q.dtype()));
        }
    }
    if k.shape() != v.shape() {
        return Err(format!("`k` has shape {:?} but `v` has {:?}: they must be equal", k.shape(), v.shape()));
    }

    let cu = (tensor("cu_seqlens_q"), tensor("cu_seqlens_k"));
    let mut spec = match (q.shape(), k.shape(), cu) {
        (&[b, sq, h, d], &[bk, sk, hkv, dk], (None, None)) => {
            if b != bk || d != dk {
                return Err(format!("`q` [B, Sq, H, D] = {:?} and `k` [B, Sk, Hkv, D] = {:?} disagree on B or D", q.shape(), k.shape()));
            }
            AttentionSpec::batched(b, sq, sk, h, hkv, d)
        }
        (&[tq, h, d], &[tk, hkv, dk], (Some(cu_q), Some(cu_k))) => {
            if d != dk {
                return Err(format!("`q` [total_q, H, D] = {:?} and `k` [total_k, Hkv, D] = {:?} disagree on D", q.shape(), k.shape()));
            }
            let (cu_q, cu_k) = (cu_seqlens("cu_seqlens_q", &cu_q, tq)?, cu_seqlens("cu_seqlens_k", &cu_k, tk)?);
            AttentionSpec::varlen(cu_q, cu_k, h, hkv, d)
        }
        (&[_, _, _], _, _) => {
            return Err("variable-length `q` [total_q, H, D] needs `k`, `v` [total_k, Hkv, D] and both cu_seqlens_q and cu_seqlens_k".into());
        }
        (&[_, _, _, _], _, _) => {
            return Err("batched `q` [B, Sq, H, D] needs `k`, `v` [B, Sk, Hkv, D] and no cu_seqlens".into());
        }
        _ => return Err(format!("`q` has shape {:?}: it must be [B, Sq, H, D] or [total_q, H, D]", q.shape())),
    };

    if let Some(text) = meta.get("patterns") {
        let patterns = patterns(text, spec.heads_q)?;
        spec = spec.with_patterns(patterns);
    }
    if let Some(text) = meta.get("causal") {
        spec = spec.with_causal(match text.trim() {
            "true" => true,
            "false" => false,
            other => return Err(format!("metadata `causal` is {other:?}: it must be \"true\" or \"false\"")),
        });
    }
    if let Some(text) = meta.get("softmax_scale") {
        let scale = text.trim().parse::<f32>().map_err(|_| format!("metadata `softmax_scale` is {text:?}: not a number"))?;
        spec = spec.with_softmax_scale(scale);
    }
    let mask = tensor("block_mask");
    if let Some(m) = &mask {
        if !matches!(m.dtype(), Dtype::U8 | Dtype::BOOL) || m.shape().len() != 4 {
            return Err(format!("`block_mask` is {:?} {:?}: it must be U8 (or BOOL) [B or 1, n_masks, q_blocks, k_blocks]", m.dtype(), m.shape()));
        }
        spec = spec.with_block_mask(m.shape()[0], m.shape()[1]);
    }
    spec.validate().map_err(|e| e.to_string())?;
    if let Some(m) = &mask {
        let blocks = [spec.mask_q_blocks(), spec.mask_k_blocks()];
        if m.shape()[2..] != blocks {
            return Err(format!(
                "`block_mask` has shape {:?}, but its last two dims must be ceil(Sq / 128) = {} and ceil(Sk / 128) = {}",
                m.shape(),
                blocks[0],
                blocks[1]
            ));
        }
    }

    let lse_shape = if spec.is_varlen() { vec![spec.heads_q, spec.total_q()] } else { vec![spec.batch(), spec.heads_q, spec.max_seqlen_q()] };
    let data = match q.dtype() {
        Dtype::BF16 => Data::Bf16(Inputs { q: halves(&q), k: halves(&k), v: halves(&v) }),
        Dtype::F16 => Data::F16(Inputs { q: halves(&q), k: halves(&k), v: halves(&v) }),
        other => return Err(format!("`q` is {other:?}: q, k and v must be BF16 or F16")),
    };
    let d_o = match tensor("do") {
        None => None,
        Some(g) if g.dtype() != q.dtype() || g.shape() != q.shape() => {
            return Err(format!("`do` is {:?} {:?}: it must have the dtype and shape of `q` ({:?} {:?})", g.dtype(), g.shape(), q.dtype(), q.shape()));
        }
        Some(g) => Some(g.data().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()),
    };
    Ok(Problem { o_shape: q.shape().to_vec(), kv_shape: k.shape().to_vec(), lse_shape, data, mask: mask.map(|m| m.data().to_vec()), d_o, spec })
}

/// A tensor's little-endian 16-bit elements (the data may be unaligned in the file).
fn halves<T: Half>(t: &TensorView<'_>) -> Vec<T> {
    t.data().chunks_exact(2).map(|c| T::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect()
}

/// An `I32 [B + 1]` tensor whose last entry must be `rows`.
fn cu_seqlens(name: &str, t: &TensorView<'_>, rows: usize) -> Result<Vec<i32>, String> {
    if t.dtype() != Dtype::I32 || t.shape().len() != 1 {
        return Err(format!("`{name}` is {:?} {:?}: it must be I32 [B + 1]", t.dtype(), t.shape()));
    }
    let cu: Vec<i32> = t.data().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if cu.last().is_some_and(|&end| end as i64 != rows as i64) {
        return Err(format!("`{name}` ends at {} but the tensor it splits has {rows} rows", cu[cu.len() - 1]));
    }
    Ok(cu)
}

/// The metadata `patterns`: a JSON array with one entry per query head.
fn patterns(text: &str, heads: usize) -> Result<Vec<HeadPattern>, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("metadata `patterns` is not valid JSON: {e}"))?;
    let list = json.as_array().ok_or("metadata `patterns` must be a JSON array with one entry per query head")?;
    if list.len() != heads {
        return Err(format!("metadata `patterns` has {} entries for {heads} query heads", list.len()));
    }
    list.iter()
        .enumerate()
        .map(|(h, p)| pattern(p).map_err(|why| format!("metadata `patterns`, head {h}: {p} is not a pattern: {why}")))
        .collect()
}

fn pattern(p: &Value) -> Result<HeadPattern, String> {
    if p.as_str() == Some("dense") {
        return Ok(HeadPattern::Dense);
    }
    let Some((kind, arg)) = p.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
        return Err(PATTERN_FORMS.into());
    };
    match kind.as_str() {
        "block_sparse" => Ok(HeadPattern::BlockSparse { mask: int(arg)? }),
        "block_streaming" => pair(arg).map(|[sink_blocks, local_blocks]| HeadPattern::BlockStreaming { sink_blocks, local_blocks }),
        "token_streaming" => pair(arg).map(|[sink_tokens, local_tokens]| HeadPattern::TokenStreaming { sink_tokens, local_tokens }),
        _ => Err(PATTERN_FORMS.into()),
    }
}

fn int(v: &Value) -> Result<u32, String> {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("{v} is not an integer in [0, 2^32)"))
}

fn pair(v: &Value) -> Result<[u32; 2], String> {
    match v.as_array().map(|a| &a[..]) {
        Some([a, b]) => Ok([int(a)?, int(b)?]),
        _ => Err(format!("{v} is not a pair [a, b]")),
    }
}
