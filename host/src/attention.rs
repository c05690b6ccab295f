//! The GPU forward pass: a reusable plan per call shape, then launches on the caller's stream.
use std::sync::Arc;

use attn_common::{BwdParams, CompactParams, DKDV_ADD, DKDV_PARTS, DKDV_STORE, FwdParams, HOPPER_BWD_KEYS, HOPPER_BWD_QUERIES, HOPPER_KEYS, HOPPER_THREADS, HopperBwdParams, HopperDqParams, HopperFwdParams, Strides, TENSOR_MAP_BYTES};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, SyncOnDrop, ValidAsZeroBits};

use crate::device::{Device, FWD_HEAD_DIMS, HopperKernel};
use crate::error::{Error, Result};
use crate::plan::{check_mask_len, work_items};
use crate::spec::AttentionSpec;
use crate::tensor_map::{self, MapShape, TensorMapBytes};

/// Rows per TMA box: the Hopper forward's and dQ kernel's tiles (query rows and keys), the
/// dK/dV kernel's query and key tiles.
const BK: usize = HOPPER_KEYS;
const BQ: usize = HOPPER_BWD_QUERIES;
const _: () = assert!(HOPPER_BWD_KEYS == HOPPER_KEYS);

/// The 16-bit input types.
pub trait Element: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// Index into the kernel table (0 = bf16, 1 = f16).
    const KERNEL: usize;
    /// "bf16" or "f16".
    const NAME: &'static str;
    /// The value, exactly.
    fn to_f64(self) -> f64;
    /// `x` rounded to nearest.
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
    /// The buffer; element (b, t, h, d) is at `b * batch + t * token + h * head + d`.
    pub data: &'a CudaSlice<T>,
    /// Outer strides in elements, multiples of 8.
    pub strides: Strides,
}

/// The output tensor argument.
pub struct TensorArgMut<'a, T> {
    /// The buffer, addressed as in [`TensorArg`].
    pub data: &'a mut CudaSlice<T>,
    /// Outer strides in elements, multiples of 8.
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
    /// The same for the mask's columns (per key block, its query blocks), for the backward.
    lists_t: CudaSlice<i32>,
    counts_t: CudaSlice<i32>,
    /// Backward key-side work of the portable dK/dV kernel (64-key tiles).
    kv_items: KvLists,
    /// The same for the Hopper dK/dV kernel's 128-key tiles (Hopper path only).
    kv_items_wide: Option<KvLists>,
    /// Whether [`Attention::backward`] runs in its deterministic mode.
    deterministic: bool,
}

/// A work list on the device and its length.
struct DeviceList {
    items: CudaSlice<u32>,
    len: u32,
}

/// The key-side work lists of one tile size: one item per (batch, kv head, key tile), and, where
/// that would leave SMs idle (few kv heads, short sequences), the same tiles with each GQA group
/// split into `parts` items.
struct KvLists {
    whole: DeviceList,
    split: Option<DeviceList>,
    parts: u32,
}

impl Attention {
    /// Validates `spec`, compacts `block_mask` (`u8` `[B or 1, n_masks, ceil(Sq/128),
    /// ceil(Sk/128)]`, values 0 or 1) on the GPU and builds the work list. Synchronises `stream`
    /// once, to read the mask check and the mask row counts that order the work.
    pub fn new(device: &Device, stream: &Arc<CudaStream>, spec: AttentionSpec, block_mask: Option<&CudaSlice<u8>>) -> Result<Self> {
        spec.validate()?;
        let mut counts_host = None;
        let mut transposed = None;
        let (lists, counts) = match (spec.mask, block_mask) {
            (Some(_), Some(mask)) => {
                check_mask_len(&spec, mask.len())?;
                // The row compaction flags values other than 0 and 1; the column one reads the
                // same values, so one flag and one read-back serve both.
                let mut bad = stream.alloc_zeros::<u32>(1)?;
                let (lists, counts) = compact_on_gpu(device, stream, &spec, mask, false, &mut bad)?;
                transposed = Some(compact_on_gpu(device, stream, &spec, mask, true, &mut bad)?);
                if stream.clone_dtoh(&bad)?[0] != 0 {
                    return Err(Error::MaskValue);
                }
                counts_host = Some(stream.clone_dtoh(&counts)?);
                (lists, counts)
            }
            (Some(_), None) if spec.uses_mask() => {
                return Err(Error::MissingMask { head: spec.first_block_sparse_head().unwrap_or(0) });
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
        let upload_list = |items: &[attn_common::WorkItem]| -> Result<DeviceList> { Ok(DeviceList { items: upload(words(items))?, len: items.len() as u32 }) };
        let kv_lists = |tile: usize| -> Result<KvLists> {
            let whole = kv_work_items(&spec, tile, 1);
            let parts = group_parts(spec.group(), whole.len(), device.sm_count() as usize);
            let split = if parts > 1 { Some(upload_list(&kv_work_items(&spec, tile, parts))?) } else { None };
            Ok(KvLists { whole: upload_list(&whole)?, split, parts: parts as u32 })
        };
        let kv_items = kv_lists(attn_common::BWD_KEYS)?;
        let kv_items_wide = if device.path() == crate::KernelPath::Hopper { Some(kv_lists(attn_common::HOPPER_BWD_KEYS)?) } else { None };
        let (lists_t, counts_t) = match transposed {
            Some(t) => t,
            None => (stream.alloc_zeros::<i32>(1)?, stream.alloc_zeros::<i32>(1)?),
        };
        Ok(Attention {
            n_items: items.len() as u32,
            seqs: upload(words(&seqs))?,
            heads: upload(words(&heads))?,
            items: upload(words(&items))?,
            lists,
            counts,
            lists_t,
            counts_t,
            kv_items,
            kv_items_wide,
            deterministic: false,
            spec,
        })
    }

    /// Chooses the backward's mode. Where the key tiles alone would leave SMs idle (few kv heads,
    /// short sequences), both split each GQA group over several dK/dV items. Off (the default),
    /// the parts add their sums to one `f32` buffer with atomics: fastest, but the last bits of
    /// `dk` and `dv` may vary run to run. Deterministic: each part keeps its own `f32` partial
    /// sums (a scratch buffer per part, at most a few tens of MB since only small key sets are
    /// split) that a second kernel adds in a fixed order, so gradients are bitwise identical run
    /// to run. Elsewhere the two modes run the same kernels; `dq` never uses atomics.
    pub fn with_deterministic_backward(mut self, on: bool) -> Self {
        self.deterministic = on;
        self
    }

    /// Whether the backward runs in its deterministic mode.
    pub fn deterministic_backward(&self) -> bool {
        self.deterministic
    }

    /// The validated shape this plan serves.
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
        spec.check_lse(lse.len())?;
        if self.n_items == 0 {
            return Ok(());
        }
        let (qp, _g1) = q.data.device_ptr(stream);
        let (kp, _g2) = k.data.device_ptr(stream);
        let (vp, _g3) = v.data.device_ptr(stream);
        let (op, _g4) = o.data.device_ptr_mut(stream);
        let (lsep, _g5) = lse.device_ptr_mut(stream);
        let (lp, _g6) = self.lists.device_ptr(stream);
        let (cp, _g7) = self.counts.device_ptr(stream);
        let tables = self.tables(stream);
        let io = [(qp, q.strides), (kp, k.strides), (vp, v.strides), (op, o.strides)];
        let params = self.fwd_params(&tables.ptrs(), io, lsep, (lp, cp));
        if let Some((kernel, maps)) = self.hopper_maps::<T>(device.hopper_kernel(T::KERNEL, spec.head_dim), &[(io[0], true, BK), (io[1], false, BK), (io[2], false, BK), (io[3], true, BK)]) {
            let grid = self.n_items.min(device.sm_count());
            let bytes = upload_maps(stream, &maps, trace::bytes(grid))?;
            let (mp, _g8) = bytes.device_ptr(stream);
            let hp = self.hopper_params(params, mp, &maps);
            let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (HOPPER_THREADS, 1, 1), shared_mem_bytes: kernel.smem as u32 };
            let arg = ByValue(hp);
            unsafe { stream.launch_builder(&kernel.func).arg(&arg).launch(cfg)? };
            trace::dump(stream, &bytes, maps.len() * TENSOR_MAP_BYTES + 16)?;
            return Ok(());
        }
        let kernel = &device.fwd[T::KERNEL][head_dim_class(spec)?];
        let cfg = LaunchConfig { grid_dim: (self.n_items, 1, 1), block_dim: (kernel.threads, 1, 1), shared_mem_bytes: kernel.smem_bytes() as u32 };
        let arg = ByValue(params);
        unsafe { stream.launch_builder(&kernel.func).arg(&arg).launch(cfg)? };
        Ok(())
    }
}

/// One upload per call for a Hopper kernel: its tensor maps, then a zeroed work counter (the
/// persistent grids hand out items from it; see [`counter_at`]), then `extra` zeroed bytes.
fn upload_maps(stream: &Arc<CudaStream>, maps: &[TensorMapBytes], extra: usize) -> Result<CudaSlice<u8>> {
    let mut bytes = maps.concat();
    bytes.resize(bytes.len() + 16 + extra, 0);
    Ok(stream.clone_htod(&bytes)?)
}

/// The work counter's address in an [`upload_maps`] buffer at `mp`.
fn counter_at(mp: u64, maps: &[TensorMapBytes]) -> u64 {
    mp + (maps.len() * TENSOR_MAP_BYTES) as u64
}

/// Index of the kernel class serving the spec's head dim.
fn head_dim_class(spec: &AttentionSpec) -> Result<usize> {
    FWD_HEAD_DIMS.iter().position(|&(d, _, _)| spec.head_dim <= d).ok_or(Error::HeadDim(spec.head_dim))
}

/// Device pointers of a plan's tables, with the guards that order them on the stream.
struct Tables<'a> {
    seqs: (u64, SyncOnDrop<'a>),
    heads: (u64, SyncOnDrop<'a>),
    items: (u64, SyncOnDrop<'a>),
}

impl Tables<'_> {
    fn ptrs(&self) -> [u64; 3] {
        [self.seqs.0, self.heads.0, self.items.0]
    }
}

impl Attention {
    fn tables<'a>(&'a self, stream: &'a Arc<CudaStream>) -> Tables<'a> {
        Tables { seqs: self.seqs.device_ptr(stream), heads: self.heads.device_ptr(stream), items: self.items.device_ptr(stream) }
    }

    /// `kernel` with the tensor maps of `tensors` (pointer and strides, whether it is a
    /// query-side tensor, rows per box), or `None` when it does not run this call (another path,
    /// head dim, or a tensor that TMA cannot describe).
    fn hopper_maps<'d, T: Element>(&self, kernel: Option<&'d HopperKernel>, tensors: &[((u64, Strides), bool, usize)]) -> Option<(&'d HopperKernel, Vec<TensorMapBytes>)> {
        let spec = &self.spec;
        let kernel = kernel?;
        let (batch, tq, tk) = if spec.is_varlen() { (1, spec.total_q(), spec.total_k()) } else { (spec.batch(), spec.max_seqlen_q(), spec.max_seqlen_k()) };
        let maps = tensors.iter().map(|&((ptr, strides), query, box_rows)| {
            let (tokens, heads) = if query { (tq, spec.heads_q) } else { (tk, spec.heads_kv) };
            tensor_map::encode(&MapShape { ptr, f16: T::KERNEL == 1, head_dim: spec.head_dim, tokens, heads, batch, strides, box_rows: box_rows as u32 })
        });
        Some((kernel, maps.collect::<Option<Vec<_>>>()?))
    }

    /// The parameters of the persistent Hopper kernels that walk the query-block items: `mp` is
    /// the [`upload_maps`] of `maps`.
    fn hopper_params(&self, f: FwdParams, mp: u64, maps: &[TensorMapBytes]) -> HopperFwdParams {
        HopperFwdParams { f, tensor_maps: mp, counter: counter_at(mp, maps), n_items: self.n_items, packed: self.spec.is_varlen() as u32 }
    }

    /// The forward kernels' parameters: `io` are q, k, v, o (pointer, strides); `lists` the
    /// compacted mask (pointer, counts pointer).
    fn fwd_params(&self, tables: &[u64; 3], io: [(u64, Strides); 4], lse: u64, lists: (u64, u64)) -> FwdParams {
        let spec = &self.spec;
        let (lse_batch, lse_head) = spec.lse_strides();
        let mask = spec.mask.filter(|_| spec.uses_mask());
        FwdParams {
            q: io[0].0,
            k: io[1].0,
            v: io[2].0,
            o: io[3].0,
            lse,
            q_strides: io[0].1,
            k_strides: io[1].1,
            v_strides: io[2].1,
            o_strides: io[3].1,
            lse_batch,
            lse_head,
            seqs: tables[0],
            heads: tables[1],
            items: tables[2],
            block_lists: lists.0,
            block_counts: lists.1,
            group: spec.group() as u32,
            head_dim: spec.head_dim as u32,
            causal: spec.causal as u32,
            mask_batch: mask.map_or(0, |m| m.batch as u32),
            n_masks: mask.map_or(0, |m| m.n_masks as u32),
            mask_q_blocks: spec.mask_q_blocks() as u32,
            mask_k_blocks: spec.mask_k_blocks() as u32,
            scale_log2: spec.scale() * std::f32::consts::LOG2_E,
        }
    }

    /// Backward pass on contiguous tensors laid out as for [`Attention::forward`]: from `d_o`
    /// (like `o`) and the forward's `o` and `lse`, writes `dq` (like `q`), `dk` and `dv` (like
    /// `k`, `v`; GQA gradients summed over each group). Bitwise reproducible in the
    /// deterministic mode ([`Attention::with_deterministic_backward`]); in the default mode
    /// `dk`, `dv` of GQA/MQA shapes with few key tiles may differ in the last bits run to run.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Element>(
        &self,
        device: &Device,
        stream: &Arc<CudaStream>,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        o: &CudaSlice<T>,
        lse: &CudaSlice<f32>,
        d_o: &CudaSlice<T>,
        dq: &mut CudaSlice<T>,
        dk: &mut CudaSlice<T>,
        dv: &mut CudaSlice<T>,
    ) -> Result<()> {
        let spec = &self.spec;
        let (qs, ks) = (spec.q_strides(), spec.kv_strides());
        for (name, len, strides, heads, is_q) in [
            ("q", q.len(), qs, spec.heads_q, true),
            ("k", k.len(), ks, spec.heads_kv, false),
            ("v", v.len(), ks, spec.heads_kv, false),
            ("o", o.len(), qs, spec.heads_q, true),
            ("d_o", d_o.len(), qs, spec.heads_q, true),
            ("dq", dq.len(), qs, spec.heads_q, true),
            ("dk", dk.len(), ks, spec.heads_kv, false),
            ("dv", dv.len(), ks, spec.heads_kv, false),
        ] {
            spec.check_tensor(name, &strides, len, heads, is_q)?;
        }
        spec.check_lse(lse.len())?;
        let kernels = &device.bwd[T::KERNEL][head_dim_class(spec)?];
        let mut dsum = stream.alloc_zeros::<f32>(spec.lse_len().max(1))?;
        let (qp, _g1) = q.device_ptr(stream);
        let (kp, _g2) = k.device_ptr(stream);
        let (vp, _g3) = v.device_ptr(stream);
        let (op, _g4) = o.device_ptr(stream);
        let (lsep, _g5) = lse.device_ptr(stream);
        let (dop, _g6) = d_o.device_ptr(stream);
        let (dqp, _g7) = dq.device_ptr_mut(stream);
        let (dkp, _g8) = dk.device_ptr_mut(stream);
        let (dvp, _g9) = dv.device_ptr_mut(stream);
        let (dsp, _g10) = dsum.device_ptr_mut(stream);
        let (lp, _g11) = self.lists.device_ptr(stream);
        let (cp, _g12) = self.counts.device_ptr(stream);
        let (ltp, _g13) = self.lists_t.device_ptr(stream);
        let (ctp, _g14) = self.counts_t.device_ptr(stream);
        let tables = self.tables(stream);
        let io = [(qp, qs), (kp, ks), (vp, ks), (op, qs)];
        let f = self.fwd_params(&tables.ptrs(), io, lsep, (lp, cp));
        let mut bp = BwdParams {
            f,
            d_o: dop,
            do_strides: qs,
            dq: dqp,
            dq_strides: qs,
            dk: dkp,
            dk_strides: ks,
            dv: dvp,
            dv_strides: ks,
            dsum: dsp,
            kv_items: 0,
            scale: spec.scale(),
            dkdv_mode: DKDV_STORE,
            parts: 1,
            _pad: 0,
            part_len: 0,
        };
        let d = kernels.head_dim;
        if self.n_items > 0 {
            let cfg = LaunchConfig { grid_dim: (self.n_items, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            let arg = ByValue(bp);
            unsafe { stream.launch_builder(&kernels.dsum).arg(&arg).launch(cfg)? };
            if let Some((kernel, maps)) = self.hopper_maps::<T>(device.hopper_dq_kernel(T::KERNEL, spec.head_dim), &[(io[0], true, BK), (io[1], false, BK), (io[2], false, BK), ((dop, qs), true, BK)]) {
                let bytes = upload_maps(stream, &maps, 0)?; // Q, K, V, dO
                let (mp, _g16) = bytes.device_ptr(stream);
                let hp = HopperDqParams {
                    h: self.hopper_params(bp.f, mp, &maps),
                    dsum: dsp,
                    dq: dqp,
                    dq_strides: qs,
                    scale: spec.scale(),
                    _pad: 0,
                };
                let cfg = LaunchConfig { grid_dim: (self.n_items.min(device.sm_count()), 1, 1), block_dim: (HOPPER_THREADS, 1, 1), shared_mem_bytes: kernel.smem as u32 };
                let arg = ByValue(hp);
                unsafe { stream.launch_builder(&kernel.func).arg(&arg).launch(cfg)? };
            } else {
                let cfg = LaunchConfig { grid_dim: (self.n_items, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: attn_common::bwd_dq_smem_bytes(d) as u32 };
                unsafe { stream.launch_builder(&kernels.dq).arg(&arg).launch(cfg)? };
            }
        }
        if self.kv_items.whole.len > 0 {
            // The key-side walk reads the mask's columns.
            bp.f.block_lists = ltp;
            bp.f.block_counts = ctp;
            let maps = [((qp, qs), true, BQ), ((dop, qs), true, BQ), ((kp, ks), false, BK), ((vp, ks), false, BK)];
            // The 128-key work lists exist when the plan was made on a Hopper-path device.
            let hopper = self.kv_items_wide.as_ref().and_then(|w| Some((self.hopper_maps::<T>(device.hopper_dkdv_kernel(T::KERNEL, spec.head_dim), &maps)?, w)));
            let lists = hopper.as_ref().map_or(&self.kv_items, |(_, w)| w);
            // A split group sums into f32 buffers: one (atomics) or one per part (ordered).
            let (list, mode, parts) = match &lists.split {
                Some(split) if self.deterministic => (split, DKDV_PARTS, lists.parts),
                Some(split) => (split, DKDV_ADD, 1),
                None => (&lists.whole, DKDV_STORE, 1),
            };
            let n = spec.kv_len();
            let sums = if mode == DKDV_STORE {
                None
            } else {
                let len = parts as usize * n;
                Some((stream.alloc_zeros::<f32>(len)?, stream.alloc_zeros::<f32>(len)?))
            };
            let (ip, _g16) = list.items.device_ptr(stream);
            bp.kv_items = ip;
            (bp.dkdv_mode, bp.parts, bp.part_len) = (mode, parts, n as u64);
            let (skp, _g17) = sums.as_ref().map(|(k, _)| k.device_ptr(stream)).unzip();
            let (svp, _g18) = sums.as_ref().map(|(_, v)| v.device_ptr(stream)).unzip();
            if let (Some(skp), Some(svp)) = (skp, svp) {
                (bp.dk, bp.dv) = (skp, svp);
            }
            if let Some(((kernel, maps), _)) = hopper {
                let bytes = upload_maps(stream, &maps, 0)?; // Q, dO, K, V
                let (mp, _g19) = bytes.device_ptr(stream);
                let hp = HopperBwdParams { b: bp, tensor_maps: mp, counter: counter_at(mp, &maps), n_items: list.len, packed: spec.is_varlen() as u32 };
                let cfg = LaunchConfig { grid_dim: (list.len.min(device.sm_count()), 1, 1), block_dim: (HOPPER_THREADS, 1, 1), shared_mem_bytes: kernel.smem as u32 };
                let arg = ByValue(hp);
                unsafe { stream.launch_builder(&kernel.func).arg(&arg).launch(cfg)? };
            } else {
                let cfg = LaunchConfig { grid_dim: (list.len, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: attn_common::bwd_dkdv_smem_bytes(d) as u32 };
                let arg = ByValue(bp);
                unsafe { stream.launch_builder(&kernels.dkdv).arg(&arg).launch(cfg)? };
            }
            if let (Some(skp), Some(svp)) = (skp, svp) {
                reduce_parts(device, stream, T::KERNEL, skp, dkp, n, parts)?;
                reduce_parts(device, stream, T::KERNEL, svp, dvp, n, parts)?;
            }
        }
        Ok(())
    }
}

/// Writes to `dst` (the input type) the sums, over `parts` consecutive buffers of `n` `f32`
/// values at `src`, added in order.
fn reduce_parts(device: &Device, stream: &Arc<CudaStream>, dtype: usize, src: u64, dst: u64, n: usize, parts: u32) -> Result<()> {
    let threads = attn_common::REDUCE_THREADS;
    let blocks = n.div_ceil(2 * threads).clamp(1, 8 * device.sm_count() as usize);
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (threads as u32, 1, 1), shared_mem_bytes: 0 };
    let arg = ByValue(attn_common::ReduceParams { src, dst, n: n as u64, parts, _pad: 0 });
    unsafe { stream.launch_builder(&device.reduce[dtype]).arg(&arg).launch(cfg)? };
    Ok(())
}

/// How many parts to split each GQA group (of `group` query heads) into, for `items` key tiles
/// on `sms` SMs: enough that the split list has about three items per SM (so heaviest-first
/// scheduling balances the causal tiles' unequal weights), at most one head per part.
fn group_parts(group: usize, items: usize, sms: usize) -> usize {
    // `WorkItem::group_part` holds head indices in 16 bits.
    if items == 0 || group > 0xffff {
        return 1;
    }
    (3 * sms).div_ceil(items).clamp(1, group.max(1))
}

/// Backward key-side work: every `tile`-key tile of every (batch, kv head), its GQA group split
/// into `parts` items of consecutive query heads (`parts` = 1: one item per tile), heaviest first
/// by the query rows its heads may see (all rows without causal, those at or below the key
/// under causal).
fn kv_work_items(spec: &AttentionSpec, tile: usize, parts: usize) -> Vec<attn_common::WorkItem> {
    let tile = tile as i64;
    let group = spec.group();
    let mut items = Vec::new();
    for b in 0..spec.batch() {
        let s = spec.seq(b);
        let (sq, sk) = (s.q_len as i64, s.k_len as i64);
        for kvh in 0..spec.heads_kv {
            for kt in 0..(sk + tile - 1) / tile {
                let rows = if spec.causal { (sq - (kt * tile - (sk - sq)).max(0)).max(0) } else { sq };
                for part in 0..parts {
                    let (first, end) = (part * group / parts, (part + 1) * group / parts);
                    let group_part = if parts == 1 { 0 } else { attn_common::WorkItem::pack_group_part(first as u32, end as u32) };
                    let item = attn_common::WorkItem { batch: b as u32, head: kvh as u32, q_block: kt as u32, group_part };
                    items.push((rows * (end - first) as i64, item));
                }
            }
        }
    }
    items.sort_by_key(|&(weight, _)| std::cmp::Reverse(weight));
    items.into_iter().map(|(_, it)| it).collect()
}

/// Launches `compact_block_mask` over the mask's rows (or, `transposed`, its columns); `bad` is
/// set to 1 if a value is neither 0 nor 1.
fn compact_on_gpu(
    device: &Device,
    stream: &Arc<CudaStream>,
    spec: &AttentionSpec,
    mask: &CudaSlice<u8>,
    transposed: bool,
    bad: &mut CudaSlice<u32>,
) -> Result<(CudaSlice<i32>, CudaSlice<i32>)> {
    let (nq, nk) = (spec.mask_q_blocks(), spec.mask_k_blocks());
    let slices = spec.mask.map_or(0, |m| m.batch * m.n_masks);
    let (per_slice, n_elems) = if transposed { (nk, nq) } else { (nq, nk) };
    let rows = slices * per_slice;
    let mut lists = stream.alloc_zeros::<i32>(mask.len().max(1))?;
    // Zero-filled: rows with no key blocks (all Sk = 0) keep count 0 without a launch.
    let mut counts = stream.alloc_zeros::<i32>(rows.max(1))?;
    if rows > 0 && n_elems > 0 {
        let (mp, _g1) = mask.device_ptr(stream);
        let (lp, _g2) = lists.device_ptr_mut(stream);
        let (cp, _g3) = counts.device_ptr_mut(stream);
        let (bp, _g4) = bad.device_ptr_mut(stream);
        let (row_step, elem_step) = if transposed { (1, nk as u32) } else { (nk as u32, 1) };
        let params = CompactParams {
            mask: mp,
            lists: lp,
            counts: cp,
            bad_value: bp,
            rows: rows as u32,
            n_elems: n_elems as u32,
            rows_per_slice: per_slice as u32,
            slice_len: (nq * nk) as u32,
            row_step,
            elem_step,
        };
        let cfg = LaunchConfig { grid_dim: ((rows as u32).div_ceil(128), 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let arg = ByValue(params);
        unsafe { stream.launch_builder(&device.compact).arg(&arg).launch(cfg)? };
    }
    Ok((lists, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key-side work lists of both tile sizes (64 for the portable dK/dV kernel, 128 for the
    /// Hopper one), whole or with the groups split, hold every (batch, kv head, key tile, query
    /// head of the group) exactly once, heaviest first.
    #[test]
    fn kv_work_items_cover_every_key_tile_and_head_once_heaviest_first() {
        let specs = [
            AttentionSpec::batched(2, 300, 257, 4, 2, 64).with_causal(true),
            AttentionSpec::batched(1, 128, 1000, 2, 1, 128),
            AttentionSpec::batched(1, 700, 700, 7, 1, 64).with_causal(true),
            AttentionSpec::varlen(vec![0, 5, 300, 300, 1200], vec![0, 129, 500, 640, 1400], 8, 2, 128).with_causal(true),
        ];
        for spec in &specs {
            for tile in [attn_common::BWD_KEYS, attn_common::HOPPER_BWD_KEYS] {
                for parts in 1..=spec.group() {
                    let items = kv_work_items(spec, tile, parts);
                    let mut want = Vec::new();
                    for b in 0..spec.batch() {
                        let tiles = (spec.seq(b).k_len as usize).div_ceil(tile);
                        for h in 0..spec.heads_kv {
                            for g in 0..spec.group() as u32 {
                                want.extend((0..tiles).map(|t| (b as u32, h as u32, t as u32, g)));
                            }
                        }
                    }
                    let mut got = Vec::new();
                    let mut part_ids = Vec::new();
                    for i in &items {
                        let (first, end) = i.group_heads(spec.group() as u32);
                        assert!(first < end, "empty part {i:?}");
                        got.extend((first..end).map(|g| (i.batch, i.head, i.q_block, g)));
                        // The kernels find an item's part buffer from its first head.
                        part_ids.push((i.batch, i.head, i.q_block, attn_common::part_of(first, spec.group() as u32, parts as u32)));
                    }
                    part_ids.sort();
                    let mut want_ids: Vec<_> = part_ids.iter().map(|&(b, h, t, _)| (b, h, t)).collect();
                    want_ids.dedup();
                    let want_ids: Vec<_> = want_ids.into_iter().flat_map(|(b, h, t)| (0..parts as u32).map(move |p| (b, h, t, p))).collect();
                    assert_eq!(part_ids, want_ids, "tile {tile}, {parts} parts: part indices");
                    assert_eq!(items.len(), want.len() / spec.group() * parts, "tile {tile}, {parts} parts");
                    got.sort();
                    want.sort();
                    assert_eq!(got, want, "tile {tile}, {parts} parts, spec {spec:?}");
                    // Weight, counted row by row: the query rows that may see the tile's first
                    // key (all of them, or under causal those whose bottom-right aligned position
                    // i + Sk - Sq reaches it), times the heads of the part.
                    let weight = |i: &attn_common::WorkItem| {
                        let s = spec.seq(i.batch as usize);
                        let j0 = (i.q_block as usize * tile) as i32;
                        let (first, end) = i.group_heads(spec.group() as u32);
                        (0..s.q_len).filter(|&r| !spec.causal || r + s.k_len - s.q_len >= j0).count() * (end - first) as usize
                    };
                    assert!(items.windows(2).all(|w| weight(&w[0]) >= weight(&w[1])), "tile {tile}: not heaviest first");
                }
            }
        }
    }

    /// Groups are split only as far as needed for about three items per SM, never below one head
    /// per item.
    #[test]
    fn group_parts_fill_the_gpu_without_empty_parts() {
        assert_eq!(group_parts(1, 10, 132), 1); // MHA: nothing to split
        assert_eq!(group_parts(32, 64, 132), 7); // MQA at 8k: 64 tiles → 448 items
        assert_eq!(group_parts(4, 512, 132), 1); // GQA at 8k with 8 kv heads: already full
        assert_eq!(group_parts(4, 2, 132), 4); // at most one head per item
        assert_eq!(group_parts(8, 0, 132), 1);
        assert_eq!(group_parts(1 << 17, 1, 132), 1); // beyond what `group_part` can name
    }
}

/// The profiling build's timeline (`ATTN_TRACE=path` at build and run time): space for the
/// Hopper forward's probes after the work counter, written to `path` after every launch.
#[cfg(attn_trace)]
mod trace {
    use super::*;
    use attn_common::{TRACE_EVENTS, TRACE_ROLES};

    /// The probe lists of a forward grid of `grid` CTAs.
    pub fn bytes(grid: u32) -> usize {
        (grid * TRACE_ROLES * TRACE_EVENTS) as usize * 8
    }

    pub fn dump(stream: &Arc<CudaStream>, bytes: &CudaSlice<u8>, at: usize) -> Result<()> {
        let host = stream.clone_dtoh(bytes)?;
        if let Some(path) = std::env::var_os("ATTN_TRACE") {
            std::fs::write(path, &host[at..]).expect("writing the trace");
        }
        Ok(())
    }
}

#[cfg(not(attn_trace))]
mod trace {
    use super::*;

    pub fn bytes(_: u32) -> usize {
        0
    }

    #[inline(always)]
    pub fn dump(_: &Arc<CudaStream>, _: &CudaSlice<u8>, _: usize) -> Result<()> {
        Ok(())
    }
}
