//! `attend`: attention on tensors from a safetensors file, written to another.
//!
//!     cargo run --release --example attend -p block-sparse-attn -- IN.safetensors OUT.safetensors [--backend cpu|gpu]
//!
//! See `USAGE` for the file format; `roundtrip.py` beside this file writes one with PyPI's
//! safetensors and checks the result against numpy.
#[path = "../common/mod.rs"]
mod common;
mod input;

use std::collections::HashMap;
use std::process::ExitCode;

use block_sparse_attn::{Error, gpu_available};
use common::{Backend, Inputs};
use input::{Data, Half, Problem};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

const USAGE: &str = r#"usage: attend IN.safetensors OUT.safetensors [--backend cpu|gpu] [--deterministic]

Reads q, k, v from IN and writes the attention output o and its log-sum-exp lse to OUT.

IN's tensors (q, k, v all BF16 or all F16):
  batched          q [B, Sq, H, D]; k, v [B, Sk, Hkv, D]
  variable length  q [total_q, H, D]; k, v [total_k, Hkv, D];
                   cu_seqlens_q, cu_seqlens_k I32 [B + 1]
  optional         block_mask U8 [B or 1, n_masks, ceil(Sq / 128), ceil(Sk / 128)]
  optional         do (dtype and shape of q): the gradient of o; then dq, dk, dv are written too
IN's metadata (all optional):
  patterns       JSON array, one entry per query head: "dense", {"block_sparse": mask},
                 {"block_streaming": [sink_blocks, local_blocks]} or
                 {"token_streaming": [sink_tokens, local_tokens]} (default: all dense)
  causal         "true" or "false" (default "false")
  softmax_scale  a decimal number (default 1 / sqrt(D))
OUT's tensors: o (dtype and shape of q), lse F32 [B, H, Sq] or [H, total_q]; with `do`,
also dq (like q), dk and dv (like k).

--backend  cpu: the f64 CPU reference; gpu: GPU 0. Default: the GPU if there is one.
--deterministic  the GPU backward's deterministic mode: bitwise-identical dq, dk, dv run to run
           (the default mode may differ in the last bits of dk, dv for GQA/MQA inputs).
Exit status: 0 done, 1 the backend failed, 2 bad arguments or a malformed input file."#;

/// A failure and its exit status.
struct Fail {
    code: u8,
    message: String,
}

/// Bad arguments and malformed input: exit status 2.
impl From<String> for Fail {
    fn from(message: String) -> Self {
        Fail { code: 2, message }
    }
}

/// The library's errors: exit status 1 when the GPU or the driver failed, 2 when the input is
/// at fault (the spec or the mask it describes is invalid).
impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::NoDriver | Error::NoDevice { .. } | Error::UnsupportedArch { .. } | Error::PtxJit { .. } | Error::Driver(_) => 1,
            _ => 2,
        };
        Fail { code, message: e.to_string() }
    }
}

struct Args {
    input: String,
    output: String,
    /// `None`: the GPU if there is one, else the CPU.
    gpu: Option<bool>,
    /// The backward's deterministic mode (GPU only; the CPU reference always is).
    deterministic: bool,
}

/// `Ok(None)` for `--help`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut paths, mut gpu, mut deterministic) = (Vec::new(), None, false);
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let backend = match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--deterministic" => {
                deterministic = true;
                continue;
            }
            "--backend" => Some(args.next().ok_or("--backend needs a value: cpu or gpu")?),
            _ => arg.strip_prefix("--backend=").map(str::to_owned),
        };
        match backend.as_deref() {
            Some("cpu") => gpu = Some(false),
            Some("gpu") => gpu = Some(true),
            Some(other) => return Err(format!("unknown backend {other:?}: use cpu or gpu")),
            None if arg.starts_with('-') && arg.len() > 1 => return Err(format!("unknown option {arg}")),
            None => paths.push(arg),
        }
    }
    match <[String; 2]>::try_from(paths) {
        Ok([input, output]) => Ok(Some(Args { input, output, gpu, deterministic })),
        Err(p) => Err(format!("expected an input and an output file, got {} path(s)", p.len())),
    }
}

fn run() -> Result<(), Fail> {
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let problem = input::read(&args.input)?;
    let backend = match args.gpu {
        Some(false) => Backend::Cpu,
        Some(true) => Backend::gpu()?,
        None if gpu_available() => Backend::gpu().unwrap_or_else(|e| {
            eprintln!("attend: the GPU is unusable ({e}): running the CPU reference backend");
            Backend::Cpu
        }),
        None => Backend::Cpu,
    };
    let place = if backend.is_gpu() { format!("GPU {}", backend.describe_device()) } else { "the CPU reference backend".into() };
    println!("attend: {} on {place}", common::shape(&problem.spec));
    match &problem.data {
        Data::Bf16(x) => attend(&backend, &problem, x, &args),
        Data::F16(x) => attend(&backend, &problem, x, &args),
    }
}

fn attend<T: Half>(backend: &Backend, p: &Problem, x: &Inputs<T>, args: &Args) -> Result<(), Fail> {
    let run = backend.forward(&p.spec, x, p.mask.as_deref(), 1)?;
    let o: Vec<u8> = run.o.iter().flat_map(|e| e.to_bits().to_le_bytes()).collect();
    let lse: Vec<u8> = run.lse.iter().flat_map(|e| e.to_le_bytes()).collect();
    let view = |dtype, shape: &[usize], data| TensorView::new(dtype, shape.to_vec(), data).map_err(|e| format!("internal error: {e}"));
    let bytes = |x: &[T]| x.iter().flat_map(|e| e.to_bits().to_le_bytes()).collect::<Vec<u8>>();
    let grads = match &p.d_o {
        None => None,
        Some(bits) => {
            let d_o: Vec<T> = bits.iter().map(|&b| T::from_bits(b)).collect();
            let [dq, dk, dv] = backend.backward(&p.spec, x, &d_o, p.mask.as_deref(), args.deterministic)?;
            Some([bytes(&dq), bytes(&dk), bytes(&dv)])
        }
    };
    let mut tensors = vec![("o", view(T::DTYPE, &p.o_shape, &o)?), ("lse", view(Dtype::F32, &p.lse_shape, &lse)?)];
    if let Some([dq, dk, dv]) = &grads {
        tensors.push(("dq", view(T::DTYPE, &p.o_shape, dq)?));
        tensors.push(("dk", view(T::DTYPE, &p.kv_shape, dk)?));
        tensors.push(("dv", view(T::DTYPE, &p.kv_shape, dv)?));
    }
    let backend_name = if backend.is_gpu() { "gpu" } else { "cpu" };
    let meta = HashMap::from([("backend".to_string(), backend_name.to_string())]);
    safetensors::serialize_to_file(tensors, Some(meta), args.output.as_ref()).map_err(|e| Fail { code: 1, message: format!("cannot write {}: {e}", args.output) })?;
    let also = if grads.is_some() { " and dq, dk, dv" } else { "" };
    println!("attend: {:.3} ms; wrote o {:?} {} and lse {:?} F32{also} to {}", run.ms, p.o_shape, T::NAME, p.lse_shape, args.output);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(fail) => {
            eprintln!("attend: error: {}", fail.message);
            if fail.code == 2 {
                eprintln!("(run `attend --help` for the file format)");
            }
            ExitCode::from(fail.code)
        }
    }
}
