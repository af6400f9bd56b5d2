//! A worker binary and how the daemon starts it: its path, the arguments
//! that name its device, whether it emulates the device, the sandbox it
//! must enter and the NUMA node it runs on; and how the daemon asks it
//! which devices the host has (`--gpus`).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::numa::NumaPlacement;
use crate::sandbox::SandboxPolicy;
use crate::Error;

/// How to start one engine's workers.
#[derive(Clone, Debug)]
pub struct WorkerProgram {
    /// The binary (installed beside the daemon's).
    pub path: PathBuf,
    /// Arguments naming the device (`--device 0`), given at every start
    /// and probe.
    pub device_args: Vec<String>,
    /// Run every operation on the cpu engine in the worker (`--emulate`):
    /// the process side tested where there is no device.
    pub emulate: bool,
    /// The confinement the worker enters before its first message; `None`
    /// runs it with the daemon's privileges (measurements only).
    pub sandbox: Option<SandboxPolicy>,
    /// Environment variables set for the worker (beside the daemon's).
    pub env: Vec<(String, String)>,
    /// The device's NUMA node, where the worker runs (`None`: anywhere).
    pub placement: Option<NumaPlacement>,
}

/// The most devices a worker's `--gpus` may list (more is a broken
/// answer, not a host).
pub const MAX_GPUS: usize = 64;

/// One device the host shows, as the worker's `--gpus` lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuInfo {
    /// Its ordinal in the worker's enumeration (CUDA's).
    pub ordinal: u32,
    /// `GPU-6f6e1c2a-3b4d-…`, as `nvidia-smi -L` prints it.
    pub uuid: String,
    /// Its PCI address as the driver reports it (`0000:65:00.0`).
    pub pci_bus_id: String,
    pub name: String,
    pub memory_bytes: u64,
    pub multiprocessors: u32,
}

/// What a device offers, as the worker's `--probe` reports it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub memory_bytes: u64,
    pub multiprocessors: u32,
}

impl WorkerProgram {
    /// The binary `name` beside the running one's (as installed).
    pub fn beside_current_exe(name: &str) -> PathBuf {
        std::env::current_exe()
            .map(|p| p.with_file_name(name))
            .unwrap_or_else(|_| PathBuf::from(name))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.emulate {
            cmd.arg("--emulate");
        }
        cmd
    }

    /// Run the worker with `args` (no device named) and return what it
    /// printed; what it said on stderr when it failed.
    fn ask(&self, args: &[&str]) -> Result<Vec<u8>, Error> {
        let out = self
            .command()
            .args(args)
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| Error::Spawn {
                path: self.path.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Probe(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(out.stdout)
    }

    /// Ask a worker what the device is.
    pub fn probe(&self) -> Result<DeviceInfo, Error> {
        let mut args = vec!["--probe"];
        args.extend(self.device_args.iter().map(String::as_str));
        serde_json::from_slice(&self.ask(&args)?).map_err(Error::ProbeReply)
    }

    /// Ask a worker which devices the host shows (at most [`MAX_GPUS`]).
    pub fn gpus(&self) -> Result<Vec<GpuInfo>, Error> {
        let list: Vec<GpuInfo> =
            serde_json::from_slice(&self.ask(&["--gpus"])?).map_err(Error::ProbeReply)?;
        if list.len() > MAX_GPUS {
            return Err(Error::Malformed("more devices than a host has"));
        }
        Ok(list)
    }

    /// Start a worker with a `vram`-byte framebuffer, its end of the
    /// daemon's socket at descriptor 3, the ring file and its two doorbells
    /// ([`crate::ring`]: daemon to worker, worker to daemon) at 4, 5 and 6,
    /// and its stderr piped to the daemon.
    pub fn spawn(&self, vram: u64, theirs: OwnedFd, ring: [RawFd; 3]) -> Result<Child, Error> {
        let mut cmd = self.command();
        cmd.args(&self.device_args);
        cmd.args(["--vram", &vram.to_string(), "--fd", "3", "--ring-fd", "4"]);
        match &self.sandbox {
            Some(p) => cmd.args(p.args()),
            None => cmd.arg("--no-sandbox"),
        };
        let fds = [theirs.as_raw_fd(), ring[0], ring[1], ring[2]];
        let placement = self.placement.clone();
        // SAFETY: between fork and exec only async-signal-safe calls: each
        // descriptor is first copied above 64 (so that no copy to 3..=6
        // closes one still to be copied), then put at 3, 4, 5, 6 (dup2
        // clears close-on-exec on the copy), and the placement's two system
        // calls on masks made before the fork put the process on its
        // device's node (kept across exec). (No PR_SET_PDEATHSIG: it fires
        // when the forking *thread* ends, and control-socket threads come
        // and go; a worker whose daemon died reads end of file and exits.)
        unsafe {
            cmd.pre_exec(move || {
                let mut high = [0; 4];
                for (h, &fd) in high.iter_mut().zip(&fds) {
                    *h = libc::fcntl(fd, libc::F_DUPFD, 64);
                    if *h < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, &h) in high.iter().enumerate() {
                    if libc::dup2(h, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(h);
                }
                match &placement {
                    Some(p) => p.apply(),
                    None => Ok(()),
                }
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                path: self.path.clone(),
                source,
            })?;
        drop(theirs);
        Ok(child)
    }
}
