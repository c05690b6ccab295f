//! The GPU forward pass: a reusable plan per call shape, then launches on the caller's stream.
use std::sync::Arc;

use attn_common::{CompactParams, FwdParams, Strides};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};

use crate::device::{Device, FWD_HEAD_DIMS};
use crate::error::{Error, Result};
use crate::plan::{check_mask_len, work_items};
use crate::spec::AttentionSpec;

/// The 16-bit input types.
pub trait Element: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// Index into the kernel table (0 = bf16, 1 = f16).
    const KERNEL: usize;
    const NAME: &'static str;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    /// `x` rounded to this type (what storing it as this type does).
    fn round(x: f64) -> f64 {
        Self::from_f64(x).to_f64()
    }
}

impl Element for half::bf16 {
    const KERNEL: usize = 0;
    const NAME: &'static str = "bf16";
    fn to_f64(self) -> f64 {
        half::bf16::to_f64(self)
    }
    fn from_f64(x: f64) -> Self {
        half::bf16::from_f64(x)
    }
}

impl Element for half::f16 {
    const KERNEL: usize = 1;
    const NAME: &'static str = "f16";
    fn to_f64(self) -> f64 {
        half::f16::to_f64(self)
    }
    fn from_f64(x: f64) -> Self {
        half::f16::from_f64(x)
    }
}

/// A `#[repr(C)]` struct passed to a kernel by value.
#[repr(transparent)]
struct ByValue<T>(T);
unsafe impl<T> DeviceRepr for ByValue<T> {}

/// A `#[repr(C)]` struct of 32-bit fields as words, for upload.
fn words<T: Copy>(v: &[T]) -> Vec<u32> {
    assert!(size_of::<T>() % 4 == 0 && align_of::<T>() >= 4);
    // SAFETY: T is a plain `#[repr(C)]` struct of 4-byte fields with no padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u32, std::mem::size_of_val(v) / 4) }.to_vec()
}

/// A tensor argument: a device buffer and its `(batch, token, head)` strides in elements
/// (the last dimension is contiguous).
pub struct TensorArg<'a, T> {
    pub data: &'a CudaSlice<T>,
    pub strides: Strides,
}

/// The output tensor argument.
pub struct TensorArgMut<'a, T> {
    pub data: &'a mut CudaSlice<T>,
    pub strides: Strides,
}

/// A planned attention call: validated shape, per-sequence and per-head tables, the compacted
/// block mask and the work list, all on the device. Build it once, run it for every layer that
/// shares the shape and the mask.
pub struct Attention {
    spec: AttentionSpec,
    seqs: CudaSlice<u32>,
    heads: CudaSlice<u32>,
    items: CudaSlice<u32>,
    n_items: u32,
    /// Compacted mask lists and counts (1-element placeholders when no head is block-sparse).
    lists: CudaSlice<i32>,
    counts: CudaSlice<i32>,
}

impl Attention {
    /// Validates `spec`, compacts `block_mask` (`u8` `[B or 1, n_masks, ceil(Sq/128),
    /// ceil(Sk/128)]`, values 0 or 1) on the GPU and builds the work list. Synchronises `stream`
    /// once, to read the mask row counts that order the work.
    pub fn new(device: &Device, stream: &Arc<CudaStream>, spec: AttentionSpec, block_mask: Option<&CudaSlice<u8>>) -> Result<Self> {
        spec.validate()?;
        let mut counts_host = None;
        let (lists, counts) = match (spec.mask, block_mask) {
            (Some(_), Some(mask)) => {
                check_mask_len(&spec, mask.len())?;
                let (lists, counts) = compact_on_gpu(device, stream, &spec, mask)?;
                counts_host = Some(stream.clone_dtoh(&counts)?);
                (lists, counts)
            }
            (Some(_), None) if spec.uses_mask() => {
                let head = spec.patterns.iter().position(|p| matches!(p, crate::HeadPattern::BlockSparse { .. })).unwrap_or(0);
                return Err(Error::MissingMask { head });
            }
            (_, None) => (stream.alloc_zeros::<i32>(1)?, stream.alloc_zeros::<i32>(1)?),
            (None, Some(_)) => {
                return Err(Error::Tensor { name: "block_mask", why: "given, but the spec has no mask shape (use with_block_mask)".into() });
            }
        };
        let seqs: Vec<_> = (0..spec.batch()).map(|b| spec.seq(b)).collect();
        let heads: Vec<_> = spec.patterns.iter().map(|p| p.rule()).collect();
        let items = work_items(&spec, counts_host.as_deref());
        let upload = |w: Vec<u32>| -> Result<CudaSlice<u32>> {
            Ok(if w.is_empty() { stream.alloc_zeros::<u32>(4)? } else { stream.clone_htod(&w)? })
        };
        Ok(Attention {
            n_items: items.len() as u32,
            seqs: upload(words(&seqs))?,
            heads: upload(words(&heads))?,
            items: upload(words(&items))?,
            lists,
            counts,
            spec,
        })
    }

    pub fn spec(&self) -> &AttentionSpec {
        &self.spec
    }

    /// Work items (one per 128 query rows per head) the forward launch runs.
    pub fn work_items(&self) -> u32 {
        self.n_items
    }

    /// Forward pass on contiguous tensors: `q`, `o` `[B, Sq, H, D]` (or `[total_q, H, D]`),
    /// `k`, `v` `[B, Sk, Hkv, D]` (or `[total_k, Hkv, D]`), `lse` `[B, H, Sq]` (or `[H, total_q]`).
    pub fn forward<T: Element>(
        &self,
        device: &Device,
        stream: &Arc<CudaStream>,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        o: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (qs, ks) = (self.spec.q_strides(), self.spec.kv_strides());
        self.forward_strided(
            device,
            stream,
            TensorArg { data: q, strides: qs },
            TensorArg { data: k, strides: ks },
            TensorArg { data: v, strides: ks },
            TensorArgMut { data: o, strides: qs },
            lse,
        )
    }

    /// Forward pass with free outer strides.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_strided<T: Element>(
        &self,
        device: &Device,
        stream: &Arc<CudaStream>,
        q: TensorArg<'_, T>,
        k: TensorArg<'_, T>,
        v: TensorArg<'_, T>,
        o: TensorArgMut<'_, T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let spec = &self.spec;
        spec.check_tensor("q", &q.strides, q.data.len(), spec.heads_q, true)?;
        spec.check_tensor("k", &k.strides, k.data.len(), spec.heads_kv, false)?;
        spec.check_tensor("v", &v.strides, v.data.len(), spec.heads_kv, false)?;
        spec.check_tensor("o", &o.strides, o.data.len(), spec.heads_q, true)?;
        if lse.len() < spec.lse_len() {
            return Err(Error::Tensor { name: "lse", why: format!("holds {} elements, needs {}", lse.len(), spec.lse_len()) });
        }
        if self.n_items == 0 {
            return Ok(());
        }
        let class = FWD_HEAD_DIMS.iter().position(|&(d, _, _)| spec.head_dim <= d).ok_or(Error::HeadDim(spec.head_dim))?;
        let kernel = &device.fwd[T::KERNEL][class];
        let (lse_batch, lse_head) = spec.lse_strides();
        let mask = spec.mask.filter(|_| spec.uses_mask());
        let (qp, _g1) = q.data.device_ptr(stream);
        let (kp, _g2) = k.data.device_ptr(stream);
        let (vp, _g3) = v.data.device_ptr(stream);
        let (sp, _g4) = self.seqs.device_ptr(stream);
        let (hp, _g5) = self.heads.device_ptr(stream);
        let (ip, _g6) = self.items.device_ptr(stream);
        let (lp, _g7) = self.lists.device_ptr(stream);
        let (cp, _g8) = self.counts.device_ptr(stream);
        let (op, _g9) = o.data.device_ptr_mut(stream);
        let (lsep, _g10) = lse.device_ptr_mut(stream);
        let params = FwdParams {
            q: qp,
            k: kp,
            v: vp,
            o: op,
            lse: lsep,
            q_strides: q.strides,
            k_strides: k.strides,
            v_strides: v.strides,
            o_strides: o.strides,
            lse_batch,
            lse_head,
            seqs: sp,
            heads: hp,
            items: ip,
            block_lists: lp,
            block_counts: cp,
            n_items: self.n_items,
            group: spec.group() as u32,
            head_dim: spec.head_dim as u32,
            causal: spec.causal as u32,
            mask_batch: mask.map_or(0, |m| m.batch as u32),
            n_masks: mask.map_or(0, |m| m.n_masks as u32),
            mask_q_blocks: spec.mask_q_blocks() as u32,
            mask_k_blocks: spec.mask_k_blocks() as u32,
            scale_log2: spec.scale() * std::f32::consts::LOG2_E,
            _pad: 0,
        };
        let cfg = LaunchConfig { grid_dim: (self.n_items, 1, 1), block_dim: (kernel.threads, 1, 1), shared_mem_bytes: kernel.smem_bytes() as u32 };
        let arg = ByValue(params);
        unsafe { stream.launch_builder(&kernel.func).arg(&arg).launch(cfg)? };
        Ok(())
    }
}

/// Runs `compact_block_mask` and checks that every value was 0 or 1.
fn compact_on_gpu(device: &Device, stream: &Arc<CudaStream>, spec: &AttentionSpec, mask: &CudaSlice<u8>) -> Result<(CudaSlice<i32>, CudaSlice<i32>)> {
    let nk = spec.mask_k_blocks();
    let rows = spec.mask.map_or(0, |m| m.batch * m.n_masks * spec.mask_q_blocks());
    let mut lists = stream.alloc_zeros::<i32>(mask.len().max(1))?;
    // Zero-filled: rows with no key blocks (all Sk = 0) keep count 0 without a launch.
    let mut counts = stream.alloc_zeros::<i32>(rows.max(1))?;
    let mut bad = stream.alloc_zeros::<u32>(1)?;
    if rows > 0 && nk > 0 {
        let (mp, _g1) = mask.device_ptr(stream);
        let (lp, _g2) = lists.device_ptr_mut(stream);
        let (cp, _g3) = counts.device_ptr_mut(stream);
        let (bp, _g4) = bad.device_ptr_mut(stream);
        let params = CompactParams { mask: mp, lists: lp, counts: cp, bad_value: bp, rows: rows as u32, k_blocks: nk as u32 };
        let cfg = LaunchConfig { grid_dim: ((rows as u32).div_ceil(128), 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let arg = ByValue(params);
        unsafe { stream.launch_builder(&device.compact).arg(&arg).launch(cfg)? };
    }
    if stream.clone_dtoh(&bad)?[0] != 0 {
        return Err(Error::MaskValue);
    }
    Ok((lists, counts))
}
