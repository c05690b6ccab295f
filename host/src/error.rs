//! Typed errors: every way to call the library wrongly, and every way the GPU can be missing.

/// Everything that can go wrong; each variant says what, and with which values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CUDA driver (libcuda) could be loaded on this machine")]
    NoDriver,
    #[error("no CUDA device with ordinal {ordinal} (the driver sees {count})")]
    NoDevice { ordinal: usize, count: usize },
    #[error("compute capability {major}.{minor} is not supported: the kernels need sm_80 or newer")]
    UnsupportedArch { major: i32, minor: i32 },
    #[error("the driver could not JIT-compile the {arch} module: {log}")]
    PtxJit { arch: &'static str, log: String },
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),

    #[error("the batch is empty")]
    EmptyBatch,
    #[error("heads_q = {heads_q} and heads_kv = {heads_kv}: both must be positive and heads_kv must divide heads_q")]
    Heads { heads_q: usize, heads_kv: usize },
    #[error("head dim {0} is not served: it must be a positive multiple of 8, at most 128")]
    HeadDim(usize),
    #[error("{got} head patterns for {heads_q} query heads: give exactly one per query head")]
    PatternCount { heads_q: usize, got: usize },
    #[error("head {head} is block-sparse but no block mask was given")]
    MissingMask { head: usize },
    #[error("head {head} names mask slice {mask}, but the block mask holds {n_masks}")]
    MaskIndex { head: usize, mask: u32, n_masks: usize },
    #[error("the block mask's batch dimension is {got}: it must be 1 or the batch size {batch}")]
    MaskBatch { got: usize, batch: usize },
    #[error("the block mask has {got} elements; its shape [{batch}, {n_masks}, {q_blocks}, {k_blocks}] needs {expected}")]
    MaskLen { got: usize, expected: usize, batch: usize, n_masks: usize, q_blocks: usize, k_blocks: usize },
    #[error("the block mask holds a value other than 0 and 1")]
    MaskValue,
    #[error("invalid cu_seqlens_{which}: {why}")]
    CuSeqlens { which: &'static str, why: String },
    #[error("cu_seqlens_q has {q} entries and cu_seqlens_k {k}: both must have batch + 1")]
    CuSeqlensLen { q: usize, k: usize },
    #[error("sequence length {len} is too long (the limit is {max})")]
    SeqTooLong { len: usize, max: usize },
    #[error("softmax_scale {0} must be finite and positive")]
    SoftmaxScale(f32),
    #[error("tensor `{name}`: {why}")]
    Tensor { name: &'static str, why: String },
    #[error("tensors `{a}` and `{b}` have different dtypes ({a_dtype} and {b_dtype})")]
    Dtype { a: &'static str, b: &'static str, a_dtype: &'static str, b_dtype: &'static str },
}

impl Error {
    /// Whether the error is about the machine (driver, device, JIT) rather than the call's
    /// inputs: callers may fall back to the CPU backend on these.
    pub fn is_device(&self) -> bool {
        matches!(self, Error::NoDriver | Error::NoDevice { .. } | Error::UnsupportedArch { .. } | Error::PtxJit { .. } | Error::Driver(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
