//! TMA tensor maps for the Hopper kernels: the `(dim, token, head, batch)` view of a
//! `[batch, token, head, dim]` tensor with free strides, in boxes of 64 columns x `box_rows` rows
//! written with the 128-byte swizzle that the kernels' wgmma descriptors read.
use attn_common::{Strides, TENSOR_MAP_BYTES};
use cudarc::driver::sys;

/// One encoded `CUtensorMap` (opaque, 128 bytes).
pub(crate) type TensorMapBytes = [u8; TENSOR_MAP_BYTES];

/// The geometry of one tensor operand.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MapShape {
    pub ptr: u64,
    pub f16: bool,
    pub head_dim: usize,
    /// Rows of the token dimension per batch entry (all rows when packed).
    pub tokens: usize,
    pub heads: usize,
    /// Batch entries (1 when packed).
    pub batch: usize,
    /// In elements.
    pub strides: Strides,
    /// Rows (tokens) per box: the kernel's tile height.
    pub box_rows: u32,
}

/// The map's extents (elements) and outer strides (bytes), or `None` when TMA cannot describe
/// the tensor.
fn geometry(s: &MapShape) -> Option<([u64; 4], [u64; 3])> {
    if s.ptr % 16 != 0 || s.head_dim == 0 || s.tokens == 0 || s.heads == 0 || s.batch == 0 {
        return None;
    }
    let dims = [s.head_dim as u64, s.tokens as u64, s.heads as u64, s.batch as u64];
    if dims.iter().any(|&d| d > u32::MAX as u64) {
        return None;
    }
    // A dimension of extent 1 is never stepped: any legal stride describes it.
    let stride = |elems: i64, extent: usize| -> Option<u64> {
        if extent == 1 {
            return Some(16);
        }
        let bytes = u64::try_from(elems).ok()?.checked_mul(2)?;
        (bytes > 0 && bytes % 16 == 0 && bytes < (1 << 40)).then_some(bytes)
    };
    Some((dims, [stride(s.strides.token, s.tokens)?, stride(s.strides.head, s.heads)?, stride(s.strides.batch, s.batch)?]))
}

/// Encodes the map, or `None` when TMA cannot describe the tensor (a stride or address that is
/// not 16-byte aligned, a broadcast (zero) stride, an extent past the hardware's limits): the
/// caller then runs the portable kernel, which has no such limits.
pub(crate) fn encode(s: &MapShape) -> Option<TensorMapBytes> {
    let (dims, strides) = geometry(s)?;
    let boxes = [64u32, s.box_rows, 1, 1];
    let elem_strides = [1u32; 4];
    let dtype = if s.f16 {
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16
    } else {
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
    };
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every array holds `rank` (or `rank - 1` for the strides) entries; the driver only
    // writes the map.
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            4,
            s.ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        return None;
    }
    // SAFETY: encoded successfully; the map is plain bytes.
    let map = unsafe { map.assume_init() };
    Some(bytemuck::cast(map.opaque))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(strides: Strides) -> MapShape {
        MapShape { ptr: 1 << 20, f16: false, head_dim: 128, tokens: 1000, heads: 8, batch: 2, strides, box_rows: 128 }
    }

    #[test]
    fn contiguous_and_gqa_layouts_map() {
        let s = Strides { batch: 1000 * 8 * 128, token: 8 * 128, head: 128 };
        let (dims, strides) = geometry(&shape(s)).unwrap();
        assert_eq!(dims, [128, 1000, 8, 2]);
        assert_eq!(strides, [2048, 256, 2_048_000]);
    }

    #[test]
    fn unit_extents_take_any_stride_and_bad_strides_fall_back() {
        let mut m = shape(Strides { batch: 0, token: 128, head: 0 });
        m.heads = 1;
        m.batch = 1;
        assert_eq!(geometry(&m).unwrap().1, [256, 16, 16]);
        // Broadcast (zero) and negative strides over real extents, misaligned pointers.
        assert!(geometry(&shape(Strides { batch: 0, token: 1024, head: 128 })).is_none());
        assert!(geometry(&shape(Strides { batch: -8, token: 1024, head: 128 })).is_none());
        let mut m = shape(Strides { batch: 1 << 20, token: 1024, head: 128 });
        m.ptr += 8;
        assert!(geometry(&m).is_none());
    }
}
