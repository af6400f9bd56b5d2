//! The policy file: loading from disk, errors, and no panic on any input.
use proptest::prelude::*;
use scheduler::{Config, Error, PolicyKind};

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("vgpud-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sched.toml");
    std::fs::write(
        &path,
        "[parent.gpu0]\npolicy = \"equal_share\"\n\n[type.t]\nweight = 0\n",
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}:5:", path.display())), "{msg}");
    assert!(msg.contains("type.t.weight"), "{msg}");
    std::fs::write(&path, "[parent.gpu0]\npolicy = \"equal_share\"\n").unwrap();
    assert_eq!(
        Config::load(&path).unwrap().parent_policy("gpu0").kind,
        PolicyKind::EqualShare
    );
    assert!(matches!(
        Config::load(dir.join("missing.toml")),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = Config::parse(&s, "fuzz.toml");
    }

    #[test]
    fn toml_shaped_text_never_panics(
        sect in prop::sample::select(vec!["default", "parent.a", "type.t", "vgpu.\"aa618089-8b16-4d01-a136-25a0f3c73123\"", "x"]),
        key in prop::sample::select(vec!["policy", "timeslice", "window", "averaging_factor", "weight", "cap", "reservation", "class", "zz"]),
        val in prop::sample::select(vec!["\"2ms\"", "\"0ms\"", "-1", "0x7fffffffffffffff", "1e309", "nan", "\"50%\"", "\"fixed_share\"", "[1,2]", "{a=1}", "true", "\"latency\"", "0.5", "1979-05-27", "\"\u{00b5}s\"", "\"1\u{00e9}ms\""]),
    ) {
        let text = format!("[{sect}]\n{key} = {val}\n");
        if let Ok(c) = Config::parse(&text, "f.toml") {
            let _ = c.parent_policy("a");
            let _ = c.vgpu_params("aa618089-8b16-4d01-a136-25a0f3c73123", "t", 4);
        }
    }
}
