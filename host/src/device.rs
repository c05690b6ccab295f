//! Finding the GPU and loading the kernels' module for its architecture, once per context.
use std::ffi::{CString, c_void};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, sys};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

/// The embedded PTX modules (built by `build.rs` from the `kernels` crate), deflated.
const PTX_SM80_DEFLATED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels_sm_80.ptx.deflate"));
const PTX_SM90A_DEFLATED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels_sm_90a.ptx.deflate"));

/// The PTX text of a kernel path's module.
pub fn ptx(path: KernelPath) -> String {
    let deflated = match path {
        KernelPath::Portable => PTX_SM80_DEFLATED,
        KernelPath::Hopper => PTX_SM90A_DEFLATED,
    };
    let bytes = miniz_oxide::inflate::decompress_to_vec(deflated).expect("the embedded PTX was deflated by build.rs");
    String::from_utf8(bytes).expect("PTX is ASCII")
}

/// Which kernel path a device runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// mma.sync / cp.async / ldmatrix kernels (sm_80 and newer).
    Portable,
    /// The sm_90a module (Hopper).
    Hopper,
}

/// Forward kernel configuration per head dim class: head dim, keys per tile, threads
/// (must match the entries stamped out in `kernels/src/lib.rs`).
pub(crate) const FWD_HEAD_DIMS: [(usize, i32, u32); 3] = [(32, 64, 128), (64, 64, 128), (128, 64, 128)];

/// One loaded forward entry and its launch geometry.
#[derive(Clone, Debug)]
pub(crate) struct FwdKernel {
    pub func: CudaFunction,
    pub head_dim: usize,
    pub key_tile: i32,
    pub threads: u32,
}

impl FwdKernel {
    pub fn smem_bytes(&self) -> usize {
        fwd_smem_bytes(self.head_dim, self.key_tile)
    }
}

/// A GPU with the attention kernels loaded.
pub struct Device {
    ctx: Arc<CudaContext>,
    module: Arc<CudaModule>,
    capability: (i32, i32),
    path: KernelPath,
    sm_count: u32,
    /// `[dtype (bf16, f16)][head dim class]`.
    pub(crate) fwd: [[FwdKernel; 3]; 2],
    /// `[dtype][head dim class]`: the backward's three kernels.
    pub(crate) bwd: [[BwdKernels; 3]; 2],
    max_smem: i32,
    pub(crate) compact: CudaFunction,
    /// `[dtype]`: split groups' `f32` dK/dV sums → the input type.
    pub(crate) reduce: [CudaFunction; 2],
    /// `[dtype][head dim 64, 128]`: the Hopper forward (sm_90a module), `None` elsewhere.
    hopper_fwd: Option<[[HopperKernel; 2]; 2]>,
    /// Whether forwards use it ([`Device::use_hopper_forward`]).
    hopper_on: bool,
    /// `[dtype][head dim 64, 128]`: the Hopper dQ and dK/dV kernels, `None` off the Hopper path.
    hopper_dq: Option<[[HopperKernel; 2]; 2]>,
    hopper_dkdv: Option<[[HopperKernel; 2]; 2]>,
    /// Whether backwards use it ([`Device::use_hopper_backward`]).
    hopper_bwd_on: bool,
}

/// Head dims of the Hopper entries (`attn_fwd_hopper_{dtype}_d{d}`, `attn_bwd_dkdv_hopper_..`).
pub(crate) const HOPPER_HEAD_DIMS: [usize; 2] = [64, 128];

/// One loaded Hopper entry.
#[derive(Clone, Debug)]
pub(crate) struct HopperKernel {
    pub func: CudaFunction,
    /// Dynamic shared memory per CTA.
    pub smem: usize,
}


impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("capability", &self.capability).field("path", &self.path).finish()
    }
}

/// Whether a CUDA driver is present and sees at least one device. Never panics.
pub fn gpu_available() -> bool {
    // cudarc panics instead of returning an error when libcuda is missing: probe first.
    if !unsafe { sys::is_culib_present() } {
        return false;
    }
    CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

impl Device {
    /// Opens device `ordinal` and loads the module for its architecture (the sm_90a module on
    /// Hopper, the sm_80 module on other sm_80+ devices).
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_path(ordinal, None)
    }

    /// As [`Device::new`], forcing a kernel path (`Hopper` needs an sm_90 device).
    pub fn with_path(ordinal: usize, force: Option<KernelPath>) -> Result<Self> {
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoDriver);
        }
        let count = CudaContext::device_count()? as usize;
        if ordinal >= count {
            return Err(Error::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        if major < 8 {
            return Err(Error::UnsupportedArch { major, minor });
        }
        let hopper_ok = major == 9;
        let path = match force {
            Some(KernelPath::Hopper) if !hopper_ok => return Err(Error::UnsupportedArch { major, minor }),
            Some(p) => p,
            None if hopper_ok => KernelPath::Hopper,
            None => KernelPath::Portable,
        };
        let arch = match path {
            KernelPath::Hopper => "sm_90a",
            KernelPath::Portable => "sm_80",
        };
        let text = ptx(path);
        let module = match ctx.load_module(Ptx::from_src(text.clone())) {
            Ok(m) => m,
            Err(_) => return Err(Error::PtxJit { arch, log: jit_log(&text) }),
        };
        let max_smem = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let mut fwd = Vec::new();
        for dtype in ["bf16", "f16"] {
            let mut row = Vec::new();
            for (d, bn, threads) in FWD_HEAD_DIMS {
                row.push(load_fwd(&module, max_smem, &format!("attn_fwd_{dtype}_d{d}"), d, bn, threads)?);
            }
            fwd.push(<[FwdKernel; 3]>::try_from(row).unwrap());
        }
        let mut bwd = Vec::new();
        for dtype in ["bf16", "f16"] {
            let mut row = Vec::new();
            for (d, _, _) in FWD_HEAD_DIMS {
                row.push(load_bwd(&module, max_smem, dtype, d)?);
            }
            bwd.push(<[BwdKernels; 3]>::try_from(row).unwrap());
        }
        let compact = module.load_function("compact_block_mask")?;
        let reduce = [module.load_function("attn_reduce_parts_bf16")?, module.load_function("attn_reduce_parts_f16")?];
        let (hopper_fwd, hopper_dq, hopper_dkdv) = match path {
            KernelPath::Hopper => (
                Some(load_hopper(&module, max_smem, "attn_fwd_hopper", attn_common::hopper_fwd_smem_bytes)?),
                Some(load_hopper(&module, max_smem, "attn_bwd_dq_hopper", attn_common::hopper_dq_smem_bytes)?),
                Some(load_hopper(&module, max_smem, "attn_bwd_dkdv_hopper", attn_common::hopper_dkdv_smem_bytes)?),
            ),
            KernelPath::Portable => (None, None, None),
        };
        let sm_count = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        Ok(Device {
            ctx,
            module,
            capability: (major, minor),
            path,
            sm_count,
            fwd: <[[FwdKernel; 3]; 2]>::try_from(fwd).unwrap(),
            bwd: <[[BwdKernels; 3]; 2]>::try_from(bwd).unwrap(),
            max_smem,
            compact,
            reduce,
            hopper_on: hopper_fwd.is_some(),
            hopper_fwd,
            hopper_bwd_on: hopper_dkdv.is_some(),
            hopper_dq,
            hopper_dkdv,
        })
    }

    /// Switches the Hopper forward kernel (TMA, wgmma) on or off. It is on by default on the
    /// Hopper path, for head dims from 33 to 128; off, the forward runs the portable kernels of
    /// the same module (for comparison). Switching it on elsewhere is an error.
    pub fn use_hopper_forward(&mut self, on: bool) -> Result<()> {
        if on && self.hopper_fwd.is_none() {
            return Err(Error::UnsupportedArch { major: self.capability.0, minor: self.capability.1 });
        }
        self.hopper_on = on;
        Ok(())
    }

    /// Whether forwards with head dim `head_dim` run the Hopper kernel.
    pub fn hopper_forward(&self, head_dim: usize) -> bool {
        self.hopper_kernel(0, head_dim).is_some()
    }

    /// The Hopper forward entry for a dtype (0 bf16, 1 f16) and head dim, when it is on and
    /// serves that head dim (33 to 128).
    pub(crate) fn hopper_kernel(&self, dtype: usize, head_dim: usize) -> Option<&HopperKernel> {
        hopper_entry(self.hopper_fwd.as_ref().filter(|_| self.hopper_on)?, dtype, head_dim)
    }

    /// Switches the Hopper backward kernels (dQ and dK/dV: TMA, wgmma) on or off: on by default
    /// on the Hopper path for head dims from 33 to 128; off, the backward runs the portable
    /// kernels.
    pub fn use_hopper_backward(&mut self, on: bool) -> Result<()> {
        if on && self.hopper_dkdv.is_none() {
            return Err(Error::UnsupportedArch { major: self.capability.0, minor: self.capability.1 });
        }
        self.hopper_bwd_on = on;
        Ok(())
    }

    /// The Hopper dQ entry for a dtype and head dim, when it is on and serves that head dim.
    pub(crate) fn hopper_dq_kernel(&self, dtype: usize, head_dim: usize) -> Option<&HopperKernel> {
        hopper_entry(self.hopper_dq.as_ref().filter(|_| self.hopper_bwd_on)?, dtype, head_dim)
    }

    /// The Hopper dK/dV entry for a dtype and head dim, when it is on and serves that head dim.
    pub(crate) fn hopper_dkdv_kernel(&self, dtype: usize, head_dim: usize) -> Option<&HopperKernel> {
        hopper_entry(self.hopper_dkdv.as_ref().filter(|_| self.hopper_bwd_on)?, dtype, head_dim)
    }

    /// Replaces the portable forward kernel of one (dtype, head dim) with another entry of the
    /// module: for benchmarking kernel variants (entries named `test_*`) against the default.
    /// On the Hopper path, switch the Hopper forward off too ([`Device::use_hopper_forward`]) or
    /// the variant only serves head dims up to 32.
    #[doc(hidden)]
    pub fn use_fwd_variant(&mut self, f16: bool, head_dim: usize, entry: &str, key_tile: i32, threads: u32) -> Result<()> {
        let class = FWD_HEAD_DIMS.iter().position(|&(d, _, _)| d == head_dim).ok_or(Error::HeadDim(head_dim))?;
        self.fwd[f16 as usize][class] = load_fwd(&self.module, self.max_smem, entry, head_dim, key_tile, threads)?;
        Ok(())
    }

    /// The CUDA context the kernels are loaded in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The context's default stream.
    pub fn default_stream(&self) -> Arc<CudaStream> {
        self.ctx.default_stream()
    }
    /// Compute capability (major, minor).
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }
    /// The kernel module in use.
    pub fn path(&self) -> KernelPath {
        self.path
    }
    /// Streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    /// e.g. "NVIDIA H100 80GB HBM3 (sm_90, Hopper path)".
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        format!("{name} (sm_{}{}, {:?} path)", self.capability.0, self.capability.1, self.path)
    }
}

/// The backward kernels of one (dtype, head dim).
#[derive(Clone, Debug)]
pub(crate) struct BwdKernels {
    pub dsum: CudaFunction,
    pub dq: CudaFunction,
    pub dkdv: CudaFunction,
    pub head_dim: usize,
}

fn load_bwd(module: &Arc<CudaModule>, max_smem: i32, dtype: &str, d: usize) -> Result<BwdKernels> {
    let k = BwdKernels {
        dsum: module.load_function(&format!("attn_bwd_dsum_{dtype}_d{d}"))?,
        dq: module.load_function(&format!("attn_bwd_dq_{dtype}_d{d}"))?,
        dkdv: module.load_function(&format!("attn_bwd_dkdv_{dtype}_d{d}"))?,
        head_dim: d,
    };
    for (f, smem) in [(&k.dq, attn_common::bwd_dq_smem_bytes(d)), (&k.dkdv, attn_common::bwd_dkdv_smem_bytes(d))] {
        if smem as i32 > max_smem {
            return Err(Error::Tensor { name: "kernel", why: format!("the backward needs {smem} bytes of shared memory; the device allows {max_smem}") });
        }
        f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
    }
    Ok(k)
}

fn load_fwd(module: &Arc<CudaModule>, max_smem: i32, name: &str, head_dim: usize, key_tile: i32, threads: u32) -> Result<FwdKernel> {
    let func = module.load_function(name)?;
    let k = FwdKernel { func, head_dim, key_tile, threads };
    let smem = k.smem_bytes() as i32;
    if smem > max_smem {
        return Err(Error::Tensor { name: "kernel", why: format!("{name} needs {smem} bytes of shared memory; the device allows {max_smem}") });
    }
    k.func.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)?;
    Ok(k)
}

/// The entry of a Hopper table serving a dtype and head dim (33 to 128).
fn hopper_entry(kernels: &[[HopperKernel; 2]; 2], dtype: usize, head_dim: usize) -> Option<&HopperKernel> {
    let class = HOPPER_HEAD_DIMS.iter().position(|&d| head_dim <= d)?;
    (head_dim > 32).then(|| &kernels[dtype][class])
}

/// The Hopper entries `{prefix}_{dtype}_d{d}` with their shared memory.
fn load_hopper(module: &Arc<CudaModule>, max_smem: i32, prefix: &str, smem_bytes: fn(usize) -> usize) -> Result<[[HopperKernel; 2]; 2]> {
    let load = |dtype: &str, d: usize| -> Result<HopperKernel> {
        let name = format!("{prefix}_{dtype}_d{d}");
        let k = HopperKernel { func: module.load_function(&name)?, smem: smem_bytes(d) };
        if k.smem as i32 > max_smem {
            return Err(Error::Tensor { name: "kernel", why: format!("{name} needs {} bytes of shared memory; the device allows {max_smem}", k.smem) });
        }
        k.func.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, k.smem as i32)?;
        Ok(k)
    };
    let [a, b] = HOPPER_HEAD_DIMS;
    Ok([[load("bf16", a)?, load("bf16", b)?], [load("f16", a)?, load("f16", b)?]])
}

/// Dynamic shared memory of a forward kernel.
pub(crate) fn fwd_smem_bytes(d: usize, bn: i32) -> usize {
    attn_common::fwd_smem_bytes(d, bn as usize)
}

/// The JIT's error log for a module that failed to load (`load_module` gives only the code).
fn jit_log(ptx: &str) -> String {
    let Ok(src) = CString::new(ptx) else { return "the PTX contains a NUL byte".into() };
    let mut log = vec![0u8; 1 << 16];
    let mut opts = [sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER, sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
    let mut vals = [log.as_mut_ptr() as *mut c_void, log.len() as *mut c_void];
    let mut module = std::ptr::null_mut();
    let r = unsafe { sys::cuModuleLoadDataEx(&mut module, src.as_ptr() as *const c_void, 2, opts.as_mut_ptr(), vals.as_mut_ptr()) };
    if r == sys::CUresult::CUDA_SUCCESS {
        unsafe { sys::cuModuleUnload(module) };
        return "the module loaded on a second try".into();
    }
    let text = String::from_utf8_lossy(&log);
    format!("{r:?}: {}", text.trim_end_matches('\0').trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both embedded modules inflate, target their architecture and export every entry the
    /// host loads.
    #[test]
    fn embedded_modules_have_every_entry() {
        for (path, target) in [(KernelPath::Portable, ".target sm_80"), (KernelPath::Hopper, ".target sm_90a")] {
            let text = ptx(path);
            assert!(text.lines().any(|l| l.trim() == target), "{path:?}: no `{target}` line");
            let mut names = vec!["compact_block_mask".to_string(), "attn_reduce_parts_bf16".into(), "attn_reduce_parts_f16".into()];
            for dtype in ["bf16", "f16"] {
                for (d, _, _) in FWD_HEAD_DIMS {
                    names.push(format!("attn_fwd_{dtype}_d{d}"));
                    for k in ["dsum", "dq", "dkdv"] {
                        names.push(format!("attn_bwd_{k}_{dtype}_d{d}"));
                    }
                }
            }
            if path == KernelPath::Hopper {
                for dtype in ["bf16", "f16"] {
                    for d in HOPPER_HEAD_DIMS {
                        names.push(format!("attn_fwd_hopper_{dtype}_d{d}"));
                        names.push(format!("attn_bwd_dkdv_hopper_{dtype}_d{d}"));
                        names.push(format!("attn_bwd_dq_hopper_{dtype}_d{d}"));
                    }
                }
            }
            for n in names {
                assert!(text.contains(&format!(".entry {n}(")), "{path:?}: entry {n} missing");
            }
        }
    }
}
