//! Typed errors: every way to call the library wrongly, and every way the GPU can be missing.

/// Everything that can go wrong; each variant says what, and with which values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `libcuda` is not installed or could not be loaded.
    #[error("no CUDA driver (libcuda) could be loaded on this machine")]
    NoDriver,
    /// The device ordinal asked for does not exist.
    #[error("no CUDA device with ordinal {ordinal} (the driver sees {count})")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices the driver sees.
        count: usize,
    },
    /// The device is older than sm_80 (Ampere).
    #[error("compute capability {major}.{minor} is not supported: the kernels need sm_80 or newer")]
    UnsupportedArch {
        /// Compute capability, major part.
        major: i32,
        /// Compute capability, minor part.
        minor: i32,
    },
    /// The driver rejected the embedded PTX module (e.g. a driver too old for its PTX version).
    #[error("the driver could not JIT-compile the {arch} module: {log}")]
    PtxJit {
        /// The module's target, `sm_80` or `sm_90a`.
        arch: &'static str,
        /// The JIT's error log.
        log: String,
    },
    /// Any other CUDA driver call failed (out of memory, a launch failure, ...).
    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),

    /// A batch with no sequence.
    #[error("the batch is empty")]
    EmptyBatch,
    /// A head count is zero, or `heads_kv` does not divide `heads_q`.
    #[error("heads_q = {heads_q} and heads_kv = {heads_kv}: both must be positive and heads_kv must divide heads_q")]
    Heads {
        /// Query heads.
        heads_q: usize,
        /// Key/value heads.
        heads_kv: usize,
    },
    /// A head dim that no kernel serves (the value given).
    #[error("head dim {0} is not served: it must be a positive multiple of 8, at most 128")]
    HeadDim(usize),
    /// The number of head patterns differs from the number of query heads.
    #[error("{got} head patterns for {heads_q} query heads: give exactly one per query head")]
    PatternCount {
        /// Query heads.
        heads_q: usize,
        /// Patterns given.
        got: usize,
    },
    /// A block-sparse head, but the spec has no mask shape or no mask buffer was given.
    #[error("head {head} is block-sparse but no block mask was given")]
    MissingMask {
        /// The first block-sparse head.
        head: usize,
    },
    /// A block-sparse head names a mask slice past the end of the mask.
    #[error("head {head} names mask slice {mask}, but the block mask holds {n_masks}")]
    MaskIndex {
        /// The head.
        head: usize,
        /// The slice it names.
        mask: u32,
        /// Slices in the mask.
        n_masks: usize,
    },
    /// The mask's batch dimension is neither 1 nor the batch size.
    #[error("the block mask's batch dimension is {got}: it must be 1 or the batch size {batch}")]
    MaskBatch {
        /// The mask's batch dimension.
        got: usize,
        /// The batch size.
        batch: usize,
    },
    /// The mask buffer's length does not match its shape.
    #[error("the block mask has {got} elements; its shape [{batch}, {n_masks}, {q_blocks}, {k_blocks}] needs {expected}")]
    MaskLen {
        /// Elements in the buffer.
        got: usize,
        /// Elements the shape needs.
        expected: usize,
        /// The mask's batch dimension (1 or B).
        batch: usize,
        /// Mask slices.
        n_masks: usize,
        /// Query blocks, `ceil(max Sq / 128)`.
        q_blocks: usize,
        /// Key blocks, `ceil(max Sk / 128)`.
        k_blocks: usize,
    },
    /// A mask element other than 0 and 1.
    #[error("the block mask holds a value other than 0 and 1")]
    MaskValue,
    /// `cu_seqlens_q` or `cu_seqlens_k` does not start at 0 or decreases.
    #[error("invalid cu_seqlens_{which}: {why}")]
    CuSeqlens {
        /// `"q"` or `"k"`.
        which: &'static str,
        /// What is wrong, with the values.
        why: String,
    },
    /// `cu_seqlens_q` and `cu_seqlens_k` differ in length.
    #[error("cu_seqlens_q has {q} entries and cu_seqlens_k {k}: both must have batch + 1")]
    CuSeqlensLen {
        /// Entries of `cu_seqlens_q`.
        q: usize,
        /// Entries of `cu_seqlens_k`.
        k: usize,
    },
    /// A sequence longer than the kernels' 32-bit arithmetic allows.
    #[error("sequence length {len} is too long (the limit is {max})")]
    SeqTooLong {
        /// The sequence length given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A softmax scale that is not finite and positive (the value given).
    #[error("softmax_scale {0} must be finite and positive")]
    SoftmaxScale(f32),
    /// A tensor argument is too short for its strides, misaligned, or otherwise unusable.
    #[error("tensor `{name}`: {why}")]
    Tensor {
        /// The argument, e.g. `"q"`.
        name: &'static str,
        /// What is wrong, with the values.
        why: String,
    },
    /// Two tensors that must share a dtype do not.
    #[error("tensors `{a}` and `{b}` have different dtypes ({a_dtype} and {b_dtype})")]
    Dtype {
        /// The first tensor.
        a: &'static str,
        /// The second tensor.
        b: &'static str,
        /// The first tensor's dtype.
        a_dtype: &'static str,
        /// The second tensor's dtype.
        b_dtype: &'static str,
    },
}

impl Error {
    /// Whether the error is about the machine (driver, device, JIT) rather than the call's
    /// inputs: callers may fall back to the CPU backend on these.
    pub fn is_device(&self) -> bool {
        matches!(self, Error::NoDriver | Error::NoDevice { .. } | Error::UnsupportedArch { .. } | Error::PtxJit { .. } | Error::Driver(_))
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
