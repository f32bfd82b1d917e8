//! Where a snapshot's stages spend their time: each stage of the pipeline keeps a
//! [`StageClock`] of the time it waited for its input and for room downstream, in
//! buckets of [`BUCKET`], and the rest of its life counts as busy. The
//! [`Timeline`] of a finished snapshot shows which stage held the others up: the
//! one that is busy while its neighbours wait on it.
//!
//! The clocks only read the time around channel hand-overs (one per batch, chunk or
//! part) and when a read from PostgreSQL actually has to wait, so keeping them costs
//! nothing measurable.

use std::{
    fmt,
    task::Poll,
    time::{Duration, Instant},
};

/// The width of one bucket of the timeline.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Buckets kept per stage (an hour); a longer snapshot adds its tail to the last.
const MAX_BUCKETS: usize = 36_000;
/// Columns of the printed chart.
const CHART_COLUMNS: usize = 60;

/// What a stage waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Its input: PostgreSQL, or the stage before it.
    In,
    /// Room in the queue to the stage after it.
    Out,
}

/// One stage's clock, from its start until [`StageClock::finish`].
pub struct StageClock {
    name: String,
    origin: Instant,
    start: Instant,
    /// Microseconds waited per bucket: [in, out].
    waits: Vec<[u64; 2]>,
    /// The thread's CPU time at the start, for a stage on a thread of its own.
    cpu_start: Option<Duration>,
    /// Since when a poll of its input has been pending.
    pending_since: Option<Instant>,
}

impl StageClock {
    /// A clock for a stage running on the async runtime (its CPU time is not its own).
    pub fn new(name: impl Into<String>, origin: Instant) -> Self {
        Self {
            name: name.into(),
            origin,
            start: Instant::now(),
            waits: Vec::new(),
            cpu_start: None,
            pending_since: None,
        }
    }

    /// A clock for a stage that has the calling thread to itself: it also reports
    /// the CPU time the thread used (less than busy when the scheduler ran others).
    pub fn on_this_thread(name: impl Into<String>, origin: Instant) -> Self {
        Self { cpu_start: thread_cpu(), ..Self::new(name, origin) }
    }

    /// Runs `f`, counting its time as waiting for `what`.
    pub fn wait<T>(&mut self, what: Wait, f: impl FnOnce() -> T) -> T {
        let from = Instant::now();
        let out = f();
        self.record(what, from, Instant::now());
        out
    }

    /// Passes on a poll of the stage's input, counting the time from its first
    /// `Pending` to its `Ready` as waiting on input. Only a wait reads the clock, so
    /// items that were already there cost nothing.
    pub fn observe_input<T>(&mut self, polled: Poll<T>) -> Poll<T> {
        match &polled {
            Poll::Pending => {
                self.pending_since.get_or_insert_with(Instant::now);
            }
            Poll::Ready(_) => {
                if let Some(since) = self.pending_since.take() {
                    self.record(Wait::In, since, Instant::now());
                }
            }
        }
        polled
    }

    /// Counts `from..to` as waiting for `what`.
    pub fn record(&mut self, what: Wait, from: Instant, to: Instant) {
        let us = |t: Instant| t.saturating_duration_since(self.origin).as_micros() as u64;
        let (mut a, b) = (us(from), us(to));
        let width = BUCKET.as_micros() as u64;
        while a < b {
            let i = ((a / width) as usize).min(MAX_BUCKETS - 1);
            let end = if i == MAX_BUCKETS - 1 { b } else { ((i as u64 + 1) * width).min(b) };
            if self.waits.len() <= i {
                self.waits.resize(i + 1, [0; 2]);
            }
            self.waits[i][what as usize] += end - a;
            a = end;
        }
    }

    /// The stage ended now.
    pub fn finish(self) -> StageTime {
        let end = Instant::now();
        let cpu = self.cpu_start.and_then(|start| Some(thread_cpu()?.saturating_sub(start)));
        StageTime {
            name: self.name,
            start: self.start.saturating_duration_since(self.origin),
            end: end.saturating_duration_since(self.origin),
            waits: self.waits,
            cpu,
        }
    }
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec for the call's duration.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// How one stage spent its life.
#[derive(Clone, Debug)]
pub struct StageTime {
    pub name: String,
    /// When it started and ended, from the snapshot's start.
    pub start: Duration,
    pub end: Duration,
    waits: Vec<[u64; 2]>,
    /// CPU time of its thread, when it had one of its own.
    pub cpu: Option<Duration>,
}

impl StageTime {
    /// Time spent waiting for `what`.
    pub fn waited(&self, what: Wait) -> Duration {
        Duration::from_micros(self.waits.iter().map(|w| w[what as usize]).sum())
    }

    /// Time neither waiting for input nor for room downstream.
    pub fn busy(&self) -> Duration {
        self.end.saturating_sub(self.start).saturating_sub(self.waited(Wait::In)).saturating_sub(self.waited(Wait::Out))
    }

    /// The stage's state in each bucket: (busy, waiting in, waiting out) in microseconds.
    /// The last bucket holds everything after it too.
    fn bucket(&self, i: usize) -> (u64, u64, u64) {
        let width = BUCKET.as_micros() as u64;
        let (s, e) = (self.start.as_micros() as u64, self.end.as_micros() as u64);
        let b0 = i as u64 * width;
        let b1 = if i == MAX_BUCKETS - 1 { u64::MAX } else { (i as u64 + 1) * width };
        let alive = b1.min(e).saturating_sub(b0.max(s));
        let [wi, wo] = self.waits.get(i).copied().unwrap_or([0; 2]);
        (alive.saturating_sub(wi + wo), wi, wo)
    }
}

/// All stages of one snapshot.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub wall: Duration,
    pub stages: Vec<StageTime>,
    /// After the last byte: publishing the file (the rename, or the multipart
    /// completion and the copy that writes the SHA-256 into the object's metadata).
    pub publish: Duration,
}

impl Timeline {
    /// The stage totals as JSON (seconds), for the CLI's summary.
    pub fn to_json(&self) -> serde_json::Value {
        let s = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
        self.stages
            .iter()
            .map(|t| {
                serde_json::json!({
                    "stage": t.name, "busy": s(t.busy()), "waiting_on_input": s(t.waited(Wait::In)),
                    "waiting_on_output": s(t.waited(Wait::Out)), "cpu": t.cpu.map(s),
                })
            })
            .collect()
    }

    /// One line of totals, for the log.
    pub fn summary(&self) -> String {
        let s = |d: Duration| format!("{:.2}", d.as_secs_f64());
        self.stages
            .iter()
            .map(|t| {
                let cpu = t.cpu.map(|c| format!(" cpu {}", s(c))).unwrap_or_default();
                format!(
                    "{}: busy {} in {} out {}{cpu}",
                    t.name,
                    s(t.busy()),
                    s(t.waited(Wait::In)),
                    s(t.waited(Wait::Out))
                )
            })
            .chain([format!("publish {}", s(self.publish))])
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A table of the totals and a chart over time: `#` busy, `.` waiting on input, `>`
/// waiting on output (whichever took most of the column's time), blank before the
/// stage started or after it ended.
impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The chart covers the first MAX_BUCKETS (an hour); the totals cover it all.
        let buckets = (self.wall.as_micros() as u64).div_ceil(BUCKET.as_micros() as u64).clamp(1, MAX_BUCKETS as u64);
        let buckets = buckets as usize;
        let per_column = buckets.div_ceil(CHART_COLUMNS);
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        writeln!(
            f,
            "{:<12} {:>8} {:>9} {:>9} {:>8}  over {:.2} s, each column {} ms: # busy . waiting on input > waiting on output",
            "stage",
            "busy",
            "wait in",
            "wait out",
            "cpu",
            self.wall.as_secs_f64(),
            per_column as u128 * BUCKET.as_millis()
        )?;
        for t in &self.stages {
            let chart: String = (0..buckets.div_ceil(per_column))
                .map(|c| {
                    let (mut b, mut i, mut o) = (0, 0, 0);
                    for k in c * per_column..((c + 1) * per_column).min(buckets) {
                        let (kb, ki, ko) = t.bucket(k);
                        (b, i, o) = (b + kb, i + ki, o + ko);
                    }
                    match (b, i, o) {
                        (0, 0, 0) => ' ',
                        _ if b >= i && b >= o => '#',
                        _ if i >= o => '.',
                        _ => '>',
                    }
                })
                .collect();
            writeln!(
                f,
                "{:<12} {:>8} {:>9} {:>9} {:>8}  |{chart}|",
                t.name,
                s(t.busy()),
                s(t.waited(Wait::In)),
                s(t.waited(Wait::Out)),
                t.cpu.map(s).unwrap_or_else(|| "-".into()),
            )?;
        }
        writeln!(f, "{:<12} {:>8}  after the last byte", "publish", s(self.publish))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_split_over_buckets_and_the_rest_is_busy() {
        let origin = Instant::now();
        let mut clock = StageClock::new("read", origin);
        clock.start = origin;
        // 50-250 ms waiting on input, 300-310 ms on output.
        clock.record(Wait::In, origin + Duration::from_millis(50), origin + Duration::from_millis(250));
        clock.record(Wait::Out, origin + Duration::from_millis(300), origin + Duration::from_millis(310));
        let mut t = clock.finish();
        t.end = Duration::from_millis(400);
        assert_eq!(t.waited(Wait::In), Duration::from_millis(200));
        assert_eq!(t.waited(Wait::Out), Duration::from_millis(10));
        assert_eq!(t.busy(), Duration::from_millis(190));
        assert_eq!(t.bucket(0), (50_000, 50_000, 0));
        assert_eq!(t.bucket(1), (0, 100_000, 0));
        assert_eq!(t.bucket(3), (90_000, 0, 10_000));
        assert_eq!(t.bucket(4), (0, 0, 0));
        let chart = Timeline { wall: Duration::from_millis(400), stages: vec![t], publish: Duration::ZERO }.to_string();
        assert!(chart.lines().nth(1).unwrap().ends_with("|#.##|"), "{chart}");
    }

    #[test]
    fn a_thread_of_its_own_reports_its_cpu_time() {
        let began = Instant::now();
        let mut clock = StageClock::on_this_thread("spin", began);
        let start = thread_cpu().expect("thread CPU time on Linux");
        let mut x = 0u64;
        while thread_cpu().unwrap() - start < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        clock.wait(Wait::In, || std::thread::sleep(Duration::from_millis(30)));
        let t = clock.finish();
        let cpu = t.cpu.unwrap();
        // The sleep used no CPU; the spin used what it measured.
        assert!(cpu >= Duration::from_millis(20) && cpu <= began.elapsed() - Duration::from_millis(30), "{cpu:?}");
        assert!(t.waited(Wait::In) >= Duration::from_millis(30));
    }
}
