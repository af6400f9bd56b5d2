//! Generates, from the committed lists in `api/` (made from NVIDIA's headers by
//! `api/generate.py`):
//!
//! * `stubs.rs`: an exported function for every driver API symbol that `src/api/` does not
//!   implement, returning `CUDA_ERROR_NOT_SUPPORTED` (loaders `dlsym` names they never call);
//! * `symbols.rs`: the address of every exported symbol by name, for `cuGetProcAddress`;
//! * `proc_table.rs`: `cuGetProcAddress`'s (name, version, flavour) → symbol table;
//! * `errors.rs`: every `CUresult` with its name and text.
//!
//! It also gives the library its SONAME, `libcuda.so.1`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rerun-if-changed=api");
    println!("cargo:rerun-if-changed=src/api");

    // Functions src/api/<module>.rs defines with `cuda_fn!` / `cuda_fn_noinit!`.
    let mut implemented: BTreeMap<String, String> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("src/api"))
        .expect("src/api")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for path in files {
        let module = path.file_stem().unwrap().to_string_lossy().into_owned();
        if module == "mod" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read src/api");
        for line in text.lines() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix("fn cu") {
                let name: String = std::iter::once('c')
                    .chain(std::iter::once('u'))
                    .chain(
                        rest.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_'),
                    )
                    .collect();
                implemented.insert(name, module.clone());
            }
        }
    }

    let exports = std::fs::read_to_string(dir.join("api/exports.txt")).expect("api/exports.txt");
    let exports: Vec<&str> = exports.lines().filter(|l| !l.is_empty()).collect();
    for name in implemented.keys() {
        assert!(
            exports.contains(&name.as_str()),
            "src/api implements {name}, which is not a driver API export"
        );
    }
    let mut stubs = String::new();
    let mut symbols = String::from(
        "/// The address of exported driver API symbol `name`.\n\
         pub fn symbol(name: &[u8]) -> Option<*const std::ffi::c_void> {\n    \
         Some(match name {\n",
    );
    for name in &exports {
        match implemented.get(*name) {
            Some(module) => writeln!(
                symbols,
                "        b\"{name}\" => crate::api::{module}::{name} as *const std::ffi::c_void,"
            ),
            None => {
                writeln!(
                    stubs,
                    "/// Not implemented by this driver: returns `CUDA_ERROR_NOT_SUPPORTED`.\n\
                     #[no_mangle]\n\
                     pub extern \"C\" fn {name}() -> crate::types::CUresult {{\n    \
                     crate::unsupported(\"{name}\")\n}}"
                )
                .unwrap();
                writeln!(
                    symbols,
                    "        b\"{name}\" => crate::stubs::{name} as *const std::ffi::c_void,"
                )
            }
        }
        .unwrap();
    }
    symbols.push_str("        _ => return None,\n    })\n}\n");
    writeln!(
        symbols,
        "/// Every exported driver API symbol.\npub const EXPORTS: [&str; {}] = {:?};",
        exports.len(),
        exports
    )
    .unwrap();
    std::fs::write(out.join("stubs.rs"), stubs).expect("write stubs.rs");
    std::fs::write(out.join("symbols.rs"), symbols).expect("write symbols.rs");

    let table = std::fs::read_to_string(dir.join("api/proc_table.tsv")).expect("proc_table.tsv");
    let mut rows = String::from("&[\n");
    for line in table.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "proc_table.tsv: {line}");
        let flavour = match f[2] {
            "-" => "Flavour::Default",
            "ptds" => "Flavour::Ptds",
            "ptsz" => "Flavour::Ptsz",
            other => panic!("proc_table.tsv: flavour {other}"),
        };
        writeln!(
            rows,
            "    ProcEntry {{ name: {:?}, version: {}, flavour: {flavour}, symbol: {:?} }},",
            f[0], f[1], f[3]
        )
        .unwrap();
    }
    rows.push(']');
    std::fs::write(out.join("proc_table.rs"), rows).expect("write proc_table.rs");

    let errors = std::fs::read_to_string(dir.join("api/errors.tsv")).expect("errors.tsv");
    let mut rows = String::from("&[\n");
    for line in errors.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.splitn(3, '\t').collect();
        assert_eq!(f.len(), 3, "errors.tsv: {line}");
        writeln!(rows, "    ({}, c{:?}, c{:?}),", f[0], f[1], f[2]).unwrap();
    }
    rows.push(']');
    std::fs::write(out.join("errors.rs"), rows).expect("write errors.rs");
}
