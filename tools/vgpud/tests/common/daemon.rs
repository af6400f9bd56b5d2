//! The vgpud binary under test: started in a directory of its own with a
//! configuration file, asked over its control socket, killed at the end.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_guest::programs::Program;
use vgpu_guest::transport::vfio_user::VfioUserTransport;
use vgpu_guest::{Channel, ChannelConfig, Device, ErrorCode, Placement, WaitMode};

/// A new client on `socket` fills a page with `value` and reads it back:
/// Ok when the work completed with the page right, else the channel's
/// error code.
pub fn fill_once(socket: &std::path::Path, value: u32) -> Result<(), Option<ErrorCode>> {
    let mut dev = connect(socket, 16 << 20).expect("a new client connects");
    let mut ch = Channel::new(&mut dev, 0, ChannelConfig::default()).expect("a channel");
    let buf = dev.alloc(Placement::Sysmem, 4096).unwrap();
    let fill = Program::Fill {
        dst: buf.va(),
        count: 1024,
        value,
    };
    let f = ch.launch(&mut dev, &fill).unwrap();
    match ch.wait(&mut dev, f, WaitMode::Interrupt, Duration::from_secs(10)) {
        Ok(()) => {
            assert_eq!(buf.host().unwrap().read_u32(0).unwrap(), value);
            assert_eq!(buf.host().unwrap().read_u32(4092).unwrap(), value);
            Ok(())
        }
        Err(_) => Err(ch.status(&mut dev).unwrap().error),
    }
}

/// The guest driver on a vGPU's socket, as a VMM with `ram` bytes of guest
/// RAM attaches it.
pub fn connect(socket: &std::path::Path, ram: u64) -> vgpu_guest::Result<Device> {
    Device::open(Box::new(VfioUserTransport::connect(socket, ram)?))
}

pub struct Vgpud {
    pub child: Child,
    pub dir: PathBuf,
}

impl Vgpud {
    /// vgpud with `config` as its configuration file and `env` added to its
    /// environment; returns once its control socket answers.
    pub fn start(name: &str, config: &str, env: &[(&str, &str)]) -> Vgpud {
        let dir = std::env::temp_dir().join(format!("vgpud-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vgpud.toml"), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vgpud"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--config")
            .arg(dir.join("vgpud.toml"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("vgpud.log")).expect("vgpud's log"))
            .spawn()
            .expect("start vgpud");
        let v = Vgpud { child, dir };
        let t = Instant::now();
        while UnixStream::connect(v.control()).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "no control socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        v
    }

    pub fn control(&self) -> PathBuf {
        self.dir.join("run/control.sock")
    }

    /// One control-socket request; the whole reply, `ok` or not.
    pub fn reply(&self, req: &Value) -> Value {
        let mut s = BufReader::new(UnixStream::connect(self.control()).expect("control socket"));
        writeln!(s.get_mut(), "{req}").unwrap();
        let mut line = String::new();
        s.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// One control-socket request; its result (it must succeed).
    pub fn request(&self, req: Value) -> Value {
        let r = self.reply(&req);
        assert_eq!(r["ok"], true, "{req}: {r}");
        r["result"].clone()
    }

    /// A new vGPU of `type_id`: its socket.
    pub fn create(&self, type_id: &str) -> PathBuf {
        let r = self.request(json!({"op": "create", "type": type_id}));
        PathBuf::from(r["socket"].as_str().unwrap())
    }

    /// vgpud's resident memory.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }

    /// What vgpud has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vgpud.log")).unwrap_or_default()
    }

    /// The worker processes this vgpud runs, oldest first.
    pub fn workers(&self) -> Vec<u32> {
        let pid = self.child.id();
        let mut out: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u32>().ok());
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                ppid == Some(pid) && String::from_utf8_lossy(&cmd).contains("vgpud-cuda-worker")
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// A process's command line, its arguments joined by spaces.
    pub fn cmdline(pid: u32) -> String {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmd).replace('\0', " ")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Vgpud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what vgpud said meanwhile.
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(self.dir.join("vgpud.log")) {
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- vgpud's log (last {} lines) ---", tail.len());
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
