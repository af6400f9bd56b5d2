//! The guest CUDA library (`tools/guest-cuda`, `libcuda.so.1`) driving a vGPU of the cpu
//! engine over vfio-user, as unmodified programs use it: a C program linked against it
//! (`tools/guest-cuda/tests/c/driver_api.c`) and a Python program through `ctypes`
//! (`tools/guest-cuda/tests/python/driver_api.py`). cargo builds the library next to this
//! test (a dev-dependency, as `libvgpu_cuda.so`); the C compiler and python3 come with the machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use devmodel::CpuEngine;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-cuda")
}

/// A directory with `libcuda.so.1` and `libcuda.so` pointing at the library cargo built.
fn library_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let built = exe.parent().expect("deps dir").join("libvgpu_cuda.so");
    assert!(built.exists(), "{} was not built", built.display());
    let dir = std::env::temp_dir().join(format!("vgpu-cuda-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for link in ["libcuda.so.1", "libcuda.so"] {
        std::os::unix::fs::symlink(&built, dir.join(link)).unwrap();
    }
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    text
}

const VRAM: u64 = 128 << 20;

fn check_passes(text: &str, at_least: u32) {
    let pass = text
        .lines()
        .find_map(|l| l.strip_prefix("PASS "))
        .expect("a PASS line");
    let n: u32 = pass.split_whitespace().next().unwrap().parse().unwrap();
    assert!(n >= at_least, "only {n} checks ran");
}

#[test]
fn a_c_program_linked_against_libcuda_runs_on_a_cpu_engine_vgpu() {
    let lib = library_dir("c");
    let src = crate_dir().join("tests/c");
    let exe = lib.join("driver_api");
    run(Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(src.join("driver_api.c"))
        .arg("-I")
        .arg(&src)
        .arg("-L")
        .arg(&lib)
        .args(["-lcuda", "-ldl"]));
    let engine = CpuEngine::new(2).unwrap();
    let served = common::serve_with(&engine, "cuda-c", VRAM, 4);
    let text = run(Command::new(&exe)
        .arg(crate_dir().join("api/proc_table.tsv"))
        .env("LD_LIBRARY_PATH", &lib)
        .env("VGPU_SOCKET", served.socket())
        .env("VGPU_TEST_VRAM", VRAM.to_string()));
    check_passes(&text, 1500);
    assert!(text.contains("cuGetProcAddress resolves"));
    let _ = std::fs::remove_dir_all(&lib);
}

#[test]
fn a_python_ctypes_program_runs_on_a_cpu_engine_vgpu() {
    let lib = library_dir("py");
    let engine = CpuEngine::new(2).unwrap();
    let served = common::serve_with(&engine, "cuda-py", VRAM, 2);
    let text = run(Command::new("python3")
        .arg(crate_dir().join("tests/python/driver_api.py"))
        .env("LD_LIBRARY_PATH", &lib)
        .env("VGPU_SOCKET", served.socket())
        .env("VGPU_TEST_VRAM", VRAM.to_string()));
    check_passes(&text, 45);
    let _ = std::fs::remove_dir_all(&lib);
}

#[test]
fn a_second_process_is_turned_away_while_one_owns_the_vgpu() {
    let lib = library_dir("second");
    let engine = CpuEngine::new(2).unwrap();
    let served = common::serve_with(&engine, "cuda-two", VRAM, 2);
    let script = crate_dir().join("tests/python/hold.py");
    let mut holder = Command::new("python3")
        .arg(&script)
        .arg("hold")
        .env("LD_LIBRARY_PATH", &lib)
        .env("VGPU_SOCKET", served.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "holding", "the first process initialised");
    let t = std::time::Instant::now();
    let text = run(Command::new("python3")
        .arg(&script)
        .arg("try")
        .env("LD_LIBRARY_PATH", &lib)
        .env("VGPU_SOCKET", served.socket()));
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "no hang");
    assert!(
        text.contains("cuInit = 46 CUDA_ERROR_DEVICE_UNAVAILABLE"),
        "{text}"
    );
    holder.kill().unwrap();
    let _ = holder.wait();
    let _ = std::fs::remove_dir_all(&lib);
    let _: &Path = &lib;
}
