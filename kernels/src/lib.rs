//! Block-sparse attention kernels. Built twice by the host crate: for `sm_80` (the portable
//! mma.sync path, A100 and newer) and for `sm_90a` (Hopper).
#![no_std]
#![feature(abi_gpu_kernel, stdarch_nvptx, asm_experimental_arch, gpu_intrinsics, core_intrinsics, core_float_math, gpu_launch_sized_workgroup_mem)]
#![allow(internal_features, improper_gpu_kernel_arg)]

pub mod arch;
pub mod bwd;
pub mod compact;
pub mod fwd;
pub mod gemm;
#[cfg(target_feature = "sm_90a")]
pub mod hopper;
#[cfg(target_feature = "sm_90a")]
pub mod hopper_bwd;
#[cfg(target_feature = "sm_90a")]
pub mod hopper_dq;
pub mod item;
pub mod tiles;
#[cfg(all(target_feature = "sm_90a", feature = "trace"))]
pub mod trace;

use arch::mma::{Bf16, F16};
use attn_common::{BwdParams, CompactParams, FwdParams, ReduceParams};
#[cfg(target_feature = "sm_90a")]
use attn_common::{HopperBwdParams, HopperDqParams, HopperFwdParams};
use core::arch::global_asm;

/// Launch bounds that Rust cannot express: a marker that `tools/ptx-post` turns into directives.
macro_rules! ptx_attrs {
    ($k:ident: $($d:expr),+) => { global_asm!($(concat!("// @ptx-attr {k} ", $d)),+, k = sym $k); };
}

/// Stamps out one named entry per (dtype, head dim); generic `gpu-kernel` fns are never exported.
macro_rules! fwd_entries {
    ($($name:ident = ($elem:ty, d $d:literal, threads $t:literal, mtiles $mt:literal, keys $bn:literal, ctas $c:literal)),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $name(p: FwdParams) {
            unsafe { fwd::attn_fwd::<$elem, $d, { $d / 8 }, { $d / 16 }, { $t / 32 }, $mt, { $bn / 8 }>(&p) }
        }
        ptx_attrs!($name: concat!(".maxntid ", $t, ", 1, 1"), concat!(".minnctapersm ", $c));
    )*};
}

fwd_entries!(
    attn_fwd_bf16_d32 = (Bf16, d 32, threads 128, mtiles 2, keys 64, ctas 1),
    attn_fwd_bf16_d64 = (Bf16, d 64, threads 128, mtiles 2, keys 64, ctas 1),
    attn_fwd_bf16_d128 = (Bf16, d 128, threads 128, mtiles 2, keys 64, ctas 1),
    attn_fwd_f16_d32 = (F16, d 32, threads 128, mtiles 2, keys 64, ctas 1),
    attn_fwd_f16_d64 = (F16, d 64, threads 128, mtiles 2, keys 64, ctas 1),
    attn_fwd_f16_d128 = (F16, d 128, threads 128, mtiles 2, keys 64, ctas 1),
);

// Experiments, reachable through `Device::use_fwd_variant` (the bench's --variant): never
// chosen by default; `cargo xtask ptx` reports them without failing on them.
fwd_entries!(
    test_fwd_bf16_d128_k32 = (Bf16, d 128, threads 128, mtiles 2, keys 32, ctas 1),
    test_fwd_bf16_d128_w8 = (Bf16, d 128, threads 256, mtiles 1, keys 64, ctas 1),
);

/// Hopper forward entries (sm_90a module only): 384 threads, one CTA per SM.
#[cfg(target_feature = "sm_90a")]
macro_rules! hopper_entries {
    ($($name:ident = ($elem:ty, d $d:literal)),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $name(p: HopperFwdParams) {
            unsafe { hopper::attn_fwd_hopper::<$elem, [f32; $d / 2]>(&p) }
        }
        ptx_attrs!($name: ".maxntid 384, 1, 1", ".minnctapersm 1");
    )*};
}

#[cfg(target_feature = "sm_90a")]
hopper_entries!(
    attn_fwd_hopper_bf16_d64 = (Bf16, d 64),
    attn_fwd_hopper_bf16_d128 = (Bf16, d 128),
    attn_fwd_hopper_f16_d64 = (F16, d 64),
    attn_fwd_hopper_f16_d128 = (F16, d 128),
);

/// Hopper backward entries (sm_90a module only): `attn_bwd_dq_hopper_*` and
/// `attn_bwd_dkdv_hopper_*`, 384 threads, one CTA per SM.
#[cfg(target_feature = "sm_90a")]
macro_rules! hopper_bwd_entries {
    ($($dq:ident, $dkdv:ident = ($elem:ty, d $d:literal)),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $dq(p: HopperDqParams) {
            unsafe { hopper_dq::bwd_dq_hopper::<$elem, [f32; $d / 2]>(&p) }
        }
        ptx_attrs!($dq: ".maxntid 384, 1, 1", ".minnctapersm 1");
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $dkdv(p: HopperBwdParams) {
            unsafe { hopper_bwd::bwd_dkdv_hopper::<$elem, [f32; $d / 2]>(&p) }
        }
        ptx_attrs!($dkdv: ".maxntid 384, 1, 1", ".minnctapersm 1");
    )*};
}

#[cfg(target_feature = "sm_90a")]
hopper_bwd_entries!(
    attn_bwd_dq_hopper_bf16_d64, attn_bwd_dkdv_hopper_bf16_d64 = (Bf16, d 64),
    attn_bwd_dq_hopper_bf16_d128, attn_bwd_dkdv_hopper_bf16_d128 = (Bf16, d 128),
    attn_bwd_dq_hopper_f16_d64, attn_bwd_dkdv_hopper_f16_d64 = (F16, d 64),
    attn_bwd_dq_hopper_f16_d128, attn_bwd_dkdv_hopper_f16_d128 = (F16, d 128),
);

/// Backward entries per (dtype, head dim): `bwd_dsum_*` (128 threads), `bwd_dq_*` (256),
/// `bwd_dkdv_*` (128 threads; `query_rows` per query tile it walks).
macro_rules! bwd_entries {
    ($($dsum:ident, $dq:ident, $dkdv:ident = ($elem:ty, $d:literal, query_rows $bq:literal)),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $dsum(p: BwdParams) {
            unsafe { bwd::bwd_dsum::<$elem>(&p) }
        }
        ptx_attrs!($dsum: ".maxntid 128, 1, 1");
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $dq(p: BwdParams) {
            unsafe { bwd::bwd_dq::<$elem, $d, { $d / 8 }, { $d / 16 }>(&p) }
        }
        ptx_attrs!($dq: ".maxntid 256, 1, 1");
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $dkdv(p: BwdParams) {
            unsafe { bwd::bwd_dkdv::<$elem, $d, { $d / 8 }, { $d / 16 }, { $bq / 8 }, $bq, { $bq / 16 }>(&p) }
        }
        // As the forward entries: without `.minnctapersm` ptxas may cap registers at 128 and spill.
        ptx_attrs!($dkdv: ".maxntid 128, 1, 1", ".minnctapersm 1");
    )*};
}

bwd_entries!(
    attn_bwd_dsum_bf16_d32, attn_bwd_dq_bf16_d32, attn_bwd_dkdv_bf16_d32 = (Bf16, 32, query_rows 64),
    attn_bwd_dsum_bf16_d64, attn_bwd_dq_bf16_d64, attn_bwd_dkdv_bf16_d64 = (Bf16, 64, query_rows 64),
    attn_bwd_dsum_bf16_d128, attn_bwd_dq_bf16_d128, attn_bwd_dkdv_bf16_d128 = (Bf16, 128, query_rows 32),
    attn_bwd_dsum_f16_d32, attn_bwd_dq_f16_d32, attn_bwd_dkdv_f16_d32 = (F16, 32, query_rows 64),
    attn_bwd_dsum_f16_d64, attn_bwd_dq_f16_d64, attn_bwd_dkdv_f16_d64 = (F16, 64, query_rows 64),
    attn_bwd_dsum_f16_d128, attn_bwd_dq_f16_d128, attn_bwd_dkdv_f16_d128 = (F16, 128, query_rows 32),
);

/// A split GQA group's `f32` dK/dV sums (parts added in order) rounded to the input type.
macro_rules! reduce_entries {
    ($($name:ident = $elem:ty),*) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $name(p: ReduceParams) {
            unsafe { bwd::reduce_parts::<$elem>(&p) }
        }
        ptx_attrs!($name: concat!(".maxntid ", 256, ", 1, 1"));
    )*};
}

reduce_entries!(attn_reduce_parts_bf16 = Bf16, attn_reduce_parts_f16 = F16);
const _: () = assert!(attn_common::REDUCE_THREADS == 256);

#[unsafe(no_mangle)]
pub unsafe extern "gpu-kernel" fn compact_block_mask(p: CompactParams) {
    unsafe { compact::compact_block_mask(&p) }
}
ptx_attrs!(compact_block_mask: ".maxntid 128, 1, 1");
