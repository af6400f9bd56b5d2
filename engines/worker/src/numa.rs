//! Where a device sits among the host's NUMA nodes, and a worker kept there.
//!
//! On a host with more than one NUMA node, each PCI device hangs off one of
//! them (`/sys/bus/pci/devices/<address>/numa_node`), and memory and CPUs
//! of that node reach it without crossing the interconnect between
//! sockets. A GPU's workers are therefore started on that node's CPUs,
//! with a memory policy that prefers the node's memory: the worker's own
//! allocations (its CUDA context, the driver's buffers, pinned staging
//! memory) come from the node while it has room, and from the others after.
//! Guest RAM is the VMM's memory: registering it with the GPU pins its
//! pages where the VMM's policy put them (bind the VM to the GPU's node,
//! e.g. libvirt's `<numatune>`, to have them local too).
//!
//! The placement is applied between fork and exec
//! ([`NumaPlacement::apply`], called by
//! [`WorkerProgram::spawn`](crate::program::WorkerProgram::spawn)): CPU
//! affinity and a task's memory policy are kept across `execve`, so the
//! worker runs on its node from its first instruction, and its sandbox
//! (whose seccomp filter allows neither `sched_setaffinity` nor a change
//! of policy for another process) needs nothing more. On a host with one
//! node, or for a device the kernel places on no node (`numa_node` -1),
//! nothing is set.

use std::collections::BTreeSet;
use std::path::Path;

/// The most CPUs and nodes a placement names (the kernel's `CPU_SETSIZE`;
/// as many node bits).
const MASK_BITS: usize = 1024;
const WORD_BITS: usize = libc::c_ulong::BITS as usize;
const MASK_WORDS: usize = MASK_BITS / WORD_BITS;

/// A PCI function's address, `domain:bus:device.function`, written as
/// sysfs names devices (`0000:65:00.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    /// `0000:65:00.0`, or with the 8-digit domain the NVIDIA tools print
    /// (`00000000:65:00.0`), any case; `None` for anything else.
    pub fn parse(s: &str) -> Option<PciAddress> {
        let (domain, rest) = s.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (device, function) = rest.split_once('.')?;
        let hex = |t: &str, digits: &[usize]| {
            (digits.contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(t, 16).ok())
                .flatten()
        };
        let address = PciAddress {
            domain: hex(domain, &[4, 8])?,
            bus: hex(bus, &[2])? as u8,
            device: hex(device, &[2])? as u8,
            function: hex(function, &[1])? as u8,
        };
        (address.device < 32 && address.function < 8).then_some(address)
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// A set of CPUs or nodes as the kernel's calls take it: a bit per number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mask([libc::c_ulong; MASK_WORDS]);

impl Mask {
    fn of(numbers: &BTreeSet<usize>) -> Mask {
        let mut m = [0; MASK_WORDS];
        for &n in numbers.iter().filter(|&&n| n < MASK_BITS) {
            m[n / WORD_BITS] |= 1 << (n % WORD_BITS);
        }
        Mask(m)
    }
}

/// A list as sysfs writes CPUs and nodes (`0-3,8,10-11`; empty for none).
/// `None` when it is malformed or names a number of [`MASK_BITS`] or more.
fn parse_list(text: &str) -> Option<BTreeSet<usize>> {
    let mut out = BTreeSet::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let n = part.parse::<usize>().ok()?;
                (n, n)
            }
        };
        if lo > hi || hi >= MASK_BITS {
            return None;
        }
        out.extend(lo..=hi);
    }
    Some(out)
}

/// `a-b,c` from a set (how `/proc/<pid>/status` writes `Cpus_allowed_list`).
fn format_list(set: &BTreeSet<usize>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(lo) = it.next() {
        let mut hi = lo;
        while it.peek() == Some(&(hi + 1)) {
            hi += 1;
            it.next();
        }
        parts.push(if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        });
    }
    parts.join(",")
}

fn read_list(path: &Path) -> Option<BTreeSet<usize>> {
    parse_list(&std::fs::read_to_string(path).ok()?)
}

/// The node the kernel says `pci` hangs off (`None`: none, -1, or no such
/// device under `sys`).
pub fn device_node(sys: &Path, pci: &PciAddress) -> Option<usize> {
    let path = sys.join(format!("bus/pci/devices/{pci}/numa_node"));
    let n: i64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    usize::try_from(n).ok().filter(|&n| n < MASK_BITS)
}

/// Where a device's workers run: its node's CPUs (those the daemon may use
/// itself) and, when the node has memory, a policy preferring it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaPlacement {
    node: usize,
    cpus: BTreeSet<usize>,
    cpu_mask: Mask,
    prefer_memory: bool,
    node_mask: Mask,
}

impl NumaPlacement {
    /// The placement of the device at `pci`, as the sysfs tree at `sys`
    /// (`/sys`) describes the host: `None` on a host with one node (or no
    /// NUMA information), and for a device on no node.
    pub fn for_device(sys: &Path, pci: &PciAddress) -> Option<NumaPlacement> {
        let nodes = sys.join("devices/system/node");
        let online = read_list(&nodes.join("online"))?;
        if online.len() < 2 {
            return None;
        }
        let node = device_node(sys, pci).filter(|n| online.contains(n))?;
        let cpus = read_list(&nodes.join(format!("node{node}/cpulist"))).unwrap_or_default();
        // Only CPUs the daemon may run on itself: a worker's affinity
        // outside its cgroup's set would be refused.
        let cpus: BTreeSet<usize> = cpus.intersection(&allowed_cpus()).copied().collect();
        let prefer_memory = read_list(&nodes.join("has_memory")).is_some_and(|m| m.contains(&node));
        Some(NumaPlacement {
            node,
            cpu_mask: Mask::of(&cpus),
            cpus,
            prefer_memory,
            node_mask: Mask::of(&BTreeSet::from([node])),
        })
    }

    /// The node.
    pub fn node(&self) -> usize {
        self.node
    }

    /// The CPUs the worker runs on, as sysfs lists them (`8-15,24-31`);
    /// empty when none of the node's CPUs is the daemon's to give (the
    /// affinity is then left alone).
    pub fn cpu_list(&self) -> String {
        format_list(&self.cpus)
    }

    /// Whether the worker's memory policy prefers the node (it has memory).
    pub fn prefers_memory(&self) -> bool {
        self.prefer_memory
    }

    /// Put the calling process on the node: its CPU affinity, then its
    /// memory policy (`MPOL_PREFERRED`). Async-signal-safe (two system
    /// calls on masks made beforehand): it runs between fork and exec.
    pub fn apply(&self) -> std::io::Result<()> {
        if !self.cpus.is_empty() {
            // SAFETY: the kernel reads `size_of_val(mask)` bytes of the
            // mask, which lives for the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_sched_setaffinity,
                    0,
                    std::mem::size_of_val(&self.cpu_mask.0),
                    self.cpu_mask.0.as_ptr(),
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if self.prefer_memory {
            // SAFETY: as above; `maxnode` is the mask's bits plus one (the
            // kernel takes one less than it is given).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_set_mempolicy,
                    libc::MPOL_PREFERRED,
                    self.node_mask.0.as_ptr(),
                    MASK_BITS + 1,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> BTreeSet<usize> {
    let mut mask = [0 as libc::c_ulong; MASK_WORDS];
    // SAFETY: the kernel writes at most `size_of_val(&mask)` bytes into
    // the mask.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            0,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return BTreeSet::new();
    }
    (0..MASK_BITS)
        .filter(|&c| mask[c / WORD_BITS] & (1 << (c % WORD_BITS)) != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;

    #[test]
    fn pci_addresses_as_sysfs_writes_them() {
        let a = PciAddress::parse("00000000:65:00.0").unwrap();
        assert_eq!(a.to_string(), "0000:65:00.0");
        assert_eq!(
            PciAddress::parse("0000:CA:1f.7").unwrap().to_string(),
            "0000:ca:1f.7"
        );
        for bad in [
            "",
            "0000:65:00",
            "0000:65:00.8",
            "0000:65:20.0",
            "000:65:00.0",
            "0000:65:00.0/../..",
            "0000:6g:00.0",
            "+000:65:00.0",
            "0000:65:00.0 ",
        ] {
            assert_eq!(PciAddress::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lists_as_sysfs_writes_them() {
        assert_eq!(
            parse_list("0-3,8,10-11\n"),
            Some(BTreeSet::from([0, 1, 2, 3, 8, 10, 11]))
        );
        assert_eq!(parse_list("\n"), Some(BTreeSet::new()));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("0-1024"), None);
        assert_eq!(parse_list("a"), None);
        assert_eq!(
            format_list(&BTreeSet::from([0, 1, 2, 5, 7, 8])),
            "0-2,5,7-8"
        );
        let m = Mask::of(&BTreeSet::from([0, 65]));
        assert_eq!((m.0[0], m.0[1]), (1, 2));
    }

    /// A sysfs tree in a temporary directory: `online` nodes, each node's
    /// CPUs, the nodes with memory, and devices with their node.
    struct FakeSys(PathBuf);

    impl FakeSys {
        fn new(
            name: &str,
            online: &str,
            cpus: &[&str],
            memory: &str,
            devices: &[(&str, &str)],
        ) -> Self {
            let root =
                std::env::temp_dir().join(format!("vgpud-numa-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let nodes = root.join("devices/system/node");
            std::fs::create_dir_all(&nodes).unwrap();
            std::fs::write(nodes.join("online"), format!("{online}\n")).unwrap();
            std::fs::write(nodes.join("has_memory"), format!("{memory}\n")).unwrap();
            for (i, c) in cpus.iter().enumerate() {
                std::fs::create_dir_all(nodes.join(format!("node{i}"))).unwrap();
                std::fs::write(nodes.join(format!("node{i}/cpulist")), format!("{c}\n")).unwrap();
            }
            for (pci, node) in devices {
                let d = root.join(format!("bus/pci/devices/{pci}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("numa_node"), format!("{node}\n")).unwrap();
            }
            FakeSys(root)
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// What `path` says in a child started with `placement` applied.
    fn placed_child_reads(placement: &NumaPlacement, path: &str) -> String {
        let p = placement.clone();
        let mut cmd = std::process::Command::new("cat");
        cmd.arg(path);
        // SAFETY: `apply` makes two system calls on masks built before the
        // fork; nothing else runs in the child before exec.
        unsafe { cmd.pre_exec(move || p.apply()) };
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Each mapping's memory policy in a `numa_maps` text.
    fn policies(maps: &str) -> impl Iterator<Item = &str> {
        maps.lines()
            .map(|l| l.split_whitespace().nth(1).unwrap_or(""))
    }

    fn status_field(status: &str, name: &str) -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn a_device_on_one_of_two_nodes_places_its_workers_there() {
        let a = PciAddress::parse("0000:ee:00.0").unwrap();
        let b = PciAddress::parse("0000:ee:01.0").unwrap();
        let none = PciAddress::parse("0000:ee:02.0").unwrap();
        // Node 0 is this host's (it has CPU 0 and memory); node 1's CPU is
        // CPU 1 of this host, its memory none (a memoryless node).
        let sys = FakeSys::new(
            "two",
            "0-1",
            &["0", "1"],
            "0",
            &[
                ("0000:ee:00.0", "0"),
                ("0000:ee:01.0", "1"),
                ("0000:ee:02.0", "-1"),
            ],
        );
        let pa = NumaPlacement::for_device(&sys.0, &a).expect("node 0");
        assert_eq!(
            (pa.node(), pa.cpu_list().as_str(), pa.prefers_memory()),
            (0, "0", true)
        );
        let pb = NumaPlacement::for_device(&sys.0, &b).expect("node 1");
        assert_eq!((pb.node(), pb.prefers_memory()), (1, false));
        assert_eq!(NumaPlacement::for_device(&sys.0, &none), None, "on no node");
        let missing = PciAddress::parse("0000:ee:03.0").unwrap();
        assert_eq!(
            NumaPlacement::for_device(&sys.0, &missing),
            None,
            "no such device"
        );

        // Applied to a real process: its CPUs, and its memory policy as
        // the kernel shows it for each of its mappings.
        let status = placed_child_reads(&pa, "/proc/self/status");
        assert_eq!(status_field(&status, "Cpus_allowed_list"), "0");
        let maps = placed_child_reads(&pa, "/proc/self/numa_maps");
        assert!(policies(&maps).all(|p| p == "prefer:0"), "{maps}");
        if allowed_cpus().contains(&1) {
            assert_eq!(pb.cpu_list(), "1");
            let status = placed_child_reads(&pb, "/proc/self/status");
            assert_eq!(status_field(&status, "Cpus_allowed_list"), "1");
        }
        let maps = placed_child_reads(&pb, "/proc/self/numa_maps");
        assert!(policies(&maps).all(|p| p == "default"), "{maps}");
    }

    #[test]
    fn one_node_places_nothing() {
        let sys = FakeSys::new("one", "0", &["0-1"], "0", &[("0000:65:00.0", "0")]);
        let a = PciAddress::parse("0000:65:00.0").unwrap();
        assert_eq!(NumaPlacement::for_device(&sys.0, &a), None);
        // No NUMA information at all (a kernel without NUMA): nothing.
        assert_eq!(
            NumaPlacement::for_device(Path::new("/nonexistent"), &a),
            None
        );
    }
}
