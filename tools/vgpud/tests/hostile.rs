//! Hostile tenants, against the vgpud binary: two `vgpud-2c` vGPUs under
//! equal_share on the cpu engine. A well-behaved tenant B runs a known load
//! (1 ms spins that report, and fills it checks) through the guest driver
//! while a hostile tenant A attacks from the other vGPU. Every case asserts
//! that:
//! * vgpud stays up, and serves a new client on A's vGPU once A has left;
//! * B's results are exact, and B gets at least 90% of its share (half the
//!   engine) over a 3 s window of the attack;
//! * A's work does not outlive A: once A has left, the engine works for B
//!   alone and the policy holds none of B's work back (vgpud's own
//!   accounting), and on a quiet host B gets within 15% of what it got
//!   before A came;
//! * vgpud's memory (RSS) returns to within 10% of its baseline (taken with
//!   B running, before A came) once A has left.
//!
//! docs/reliability.md has the table of what each case measured.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::daemon::{connect, fill_once, Vgpud};
use vgpu_guest::programs::Program;
use vgpu_guest::pushbuf::{copy, Pushbuf, SUBCH_COPY};
use vgpu_guest::{Channel, ChannelConfig, Device, Placement, WaitMode};

mod common;

/// The cases run one at a time: each measures time and memory on a shared
/// host.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long A attacks; B's share is measured over [`WINDOW`] inside it.
const ATTACK: Duration = Duration::from_millis(4200);
const WINDOW_START: Duration = Duration::from_millis(700);
const WINDOW: Duration = Duration::from_secs(3);
/// B's share under equal_share beside a busy A (of what B's load gets of
/// the engine alone on this host, measured before A comes), and the part
/// of it B must get.
const FAIR_SHARE: f64 = 0.5;
const MIN_OF_SHARE: f64 = 0.9;
/// B's figures once A has left are taken over [`AFTER`] from [`GONE`] after
/// A left (A's work cancelled by then); other vGPUs' engine time in it, and
/// time the policy held B's work back, are at most [`AFTER_OTHERS`] of it.
const GONE: Duration = Duration::from_millis(300);
const AFTER: Duration = Duration::from_secs(1);
const AFTER_OTHERS: f64 = 0.01;
/// B's share alone is taken over the last [`SOLO`] before A comes.
const SOLO: Duration = Duration::from_millis(600);

/// vgpud under equal_share.
fn vgpud(name: &str) -> Vgpud {
    Vgpud::start(
        &format!("hostile-{name}"),
        "[parent.\"cpu0\"]\npolicy = \"equal_share\"\n",
        &[],
    )
}

/// The good tenant: one channel kept four 1 ms spins deep, each reporting
/// its unit count to a slot of its own, and every 16th command a fill of
/// a fresh value; every result is checked as it completes.
struct Good {
    stop: Arc<AtomicBool>,
    /// When each spin completed, and its nominal engine time.
    done: Arc<Mutex<Vec<(Instant, Duration)>>>,
    thread: JoinHandle<Result<u64, String>>,
}

impl Good {
    fn start(socket: &Path) -> Good {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, done, socket) = (stop.clone(), done.clone(), socket.to_path_buf());
            std::thread::spawn(move || Good::run(&socket, &stop, &done).map_err(|e| e.to_string()))
        };
        Good { stop, done, thread }
    }

    fn run(
        socket: &Path,
        stop: &AtomicBool,
        done: &Mutex<Vec<(Instant, Duration)>>,
    ) -> vgpu_guest::Result<u64> {
        let mut dev = connect(socket, 32 << 20)?;
        // Interrupt waits: B's driver sleeps until its fences land, and
        // leaves the host's CPUs to the engine.
        let cfg = ChannelConfig {
            gpfifo_entries: 64,
            segment_bytes: 1024,
            interrupt_fences: true,
        };
        let mut ch = Channel::new(&mut dev, 0, cfg)?;
        let slots = dev.alloc(Placement::Sysmem, 4096)?;
        let fills = dev.alloc(Placement::Sysmem, 4096)?;
        let mut inflight = std::collections::VecDeque::new();
        let mut checked = 0u64;
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) || !inflight.is_empty() {
            while !stop.load(Ordering::Relaxed) && inflight.len() < 4 {
                let slot = 4 * (i as u64 % 1024);
                let prog = if i % 16 == 15 {
                    Program::Fill {
                        dst: fills.va(),
                        count: 1024,
                        value: i,
                    }
                } else {
                    Program::Spin {
                        dst: slots.va() + slot,
                        units: 900 + (i * 37) % 200,
                        unit_ns: 1000,
                    }
                };
                inflight.push_back((ch.queue_launch(&mut dev, &prog)?, prog));
                i += 1;
            }
            ch.ring(&mut dev)?;
            let Some((fence, prog)) = inflight.pop_front() else {
                break;
            };
            ch.wait(
                &mut dev,
                fence,
                WaitMode::Interrupt,
                Duration::from_secs(20),
            )?;
            let now = Instant::now();
            match prog {
                Program::Spin { dst, units, .. } => {
                    let got = slots.host()?.read_u32((dst - slots.va()) as usize)?;
                    if got != units {
                        return Err(vgpu_guest::Error::InvalidArgument(format!(
                            "spin reported {got}, not {units}"
                        )));
                    }
                    let ns = Duration::from_micros(units as u64);
                    devmodel::sync::lock(done).push((now, ns));
                }
                Program::Fill { value, .. } => {
                    for w in (0..4096).step_by(4 * 97) {
                        let got = fills.host()?.read_u32(w)?;
                        if got != value {
                            return Err(vgpu_guest::Error::InvalidArgument(format!(
                                "fill word {w} is {got:#x}, not {value:#x}"
                            )));
                        }
                    }
                }
                _ => {}
            }
            checked += 1;
        }
        Ok(checked)
    }

    /// The engine share B's spins got in `[from, from + len)`.
    fn share(&self, from: Instant, len: Duration) -> f64 {
        let done = devmodel::sync::lock(&self.done);
        let busy: Duration = done
            .iter()
            .filter(|(t, _)| *t >= from && *t < from + len)
            .map(|(_, d)| *d)
            .sum();
        busy.as_secs_f64() / len.as_secs_f64()
    }

    /// Stop, and the number of results checked.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("the good tenant failed: {e}"),
            Err(_) => panic!("the good tenant panicked"),
        }
    }
}

/// Share of a measured span that the host may take (engine idle with work
/// queued but the daemon late, spins held past their length, or no work at
/// all though B keeps its channel full: B's driver waiting for a CPU) before
/// a case is run once more.
const DISTURBED: f64 = 0.03;

/// Runs of a case at most while each is disturbed; the least disturbed is
/// asserted. (One retry was not enough: in CI a second run that lost 37 %
/// of its time to the host failed B's share, and beside a build one that
/// lost 5.5 %.)
const ATTEMPTS: usize = 3;

/// Tenant A's attack: on A's socket, until the deadline it is given.
type Attack = Arc<dyn Fn(&Path, Instant) + Send + Sync>;

/// What one run of a case measured.
struct Outcome {
    share: f64,
    alone: f64,
    solo: f64,
    /// The share of the two measured spans the host took (see [`DISTURBED`]).
    disturbance: f64,
    /// vgpud's counters over the [`AFTER`] span once A had left.
    after: Counters,
    /// How much more of that span the engine idled, not by the policy's
    /// choice, than of the [`SOLO`] span (B alone before A came).
    idle_more: f64,
    timeline: String,
}

/// The engine's counters at one moment (ns since the parent started).
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    /// Engine time of B's work.
    b: u64,
    /// Engine time of the other vGPUs' work (A's), from the same snapshot
    /// of the scheduler as `b`.
    others: u64,
    /// The engine idle while a share or a cap held queued work back.
    held: u64,
    /// Time the host took (see [`DISTURBED`]): the engine idle with no
    /// work, or with work the daemon was late to hand over, and spins
    /// held past their length.
    took: u64,
}

impl Counters {
    /// Engine time of every vGPU's work.
    fn busy(&self) -> u64 {
        self.b + self.others
    }
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            b: self.b.saturating_sub(o.b),
            others: self.others.saturating_sub(o.others),
            held: self.held.saturating_sub(o.held),
            took: self.took.saturating_sub(o.took),
        }
    }
}

/// vgpud's counters now, B being the vGPU behind `b_socket`.
fn counters(v: &Vgpud, b_socket: &Path) -> Counters {
    let vgpus = v.request(serde_json::json!({"op": "status"}));
    let (mut b, mut others) = (None, 0);
    for s in vgpus.as_array().expect("a list of vGPUs") {
        // A vGPU the scheduler does not know (null) has no work there.
        let ns = s["gpu_time_ns"].as_u64().unwrap_or(0);
        if s["socket"].as_str() == b_socket.to_str() {
            b = Some(ns);
        } else {
            others += ns;
        }
    }
    let p = v.request(serde_json::json!({"op": "parents", "parent": "cpu0"}));
    let ns = |k: &str| p[0][k].as_u64().expect(k);
    Counters {
        b: b.expect("B's engine time"),
        others,
        held: ns("idle_held_ns"),
        took: ns("idle_empty_ns") + ns("idle_late_ns") + ns("engine_stalled_ns"),
    }
}

/// Run `attack` as tenant A (on A's socket, until the deadline it is
/// given) beside the good tenant, and check everything the suite promises.
/// A run in which the host took more than [`DISTURBED`] of a measured span
/// is run again, and the case says so, up to [`ATTEMPTS`] runs in all; the
/// least disturbed is asserted whatever it saw, except B's share once A has left against B's share
/// alone before A came where the engine idled, not by the policy's choice,
/// more than [`DISTURBED`] more of the span after than of the span before:
/// both shares are what B's load generator gets of the host's CPUs, and a
/// busy host (a build beside) makes them differ by more than the check's
/// margin. What A's leaving promises is asserted from vgpud's own
/// accounting in every run: the engine works for B alone, and the policy
/// holds none of B's work back.
fn case(name: &str, attack: impl Fn(&Path, Instant) + Send + Sync + 'static) {
    let _serial = devmodel::sync::lock(&ONE_AT_A_TIME);
    let attack: Attack = Arc::new(attack);
    let mut o = run_case(name, &attack);
    for _ in 1..ATTEMPTS {
        if o.disturbance <= DISTURBED {
            break;
        }
        eprintln!(
            "{name}: the host took {:.1} % of the measured time: running the case again",
            100.0 * o.disturbance
        );
        let again = run_case(name, &attack);
        if again.disturbance < o.disturbance {
            o = again;
        }
    }
    let entitled = FAIR_SHARE * o.solo;
    assert!(
        o.share >= entitled * MIN_OF_SHARE,
        "{name}: B got {:.3} of the engine over {WINDOW:?}; its share: {entitled:.3} \
         ({FAIR_SHARE} of the {:.3} its load gets alone); by 100 ms from 1 s before A: {}",
        o.share,
        o.solo,
        o.timeline
    );
    let of_after = |ns: u64| ns as f64 / AFTER.as_nanos() as f64;
    let others = of_after(o.after.others);
    assert!(
        others <= AFTER_OTHERS,
        "{name}: A's work outlived A: other vGPUs than B had {others:.3} of the engine over \
         the {AFTER:?} from {GONE:?} after A left"
    );
    let held = of_after(o.after.held);
    assert!(
        held <= AFTER_OTHERS,
        "{name}: the policy held B's work back after A left: the engine idled {held:.3} of \
         {AFTER:?} with B's work queued"
    );
    if o.idle_more <= DISTURBED {
        assert!(
            o.alone >= 0.85 * o.solo,
            "{name}: B got {:.3} of the engine after A left, {:.3} before A came; by 100 ms \
             from 1 s before A: {}",
            o.alone,
            o.solo,
            o.timeline
        );
    } else {
        eprintln!(
            "{name}: B's {:.3} after A left not held to its {:.3} before A came: the engine \
             idled {:.1} % more of that second than before A came, not by the policy's choice \
             (the host)",
            o.alone,
            o.solo,
            100.0 * o.idle_more
        );
    }
}

/// One run of a case: asserts what holds whatever the host does (vgpud
/// alive, results exact, memory returned, a new client served), measures
/// the rest.
fn run_case(name: &str, attack: &Attack) -> Outcome {
    let mut v = vgpud(name);
    let a_socket = v.create("vgpud-2c");
    let b_socket = v.create("vgpud-2c");
    let good = Good::start(&b_socket);
    std::thread::sleep(Duration::from_millis(1000) - SOLO);
    let s0 = counters(&v, &b_socket);
    std::thread::sleep(SOLO);
    let s1 = counters(&v, &b_socket);
    // What B's load gets of the engine alone on this host: its share beside
    // a busy neighbour is half of it.
    let solo = good.share(Instant::now() - SOLO, SOLO);
    let baseline = v.rss();

    let t0 = Instant::now();
    let hostile = {
        let (s, attack) = (a_socket.clone(), attack.clone());
        std::thread::spawn(move || attack(&s, t0 + ATTACK))
    };
    std::thread::sleep(WINDOW_START);
    let c0 = counters(&v, &b_socket);
    std::thread::sleep(WINDOW);
    let c1 = counters(&v, &b_socket);
    let share = good.share(t0 + WINDOW_START, WINDOW);
    let attacked = hostile.join();
    let left = Instant::now();
    sleep_until(left + GONE);
    let c2 = counters(&v, &b_socket);
    sleep_until(left + GONE + AFTER);
    let c3 = counters(&v, &b_socket);
    let alone = good.share(left + GONE, AFTER);
    let (during, after) = (c1 - c0, c3 - c2);
    // The engine's idle time not chosen by the policy, after A left, beyond
    // what it was with B alone before A came (B's load has gaps of its own).
    let idle =
        |c: Counters, span: Duration| 1.0 - (c.busy() + c.held) as f64 / span.as_nanos() as f64;
    let idle_more = idle(after, AFTER) - idle(s1 - s0, SOLO);
    let disturbance = (during.took as f64 / WINDOW.as_nanos() as f64).max(idle_more);
    // Memory: back within 10% of the baseline (give the release a moment).
    let t = Instant::now();
    let mut rss = v.rss();
    while rss > baseline + baseline / 10 && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        rss = v.rss();
    }
    let alive = v.alive();
    if alive {
        assert_eq!(
            fill_once(&a_socket, 0x600D),
            Ok(()),
            "{name}: a new client on A's vGPU"
        );
    }
    // B's share by 100 ms from 1 s before A came, for the messages.
    let timeline: Vec<String> = (0..70)
        .map(|i| {
            let from = t0 - Duration::from_secs(1) + Duration::from_millis(100 * i);
            format!("{:.1}", good.share(from, Duration::from_millis(100)))
        })
        .collect();
    let timeline = timeline.join(" ");
    let checked = good.finish();
    let entitled = FAIR_SHARE * solo;

    eprintln!(
        "{name}: B's engine share {share:.3} under attack ({:.0}% of its {entitled:.3}), {alone:.3} \
         alone after A left ({solo:.3} before A came); the host took {:.1} %; vgpud RSS {} MiB \
         -> {} MiB; {checked} results checked; after A left, of {AFTER:?}: B {:.3}, others {:.3}, held \
         {:.3}, idle {:+.3} against B alone",
        100.0 * share / entitled,
        100.0 * disturbance,
        baseline >> 20,
        rss >> 20,
        after.b as f64 / AFTER.as_nanos() as f64,
        after.others as f64 / AFTER.as_nanos() as f64,
        after.held as f64 / AFTER.as_nanos() as f64,
        idle_more,
    );
    assert!(attacked.is_ok(), "{name}: the attack's own checks failed");
    assert!(alive, "{name}: vgpud died");
    assert!(
        rss <= baseline + baseline / 10,
        "{name}: vgpud's RSS {} MiB after A left, baseline {} MiB",
        rss >> 20,
        baseline >> 20
    );
    assert!(checked > 100, "{name}: B checked {checked} results");
    Outcome {
        share,
        alone,
        solo,
        disturbance,
        after,
        idle_more,
        timeline,
    }
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// A channel for A's attacks: `entries` segments of `segment_bytes`.
fn channel(dev: &mut Device, id: u32, entries: u32, segment_bytes: u32) -> Channel {
    let cfg = ChannelConfig {
        gpfifo_entries: entries,
        segment_bytes,
        interrupt_fences: false,
    };
    Channel::new(dev, id, cfg).expect("A's channel")
}

/// Submit `pb` on every channel, wait for them all (until `deadline` at
/// most), and again, until `deadline`: A leaves with its work queued.
fn on_every_channel_until(
    dev: &mut Device,
    chans: &mut [Channel],
    pb: &Pushbuf,
    deadline: Instant,
) {
    while Instant::now() < deadline {
        let fences: Vec<_> = chans
            .iter_mut()
            .map(|ch| ch.submit(dev, pb).unwrap())
            .collect();
        for (ch, f) in chans.iter().zip(fences) {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = ch.wait(dev, f, WaitMode::Poll, left);
        }
    }
}

#[test]
fn a_4096_cubed_gemm_runs_in_pieces_and_a_reset_cancels_it() {
    case("gemm", |socket, deadline| {
        let mut dev = connect(socket, 64 << 20).unwrap();
        let mut ch = channel(&mut dev, 0, 4, 4096);
        let m = 4096u32;
        let bufs: Vec<_> = (0..3)
            .map(|_| dev.alloc(Placement::Vram, (m * m * 4) as u64).unwrap())
            .collect();
        let gemm = Program::Gemm {
            a: bufs[0].va(),
            b: bufs[1].va(),
            c: bufs[2].va(),
            m,
            n: m,
            k: m,
            alpha: 1.0,
            beta: 0.0,
        };
        ch.launch(&mut dev, &gemm).unwrap();
        ch.launch(&mut dev, &gemm).unwrap();
        sleep_until(deadline);
        // The engine reset stops A's gemm within the bound (one piece,
        // plus the round trip). The bound is the daemon's: this thread
        // takes its side of the round trip at the daemon's priority, so that
        // on a busy host it does not add its own wait for a CPU.
        devmodel::thread::raise_current(devmodel::thread::DATA_PATH_NICE);
        let t = Instant::now();
        dev.engine_reset().unwrap();
        let reset = t.elapsed();
        assert!(
            reset < Duration::from_millis(10),
            "engine reset took {reset:?}"
        );
    });
}

#[test]
fn ten_second_spins_are_cut_into_slices() {
    case("spin", |socket, deadline| {
        let mut dev = connect(socket, 32 << 20).unwrap();
        let mut chans: Vec<_> = (0..4).map(|c| channel(&mut dev, c, 4, 1024)).collect();
        let spin = Program::Spin {
            dst: 0,
            units: 10_000,
            unit_ns: 1_000_000,
        };
        for ch in chans.iter_mut() {
            ch.queue_launch(&mut dev, &spin).unwrap();
            ch.queue_launch(&mut dev, &spin).unwrap();
            ch.ring(&mut dev).unwrap();
        }
        sleep_until(deadline);
        // A leaves with 70 s of spins queued.
    });
}

#[test]
fn gib_copies_and_memsets_that_fill_the_framebuffer() {
    case("gib-copy", |socket, deadline| {
        let mut dev = connect(socket, 32 << 20).unwrap();
        let mut ch = channel(&mut dev, 0, 4, 1024);
        let x = dev.alloc(Placement::Vram, 1 << 30).unwrap();
        let y = dev.alloc(Placement::Vram, (1 << 30) - (64 << 20)).unwrap();
        let mut pattern = 1u32;
        while Instant::now() < deadline {
            let mut pb = Pushbuf::new();
            pb.bind_classes()
                .memset_1d(x.va(), pattern, 1 << 30)
                .copy_1d(x.va(), y.va(), y.len() as u32);
            let f = ch.submit(&mut dev, &pb).unwrap();
            // Waits end at the deadline: A leaves with its work queued.
            let _ = ch.wait(
                &mut dev,
                f,
                WaitMode::Poll,
                deadline - Instant::now().min(deadline),
            );
            pattern += 1;
        }
    });
}

#[test]
fn a_flood_of_tiny_copies_on_eight_channels_pays_for_itself() {
    case("flood", |socket, deadline| {
        let mut dev = connect(socket, 64 << 20).unwrap();
        let mut chans: Vec<_> = (0..8).map(|c| channel(&mut dev, c, 2, 256 << 10)).collect();
        let buf = dev.alloc(Placement::Sysmem, 4096).unwrap();
        // 60,000 four-byte COPY.LAUNCHes by NONINCR: 240 KB of pushbuffer.
        let mut pb = Pushbuf::new();
        pb.bind_classes()
            .copy_1d(buf.va(), buf.va() + 2048, 4)
            .nonincr(
                SUBCH_COPY,
                copy::LAUNCH,
                &vec![copy::LAUNCH_COPY_1D; 60_000],
            );
        on_every_channel_until(&mut dev, &mut chans, &pb, deadline);
    });
}

#[test]
fn two_d_copies_of_one_byte_lines_run_by_groups_of_lines() {
    case("copy-2d", |socket, deadline| {
        let mut dev = connect(socket, 32 << 20).unwrap();
        let mut chans: Vec<_> = (0..2).map(|c| channel(&mut dev, c, 4, 1024)).collect();
        let src = dev.alloc(Placement::Vram, 64 << 20).unwrap();
        let dst = dev.alloc(Placement::Vram, 64 << 20).unwrap();
        // 2^24 lines of one byte, pitch 2: refused (more extents than a
        // command may name), the channel faults and A recovers it.
        let mut pb = Pushbuf::new();
        pb.bind_classes()
            .copy_2d(src.va(), 2, dst.va(), 2, 1, 1 << 24);
        let f = chans[0].submit(&mut dev, &pb).unwrap();
        let r = chans[0].wait(&mut dev, f, WaitMode::Poll, Duration::from_secs(5));
        assert!(
            matches!(r, Err(vgpu_guest::Error::ChannelFault { .. })),
            "2^24 lines: {r:?}"
        );
        chans[0].recover(&mut dev).unwrap();
        // 2^17 lines (a quarter of a million extents) over and over.
        let mut pb = Pushbuf::new();
        pb.bind_classes()
            .copy_2d(src.va(), 2, dst.va(), 2, 1, 1 << 17);
        on_every_channel_until(&mut dev, &mut chans, &pb, deadline);
    });
}

#[test]
fn a_pipe_offered_as_an_interrupt_eventfd_is_refused() {
    case("irq-pipe", |socket, deadline| {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        let mut s = common::raw_connect(socket);
        s.write_all(&common::raw(1, 1, 0, &common::version_payload()))
            .unwrap();
        let (_, _, _, errno, _) = common::read_reply(&mut s);
        assert_eq!(errno, 0, "VERSION");
        let mut fds = [0i32; 2];
        // SAFETY: pipe writes two descriptors into the array it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SET_IRQS (8): argsz, flags (TRIGGER | DATA_EVENTFD), MSI-X
        // (index 2), start 0, count 1; the pipe's write end as the fd.
        let set: Vec<u8> = [20u32, (1 << 5) | (1 << 2), 2, 0, 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        s.send_with_fd(&common::raw(2, 8, 0, &set)[..], fds[1])
            .unwrap();
        let (_, _, flags, errno, _) = common::read_reply(&mut s);
        assert!(
            flags & (1 << 5) != 0 && errno == libc::EINVAL as u32,
            "a pipe as vector 0's eventfd: flags {flags:#x} errno {errno}"
        );
        // A's device still answers its client: REGION_READ (9) of BAR0's ID.
        let read: Vec<u8> = [
            0u64.to_le_bytes().as_slice(),
            &0u32.to_le_bytes(),
            &4u32.to_le_bytes(),
        ]
        .concat();
        s.write_all(&common::raw(3, 9, 0, &read)).unwrap();
        let (_, _, _, errno, payload) = common::read_reply(&mut s);
        assert_eq!(errno, 0, "REGION_READ after the refusal");
        assert_eq!(payload[16..20], mmio::regs::ID_MAGIC.to_le_bytes());
        sleep_until(deadline);
        drop(s);
        // SAFETY: both ends are this closure's own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    });
}

#[test]
fn faults_and_doorbell_storms() {
    case("faults", |socket, deadline| {
        let mut dev = connect(socket, 32 << 20).unwrap();
        let mut ch = channel(&mut dev, 0, 4, 1024);
        let mut storm = channel(&mut dev, 1, 4, 1024);
        let mut faults = 0;
        while Instant::now() < deadline {
            // A copy from an address nothing maps: MMU fault, recovery.
            let mut pb = Pushbuf::new();
            pb.bind_classes()
                .copy_1d(0x7_0000_0000, 0x7_1000_0000, 4096);
            let f = ch.submit(&mut dev, &pb).unwrap();
            if ch
                .wait(&mut dev, f, WaitMode::Poll, Duration::from_secs(2))
                .is_err()
            {
                faults += 1;
            }
            ch.recover(&mut dev).unwrap();
            for _ in 0..200 {
                // Doorbells with nothing behind them.
                let _ = dev.ring(1, 0);
            }
            storm.recover(&mut dev).unwrap();
        }
        assert!(faults > 10, "{faults} faults");
    });
}

#[test]
fn connect_and_vanish_cycles() {
    case("cycles", |socket, deadline| {
        let mut cycles = 0;
        while Instant::now() < deadline {
            let mut dev = connect(socket, 16 << 20).unwrap();
            let mut ch = channel(&mut dev, 0, 4, 1024);
            let spin = Program::Spin {
                dst: 0,
                units: 50,
                unit_ns: 1_000_000,
            };
            ch.launch(&mut dev, &spin).unwrap();
            // Gone with 50 ms of work queued, without a word.
            drop(ch);
            drop(dev);
            cycles += 1;
        }
        assert!(cycles >= 20, "{cycles} cycles");
    });
}

#[test]
fn interrupt_storms_and_function_resets_mid_work() {
    case("flr-irq", |socket, deadline| {
        let mut dev = connect(socket, 32 << 20).unwrap();
        let mut chans: Vec<_> = (0..2).map(|c| channel(&mut dev, c, 4, 64 << 10)).collect();
        // 10,000 HOST interrupts in one segment, never acknowledged, and
        // 50 ms of spins beside them on the other channel.
        let mut storm = Pushbuf::new();
        for _ in 0..10_000 {
            storm.non_stall_interrupt();
        }
        let spin = Program::Spin {
            dst: 0,
            units: 50,
            unit_ns: 1_000_000,
        };
        let mut resets = 0;
        while Instant::now() < deadline {
            let _ = chans[0].submit(&mut dev, &storm);
            let _ = chans[1].launch(&mut dev, &spin);
            std::thread::sleep(Duration::from_millis(20));
            // A function-level reset while all of that is in flight; the
            // channels are rebuilt in the same memory.
            dev.function_reset().unwrap();
            for ch in chans.iter_mut() {
                ch.recover(&mut dev).unwrap();
            }
            resets += 1;
        }
        assert!(resets >= 20, "{resets} resets");
    });
}
