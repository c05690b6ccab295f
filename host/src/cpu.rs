//! The CPU backend: the `f64` reference on 16-bit inputs, rounded to the input type. Used where
//! there is no GPU, and as the oracle of the GPU tests.
use crate::attention::Element;
use crate::error::Result;
use crate::plan::{check_mask_len, compact_mask};
use crate::reference;
use crate::spec::AttentionSpec;

/// Outputs of the CPU backend: `o` in the input type, `lse` in `f32`.
pub struct CpuOutput<T> {
    /// Laid out like `q`.
    pub o: Vec<T>,
    /// `[B, H, Sq]`, or `[H, total_q]` for variable length.
    pub lse: Vec<f32>,
}

/// Forward pass on contiguous host tensors (layouts as [`crate::Attention::forward`]).
pub fn forward<T: Element>(spec: &AttentionSpec, q: &[T], k: &[T], v: &[T], block_mask: Option<&[u8]>) -> Result<CpuOutput<T>> {
    spec.validate()?;
    check_host_len(spec, "q", q.len(), spec.q_len())?;
    check_host_len(spec, "k", k.len(), spec.kv_len())?;
    check_host_len(spec, "v", v.len(), spec.kv_len())?;
    match (spec.mask, block_mask) {
        (Some(_), Some(m)) => {
            check_mask_len(spec, m.len())?;
            compact_mask(spec, m)?; // rejects values other than 0/1
        }
        (Some(_), None) => {
            if let Some(head) = spec.first_block_sparse_head() {
                return Err(crate::Error::MissingMask { head });
            }
        }
        (None, Some(_)) => {
            return Err(crate::Error::Tensor { name: "block_mask", why: "given, but the spec has no mask shape (use with_block_mask)".into() });
        }
        _ => {}
    }
    let up = |x: &[T]| x.iter().map(|e| e.to_f64()).collect::<Vec<_>>();
    let out = reference::forward(spec, &up(q), &up(k), &up(v), block_mask);
    Ok(CpuOutput { o: out.o.iter().map(|&x| T::from_f64(x)).collect(), lse: out.lse.iter().map(|&x| x as f32).collect() })
}

fn check_host_len(_spec: &AttentionSpec, name: &'static str, got: usize, need: usize) -> Result<()> {
    if got != need {
        return Err(crate::Error::Tensor { name, why: format!("holds {got} elements; the spec needs {need}") });
    }
    Ok(())
}

/// Gradients of the CPU backend, in the input type.
pub struct CpuGrads<T> {
    /// Laid out like `q`.
    pub dq: Vec<T>,
    /// Laid out like `k`.
    pub dk: Vec<T>,
    /// Laid out like `v`.
    pub dv: Vec<T>,
}

/// Backward pass on contiguous host tensors: the forward in `f64`, then the `f64` reference
/// backward from `d_o` (laid out like `o`), rounded to the input type.
pub fn backward<T: Element>(spec: &AttentionSpec, q: &[T], k: &[T], v: &[T], d_o: &[T], block_mask: Option<&[u8]>) -> Result<CpuGrads<T>> {
    forward(spec, q, k, v, block_mask)?; // the same validation
    check_host_len(spec, "d_o", d_o.len(), spec.q_len())?;
    let up = |x: &[T]| x.iter().map(|e| e.to_f64()).collect::<Vec<_>>();
    let (q, k, v, d_o) = (up(q), up(k), up(v), up(d_o));
    let out = reference::forward(spec, &q, &k, &v, block_mask);
    let g = reference::backward(spec, &q, &k, &v, &out.o, &out.lse, &d_o, block_mask);
    let down = |x: Vec<f64>| x.into_iter().map(T::from_f64).collect::<Vec<_>>();
    Ok(CpuGrads { dq: down(g.dq), dk: down(g.dk), dv: down(g.dv) })
}
