//! Builds the `no_std` kernels crate twice (sm_80 and sm_90a) and embeds both PTX modules
//! (deflated: every binary that links the library carries them).
//!
//! The nested cargo runs with a cleared environment: the outer cargo exports RUSTC,
//! RUSTUP_TOOLCHAIN and CARGO_ENCODED_RUSTFLAGS, which would pick the wrong toolchain or silently
//! drop the architecture flags. The architecture is checked twice: by `tools/ptx-link` (the CPU
//! rustc was asked for) and here (the `.target` line of the module produced).
use std::{env, fs, path::PathBuf, process::Command};

const ARCHS: [&str; 2] = ["sm_80", "sm_90a"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let kernels = manifest.join("../kernels").canonicalize().expect("kernels/ next to host/");
    let common = manifest.join("../common").canonicalize().expect("common/ next to host/");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for p in [kernels.join("src"), kernels.join("Cargo.toml"), kernels.join(".cargo/config.toml"), kernels.join("tools"), common.join("src")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let keep = ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "TMPDIR"];
    // A profiling build: timeline probes in the Hopper forward, dumped after every launch.
    println!("cargo::rerun-if-env-changed=ATTN_TRACE");
    println!("cargo::rustc-check-cfg=cfg(attn_trace)");
    let trace = env::var_os("ATTN_TRACE").is_some();
    if trace {
        println!("cargo::rustc-cfg=attn_trace");
    }
    for arch in ARCHS {
        let target_dir = out.join(format!("kernels-{arch}"));
        let flags = [
            format!("-Ctarget-cpu={arch}"),
            "-Zunstable-options".into(),
            "-Cpanic=immediate-abort".into(),
            // Fully unroll the fragment loops so register arrays never index at run time.
            "-Cllvm-args=-unroll-threshold=5000".into(),
        ];
        let status = Command::new("cargo")
            .env_clear()
            .envs(env::vars().filter(|(k, _)| keep.contains(&k.as_str())))
            .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
            .env("PTX_REQUIRE_CPU", arch)
            .current_dir(&kernels)
            .args(["build", "--release", "--target", "nvptx64-nvidia-cuda", "--target-dir"])
            .arg(&target_dir)
            .args(if trace { &["--features", "trace"][..] } else { &[] })
            .status()
            .expect("failed to run cargo for the kernels crate");
        assert!(status.success(), "building the {arch} kernels failed");
        let ptx_path = target_dir.join("nvptx64-nvidia-cuda/release/kernels.ptx");
        let ptx = fs::read_to_string(&ptx_path).expect("kernels.ptx missing");
        let target_line = ptx.lines().find(|l| l.starts_with(".target")).unwrap_or("");
        assert_eq!(target_line.trim(), format!(".target {arch}"), "{} was built for the wrong architecture", ptx_path.display());
        fs::write(out.join(format!("kernels_{arch}.ptx.deflate")), miniz_oxide::deflate::compress_to_vec(ptx.as_bytes(), 8)).unwrap();
        fs::write(out.join(format!("kernels_{arch}.ptx")), ptx).unwrap(); // for inspection
    }
}
