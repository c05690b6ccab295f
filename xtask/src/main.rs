//! Repository chores that need several cargo/tool invocations (run through the `cargo xtask` alias):
//!
//!   cargo xtask ptx [--ptxas PATH]   build both PTX modules, run ptxas -v, fail on spills/stack in attn_*
//!   cargo xtask bundle               copy release test binaries, examples and bins into bundle/
//!   cargo xtask bench                a bundle/ with attn-bench, peers.py and bench.sh (runs every benchmark on the GPU)
//!   cargo xtask bench-report DIR     DIR/table.md and PNG charts from the JSON lines that bench.sh wrote
mod report;

use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    env, fs, io,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

const USAGE: &str = "usage: cargo xtask ptx [--ptxas PATH] | cargo xtask bundle | cargo xtask bench | cargo xtask bench-report DIR";
/// Must match host/build.rs: the host embeds one module per architecture.
const ARCHS: [&str; 2] = ["sm_80", "sm_90a"];
/// 13.0 is the CUDA version of the device machines' driver (580), so its ptxas judges what they will JIT.
const NVCC_WHEEL: &str = "nvidia-cuda-nvcc==13.0.88";
/// Disassemble the sm_90a cubin for the SASS check (any 13.x reads sm_90a; cuobjdump runs nvdisasm).
const DISASM_WHEELS: [&str; 2] = ["nvidia-cuda-cuobjdump==13.5.37", "nvidia-cuda-nvdisasm==13.5.37"];
/// What one transfer to the device machine may carry.
const BUNDLE_LIMIT: u64 = 64 << 20;

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let res = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ptx"] => ptx(None),
        ["ptx", "--ptxas", p] => ptx(Some(PathBuf::from(p))),
        ["ptx", a] if a.starts_with("--ptxas=") => ptx(Some(PathBuf::from(&a["--ptxas=".len()..]))),
        ["bundle"] => bundle(),
        ["bench"] => bench(),
        ["bench-report", dir] => report::bench_report(Path::new(dir)),
        _ => Err(USAGE.into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root; xtask is always built from its place in the tree.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Result {
    let status = cmd.status().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed ({status})")) }
}

// ---------------------------------------------------------------------------------------------
// ptx

/// The nested kernel build, exactly as host/build.rs runs it. The environment is cleared because the
/// outer cargo/rustup export RUSTC, RUSTUP_TOOLCHAIN and CARGO_ENCODED_RUSTFLAGS, which would pick the
/// wrong toolchain or drop the architecture flags; the cwd must be kernels/ so that its
/// .cargo/config.toml and the toolchain file apply.
fn kernel_build(kernels: &Path, arch: &str, target_dir: &Path) -> Command {
    let keep = ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "TMPDIR"];
    let flags = [
        format!("-Ctarget-cpu={arch}"),
        "-Zunstable-options".into(),
        "-Cpanic=immediate-abort".into(),
        // Fully unroll the fragment loops so register arrays never index at run time.
        "-Cllvm-args=-unroll-threshold=5000".into(),
    ];
    let mut cmd = Command::new("cargo");
    cmd.env_clear()
        .envs(env::vars().filter(|(k, _)| keep.contains(&k.as_str())))
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env("PTX_REQUIRE_CPU", arch)
        .current_dir(kernels)
        .args(["build", "--release", "--target", "nvptx64-nvidia-cuda", "--target-dir"])
        .arg(target_dir);
    cmd
}

/// What ptxas -v says about one function.
#[derive(Default)]
struct Usage {
    regs: u32,
    spill_st: u32,
    spill_ld: u32,
    stack: u32,
    smem: u32,
    /// Both the "stack frame" and the "Used ... registers" line were found.
    props: bool,
    used: bool,
}

fn ptx(ptxas: Option<PathBuf>) -> Result {
    let root = root();
    let out_dir = root.join("target/ptx");
    fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut modules = vec![];
    for arch in ARCHS {
        let target_dir = root.join(format!("target/kernels-{arch}"));
        eprintln!("xtask: building kernels for {arch}");
        run(&mut kernel_build(&root.join("kernels"), arch, &target_dir))?;
        let built = target_dir.join("nvptx64-nvidia-cuda/release/kernels.ptx");
        let text = fs::read_to_string(&built).map_err(|e| format!("{}: {e}", built.display()))?;
        // ptxas 13 would also reject a stray sm_70 module, but only this names the cause.
        let target = text.lines().find(|l| l.starts_with(".target")).unwrap_or("").trim();
        if target != format!(".target {arch}") {
            return Err(format!("{} says '{target}', expected {arch}", built.display()));
        }
        let dest = out_dir.join(format!("kernels_{arch}.ptx"));
        fs::write(&dest, &text).map_err(|e| format!("{}: {e}", dest.display()))?;
        modules.push((arch, dest, text));
    }

    let ptxas = match ptxas {
        Some(p) => p,
        None => find_ptxas(&root).map_or_else(|| install_ptxas(&root), Ok)?,
    };
    let mut failures = vec![];
    let mut rows = vec![];
    for (arch, path, text) in &modules {
        let out = Command::new(&ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-v")
            .arg(path)
            .arg("-o")
            .arg(path.with_extension("cubin"))
            .output()
            .map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
        let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            eprint!("{report}");
            failures.push(format!("ptxas failed on {} ({})", path.display(), out.status));
            continue;
        }
        // Warnings matter even when ptxas succeeds; serialised wgmma (C7514, C7517 and kin:
        // ptxas inserting waits around every product) fails the check. Some of those come as
        // `info` lines, not warnings (C7518: a wait ptxas put in a path it thinks divergent).
        for l in report.lines().filter(|l| l.contains("warning") || l.contains("Performance Loss")) {
            eprintln!("{arch}: {l}");
            if l.contains("wgmma") || l.contains("C751") {
                failures.push(format!("{arch}: {l}"));
            }
        }
        if *arch == "sm_90a" {
            match cuobjdump(&root, &ptxas) {
                Ok(tool) => failures.extend(check_hopper_sass(&tool, &path.with_extension("cubin"))),
                Err(e) => failures.push(e),
            }
        }
        let (mut entries, usage) = parse_ptxas(&report);
        entries.sort(); // ptxas reports them in reverse; by name the two modules line up
        // Guards the parser: every entry in the PTX must show up in the report. Names are collected
        // into a set because LLVM declares each entry twice (a prototype, then the definition).
        let in_ptx: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.split(".entry ").nth(1).filter(|_| !l.trim_start().starts_with("//")))
            .filter_map(|rest| rest.split(|c: char| c == '(' || c.is_whitespace()).next())
            .collect();
        for missing in in_ptx.iter().filter(|n| !entries.iter().any(|e| e == *n)) {
            failures.push(format!("{arch} {missing}: entry missing from the ptxas report"));
        }
        for name in entries {
            let u = &usage[&name];
            if name.starts_with("attn_") {
                if !(u.props && u.used) {
                    failures.push(format!("{arch} {name}: incomplete ptxas report"));
                } else if u.spill_st + u.spill_ld + u.stack > 0 {
                    failures.push(format!(
                        "{arch} {name}: {} B spill stores, {} B spill loads, {} B stack frame",
                        u.spill_st, u.spill_ld, u.stack
                    ));
                }
            }
            rows.push((arch, [u.regs, u.spill_st, u.spill_ld, u.stack, u.smem], name));
        }
        println!(
            "{arch}: {} ld.local, {} st.local in {}",
            text.matches("ld.local").count(),
            text.matches("st.local").count(),
            path.strip_prefix(&root).unwrap_or(path).display()
        );
    }

    let w = rows.iter().map(|r| r.2.len()).max().unwrap_or(5).max(5);
    println!("{:<7} {:<w$} {:>5} {:>9} {:>9} {:>6} {:>6}", "module", "entry", "regs", "spill-st", "spill-ld", "stack", "smem");
    for (arch, [r, ss, sl, st, sm], name) in &rows {
        println!("{arch:<7} {name:<w$} {r:>5} {ss:>9} {sl:>9} {st:>6} {sm:>6}");
    }
    println!("(spills, stack and static smem in bytes; test_* entries are experiments and never fail)");
    if failures.is_empty() {
        return Ok(());
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    Err(format!("{} problem(s) in the PTX modules", failures.len()))
}

/// The Hopper entries must really use the Hopper instructions: HGMMA (wgmma) and UTMALDG (TMA
/// loads) in each one's SASS.
fn check_hopper_sass(cuobjdump: &Path, cubin: &Path) -> Vec<String> {
    // cuobjdump finds nvdisasm through PATH.
    let path = std::env::join_paths(cuobjdump.parent().into_iter().map(Path::to_path_buf).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())));
    let out = match Command::new(cuobjdump).arg("-sass").arg(cubin).env("PATH", path.unwrap_or_default()).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => return vec![format!("cannot disassemble {} with {}", cubin.display(), cuobjdump.display())],
    };
    let mut failures = vec![];
    let mut found = 0;
    for func in out.split("Function : ").skip(1) {
        let name = func.split_whitespace().next().unwrap_or("");
        if !name.contains("_hopper_") {
            continue;
        }
        found += 1;
        for op in ["HGMMA", "UTMALDG"] {
            if !func.contains(op) {
                failures.push(format!("sm_90a {name}: no {op} in its SASS"));
            }
        }
        // Serialised products show as a wait behind every HGMMA; the kernels wait once per
        // commit group (8 or 16 products), so more than a wait per four products means ptxas
        // serialised them, whatever it printed.
        let (products, waits) = (func.matches("HGMMA").count(), func.matches("WARPGROUP.DEPBAR").count());
        if 4 * waits > products {
            failures.push(format!("sm_90a {name}: {waits} wgmma waits for {products} HGMMA: products serialised"));
        }
    }
    if found == 0 {
        failures.push("sm_90a: no *_hopper_* function in the SASS".into());
    }
    println!("sm_90a: {found} Hopper entries checked for HGMMA, UTMALDG and unserialised products");
    failures
}

/// Entry names in report order, and the usage of every function the report mentions.
fn parse_ptxas(report: &str) -> (Vec<String>, BTreeMap<String, Usage>) {
    // A number is the last word before its unit: "Used 168 registers", "0 bytes stack frame".
    fn num(line: &str, unit: &str) -> u32 {
        line.find(unit)
            .and_then(|i| line[..i].split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
    let (mut entries, mut usage) = (vec![], BTreeMap::<String, Usage>::new());
    let mut cur = String::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            cur = rest.split('\'').next().unwrap_or("").to_string();
            entries.push(cur.clone());
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            cur = rest.trim().to_string();
        } else if line.contains(" bytes stack frame") {
            let u = usage.entry(cur.clone()).or_default();
            u.stack = num(line, " bytes stack frame");
            u.spill_st = num(line, " bytes spill stores");
            u.spill_ld = num(line, " bytes spill loads");
            u.props = true;
        } else if line.contains(" registers") && line.contains("Used ") {
            let u = usage.entry(cur.clone()).or_default();
            u.regs = num(line, " registers");
            u.smem = num(line, " bytes smem");
            u.used = true;
        }
    }
    for e in &entries {
        usage.entry(e.clone()).or_default();
    }
    (entries, usage)
}

/// ptxas from the pip venv under .tools/ (git-ignored); the python minor version is not known in advance.
fn find_ptxas(root: &Path) -> Option<PathBuf> {
    find_tool(root, "ptxas")
}

/// A tool of the CUDA wheels in the venv under .tools/.
fn find_tool(root: &Path, name: &str) -> Option<PathBuf> {
    fs::read_dir(root.join(".tools/nvvenv/lib"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3."))
        .map(|e| e.path().join("site-packages/nvidia/cu13/bin").join(name))
        .find(|p| p.is_file())
}

/// cuobjdump (for the SASS check), with nvdisasm beside it: next to the given ptxas, else from
/// the venv under .tools/, installed there on first use.
fn cuobjdump(root: &Path, ptxas: &Path) -> Result<PathBuf> {
    let usable = |p: PathBuf| (p.is_file() && p.with_file_name("nvdisasm").is_file()).then_some(p);
    if let Some(p) = usable(ptxas.with_file_name("cuobjdump")).or_else(|| find_tool(root, "cuobjdump").and_then(usable)) {
        return Ok(p);
    }
    let venv = root.join(".tools/nvvenv");
    if !venv.join("bin/pip").is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    eprintln!("xtask: installing {DISASM_WHEELS:?} into .tools/nvvenv");
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--no-deps"]).args(DISASM_WHEELS))?;
    find_tool(root, "cuobjdump").and_then(usable).ok_or_else(|| "cuobjdump/nvdisasm not found in .tools/nvvenv after installing".into())
}

fn install_ptxas(root: &Path) -> Result<PathBuf> {
    eprintln!("xtask: installing ptxas ({NVCC_WHEEL}) into .tools/nvvenv");
    let venv = root.join(".tools/nvvenv");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    // --no-deps: ptxas is static; the wheel's dependencies (crt, runtime, nvvm) would only add ~230 MB.
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--no-deps", NVCC_WHEEL]))?;
    find_ptxas(root).ok_or_else(|| "ptxas not found in .tools/nvvenv after installing".into())
}

// ---------------------------------------------------------------------------------------------
// bundle

fn bundle() -> Result {
    let root = root();
    // xtask runs on this machine only; excluding it also keeps it out of the build.
    let ws = ["--release", "--workspace", "--exclude", "xtask"];
    let tests = executables(&root, "test", &ws, &["--no-run"], |a| a["profile"]["test"] == true)?;
    let others = executables(&root, "build", &ws, &["--examples", "--bins"], |a| {
        a["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin" || k == "example"))
    })?;

    let dir = fresh_bundle_dir(&root)?;
    let mut names = vec![];
    for (sub, exes) in [("tests", &tests), ("bin", &others)] {
        for (kind, exe) in exes {
            // Examples and bins may share a name, tests carry cargo's hash suffix and are unique.
            let sub = if sub == "bin" && kind == "example" { "examples" } else { sub };
            let rel = format!("{sub}/{}", exe.file_name().unwrap().to_string_lossy());
            copy_stripped(exe, &dir.join(&rel))?;
            if sub == "tests" {
                names.push(rel);
            }
        }
    }
    let list: String = names.iter().map(|n| format!("  '{n}'\n")).collect();
    let script = format!(
        r#"#!/usr/bin/env bash
# Written by `cargo xtask bundle`. Runs every test binary, one after another; extra arguments go to
# each binary (e.g. a test name filter). Exits non-zero if any binary failed.
set -uo pipefail
cd "$(dirname "${{BASH_SOURCE[0]}}")"
tests=(
{list})
failed=()
for t in "${{tests[@]}}"; do
  echo "===== $t ====="
  "./$t" --test-threads=1 "$@" || failed+=("$t")
done
if [ ${{#failed[@]}} -gt 0 ]; then
  echo "FAILED: ${{failed[*]}}" >&2
  exit 1
fi
echo "all ${{#tests[@]}} test binaries passed"
"#
    );
    let run_sh = dir.join("run.sh");
    fs::write(&run_sh, script).map_err(|e| format!("{}: {e}", run_sh.display()))?;
    run(Command::new("chmod").arg("+x").arg(&run_sh))?;

    check_size(&dir, &format!("{} test binaries, {} examples/bins", names.len(), others.len()))
}

/// An empty bundle/ (a previous one is removed).
fn fresh_bundle_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("bundle");
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(format!("{}: {e}", dir.display())),
        _ => {}
    }
    Ok(dir)
}

/// Prints what bundle/ holds and fails if it is too large to carry to the device machine.
fn check_size(dir: &Path, what: &str) -> Result {
    let (count, bytes) = dir_size(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!("bundle/: {what}, {count} files, {:.1} MiB", bytes as f64 / (1 << 20) as f64);
    if bytes > BUNDLE_LIMIT {
        return Err(format!("bundle/ is {bytes} bytes, over the {BUNDLE_LIMIT}-byte device transfer limit"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// bench

/// What bundle/bench.sh does; `cargo xtask bench` writes it next to the binaries.
const BENCH_SH: &str = r#"#!/usr/bin/env bash
# Written by `cargo xtask bench`. Times our kernels (bin/attn-bench) and the peers (peers.py: PyTorch
# SDPA flash and cuDNN, FlexAttention) on the same workloads, lengths and masks, on GPU 0:
#
#   bench.sh [DIR] [ARGS...]
#
# writes DIR/results/ours.jsonl, DIR/results/peers.jsonl and their logs (DIR defaults to
# bench-results). ARGS go to both programs: --lens 1024,2048 --causal true|false|both --iters N
# --only SUBSTR --warmup-ms N --cool-ms N (default: every workload, S from 1k to 128k, both causal modes,
# 20 iterations, and --cool-ms 1000 --warmup-ms 25: the GPU idles a second before each workload, so
# that none is timed in the wake of the one before and the table does not depend on the order, then
# each workload runs at least 25 ms before it is timed, so that the host and the GPU are awake again
# (without it, a few short workloads timed right after the idle second took several times longer);
# --cool-ms 0 runs them back to back, --warmup-ms N warms up longer).
# OURS=0 or PEERS=0 skips one side; PYTHON names the interpreter that has torch (default python3).
# Then, on any machine: cargo xtask bench-report DIR (reads every *.jsonl under DIR).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in
  "" | -*) dir=bench-results ;;   # no DIR: the arguments are all for the programs
  *) dir="$1"; shift ;;
esac
mkdir -p "$dir/results"
# attn-bench writes the workloads and their block masks here; peers.py reads the same files.
masks="$(mktemp -d "${TMPDIR:-/tmp}/attn-bench-masks.XXXXXX")"
trap 'rm -rf "$masks"' EXIT
nvidia-smi > "$dir/results/nvidia-smi.txt" 2>&1 || true
failed=0
"$here/bin/attn-bench" --dump-masks "$masks" --dump-only "$@" || failed=1
# The default idle time and warm-up, each dropped where ARGS give their own.
cool=(--cool-ms 1000)
warm=(--warmup-ms 25)
for a in "$@"; do
  [ "$a" = --cool-ms ] && cool=()
  [ "$a" = --warmup-ms ] && warm=()
done
defaults=("${cool[@]}" "${warm[@]}")
if [ "${OURS:-1}" != 0 ]; then
  "$here/bin/attn-bench" --json "$dir/results/ours.jsonl" "${defaults[@]}" "$@" 2>&1 | tee "$dir/results/ours.log" || failed=1
fi
if [ "${PEERS:-1}" != 0 ]; then
  PYTHONUNBUFFERED=1 "${PYTHON:-python3}" "$here/peers.py" --masks "$masks" --json "$dir/results/peers.jsonl" "${defaults[@]}" "$@" 2>&1 \
    | tee "$dir/results/peers.log" || failed=1
fi
echo "results in $dir/results (bench.sh: $([ $failed = 0 ] && echo ok || echo 'a step failed'))"
exit $failed
"#;

/// A bundle/ with what a benchmark run needs on the GPU machine: bin/attn-bench, peers.py, peers_bwd.py (and their
/// CPU check) and bench.sh. Only attn-bench is built, to keep the transfer small (every binary
/// embeds both PTX modules); `cargo xtask bundle` carries the tests, the suite and the examples.
fn bench() -> Result {
    let root = root();
    let bins = executables(&root, "build", &["--release", "--package", "attn-bench"], &["--bins"], |a| {
        a["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"))
    })?;
    let dir = fresh_bundle_dir(&root)?;
    for (_, exe) in &bins {
        copy_stripped(exe, &dir.join("bin").join(exe.file_name().unwrap()))?;
    }
    for file in ["peers.py", "peers_bwd.py", "check_peers.py"] {
        fs::copy(root.join("benches").join(file), dir.join(file)).map_err(|e| format!("copying benches/{file}: {e}"))?;
    }
    let script = dir.join("bench.sh");
    fs::write(&script, BENCH_SH).map_err(|e| format!("{}: {e}", script.display()))?;
    run(Command::new("chmod").arg("+x").arg(&script))?;
    check_size(&dir, "attn-bench, peers.py, bench.sh")?;
    println!("on the GPU machine: bundle/bench.sh DIR [ARGS]; then here: cargo xtask bench-report DIR");
    Ok(())
}

/// Runs `cargo SUB ARGS --message-format=...` and returns (target kind, executable) of the artifacts
/// that `keep` accepts, sorted by file name so that run.sh's order does not depend on build scheduling.
fn executables(root: &Path, sub: &str, ws: &[&str], args: &[&str], keep: impl Fn(&Value) -> bool) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or("cargo".into()));
    // json-render-diagnostics: the artifact messages as JSON, compiler errors still readable on stderr.
    cmd.current_dir(root).arg(sub).args(ws).args(args).arg("--message-format=json-render-diagnostics");
    let out = cmd.stderr(Stdio::inherit()).output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({})", out.status));
    }
    let mut exes = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" || !keep(&msg) {
            continue;
        }
        if let Some(exe) = msg["executable"].as_str() {
            let kind = msg["target"]["kind"][0].as_str().unwrap_or("").to_string();
            exes.push((kind, PathBuf::from(exe)));
        }
    }
    exes.sort_by(|a, b| a.1.file_name().cmp(&b.1.file_name()));
    exes.dedup();
    Ok(exes)
}

/// Copies without debug info (release keeps line tables, several MiB per binary); the symbol table
/// stays, so backtraces still name functions. Falls back to a plain copy where `strip` is missing.
fn copy_stripped(src: &Path, dest: &Path) -> Result {
    fs::create_dir_all(dest.parent().unwrap()).map_err(|e| format!("{}: {e}", dest.display()))?;
    let stripped = Command::new("strip").arg("--strip-debug").arg("-o").arg(dest).arg(src).status();
    if !matches!(stripped, Ok(s) if s.success()) {
        eprintln!("xtask: could not strip {}, copying it as is", src.display());
        fs::copy(src, dest).map_err(|e| format!("{} -> {}: {e}", src.display(), dest.display()))?;
    }
    Ok(())
}

fn dir_size(dir: &Path) -> io::Result<(usize, u64)> {
    let (mut n, mut bytes) = (0, 0);
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            let (n2, b2) = dir_size(&e.path())?;
            (n, bytes) = (n + n2, bytes + b2);
        } else {
            (n, bytes) = (n + 1, bytes + e.metadata()?.len());
        }
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_ptxas_report() {
        let report = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'attn_a' for 'sm_90a'
ptxas info    : Function properties for helper
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for attn_a
    24 bytes stack frame, 20 bytes spill stores, 52 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 24 bytes cumulative stack size, 4096 bytes smem, 584 bytes cmem[0]
ptxas info    : Compile time = 1.0 ms
ptxas info    : Compiling entry function 'test_b' for 'sm_90a'
ptxas info    : Function properties for test_b
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 30 registers, used 0 barriers, 392 bytes cmem[0]
";
        let (entries, usage) = super::parse_ptxas(report);
        assert_eq!(entries, ["attn_a", "test_b"]);
        let a = &usage["attn_a"];
        assert_eq!([a.regs, a.spill_st, a.spill_ld, a.stack, a.smem], [255, 20, 52, 24, 4096]);
        let b = &usage["test_b"];
        assert_eq!([b.regs, b.spill_st, b.spill_ld, b.stack, b.smem], [30, 0, 0, 0, 0]);
        assert!(a.props && a.used && b.props && b.used);
        assert_eq!(usage["helper"].stack, 16);
    }
}
