//! A worker binary and how the daemon starts it: its path, the arguments
//! that name its device, whether it emulates the device, and the sandbox
//! it must enter.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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
        cmd.args(&self.device_args);
        cmd
    }

    /// Ask a worker what the device is.
    pub fn probe(&self) -> Result<DeviceInfo, Error> {
        let out = self
            .command()
            .arg("--probe")
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
        serde_json::from_slice(&out.stdout).map_err(Error::ProbeReply)
    }

    /// Start a worker with a `vram`-byte framebuffer, its end of the
    /// daemon's socket at descriptor 3, the ring file and its two doorbells
    /// ([`crate::ring`]: daemon to worker, worker to daemon) at 4, 5 and 6,
    /// and its stderr piped to the daemon.
    pub fn spawn(&self, vram: u64, theirs: OwnedFd, ring: [RawFd; 3]) -> Result<Child, Error> {
        let mut cmd = self.command();
        cmd.args(["--vram", &vram.to_string(), "--fd", "3", "--ring-fd", "4"]);
        match &self.sandbox {
            Some(p) => cmd.args(p.args()),
            None => cmd.arg("--no-sandbox"),
        };
        let fds = [theirs.as_raw_fd(), ring[0], ring[1], ring[2]];
        // SAFETY: between fork and exec only async-signal-safe calls: each
        // descriptor is first copied above 64 (so that no copy to 3..=6
        // closes one still to be copied), then put at 3, 4, 5, 6 (dup2
        // clears close-on-exec on the copy). (No PR_SET_PDEATHSIG: it fires
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
                Ok(())
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
