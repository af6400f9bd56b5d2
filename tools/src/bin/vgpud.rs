//! vgpud: the vGPU host daemon.
//!
//! With its embedded defaults (one cpu-engine parent, the default vGPU
//! types) it runs the demo workload: two vGPUs driven by in-process guests
//! check every engine class against CPU references, then share the parent
//! under the chosen policy while the measured shares are printed.

use std::process::ExitCode;

use clap::Parser;
use scheduler::{Config, PolicyKind};

#[derive(Parser)]
#[command(version, about = "vgpud: mediated pass-through vGPUs in user space")]
struct Args {
    /// Scheduling policy file (TOML, see docs/config.md); the demo parent's
    /// id is `cpu0`.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Host scheduling policy for the demo parent, overriding the file:
    /// best_effort, equal_share, fixed_share or weighted. Default, without
    /// a file: fixed_share.
    #[arg(long)]
    policy: Option<String>,
    /// Seconds of shared spin load in the demo.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VGPUD_LOG").unwrap_or_else(|_| "warn".into())).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vgpud: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let policy = match (&args.policy, &args.config) {
        (Some(name), _) => match PolicyKind::from_name(name) {
            Some(p) => Some(p),
            None => {
                eprintln!("vgpud: unknown policy {name:?} (best_effort, equal_share, fixed_share, weighted)");
                return ExitCode::from(2);
            }
        },
        (None, Some(_)) => None,
        (None, None) => Some(PolicyKind::FixedShare),
    };
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        eprintln!("vgpud: --seconds must be in (0, 3600]");
        return ExitCode::from(2);
    }
    let shown = policy.unwrap_or(config.parent_policy(tools::demo::PARENT).kind);
    println!("vgpud demo: parent {} (cpu engine), policy {}", tools::demo::PARENT, shown.name());
    match tools::demo::run_with(&config, policy, args.seconds) {
        Ok(r) => {
            println!("{} correctness checks passed", r.checks_passed);
            println!("{:<10} {:>10} {:>10} {:>9}", "type", "configured", "achieved", "commands");
            for (id, conf, got, cmds) in &r.shares {
                let conf = if conf.is_nan() { "-".to_string() } else { format!("{conf:.3}") };
                println!("{id:<10} {conf:>10} {got:>10.3} {cmds:>9}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vgpud demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
