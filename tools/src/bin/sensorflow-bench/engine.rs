//! The `engine` figures: the pure window engine on one core, and the host calibration.

use sensorflow_core::window::{Reading, WatermarkScope, WindowConfig, WindowEngine};
use std::hint::black_box;
use std::time::Instant;

/// Readings per `process_batch` call in the engine phase (a poll's worth).
pub(crate) const BATCH: usize = 1024;

/// This thread's time on a CPU and time spent runnable but waiting for one, ns
/// (`/proc/thread-self/schedstat`; `None` where it does not exist). The engine figures are
/// per CPU-second, so they stay meaningful on a shared machine; the wait says how shared.
pub(crate) fn thread_sched_ns() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// This thread's CPU seconds and seconds spent waiting for a CPU since `start` (a
/// [`thread_sched_ns`] reading); `(wall, 0)` where schedstat does not exist.
pub(crate) fn sched_secs_since(start: Option<(u64, u64)>, wall: f64) -> (f64, f64) {
    match (start, thread_sched_ns()) {
        (Some((c0, w0)), Some((c1, w1))) => (
            c1.saturating_sub(c0) as f64 * 1e-9,
            w1.saturating_sub(w0) as f64 * 1e-9,
        ),
        _ => (wall, 0.0),
    }
}

/// Which engine call the engine phase times.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EngineApi {
    /// `WindowEngine::process_batch` over batches of 1 024 readings (what the
    /// window-processor can hand it per poll).
    Batch,
    /// `WindowEngine::process`, one call per reading.
    Single,
}

/// Throughput target of an engine shape, M readings/s per core (the performance issue).
pub(crate) fn engine_target(clients: usize, spacing_ms: i64) -> Option<f64> {
    match (clients, spacing_ms) {
        (1_440, 60_000) => Some(30.0),
        (10_000, 1_000) => Some(15.0),
        _ => None,
    }
}

/// Steps of one run of [`calibration`] (about 0.3–0.6 s on this machine's host).
pub(crate) const CALIBRATION_STEPS: u64 = 100_000_000;

/// The host's speed on one core at the time of the run: a fixed, dependent chain of
/// splitmix64 steps (an add, two 64-bit multiplies, three xor-shifts; no memory access), in
/// M steps per CPU-second of this thread, best of `runs`.
///
/// The loop never changes with the code, so an engine figure divided by it is comparable
/// across runs on a host whose speed varies (this VM's measured 2× within a day with no
/// steal time reported); the engine is bound by instructions for cache-resident state, like
/// this loop.
pub(crate) fn calibration(runs: usize) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..runs.max(1) {
        let sched0 = thread_sched_ns();
        let started = Instant::now();
        let mut x = black_box(0x0123_4567_89ab_cdefu64);
        for _ in 0..CALIBRATION_STEPS {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x = z ^ (z >> 31);
        }
        black_box(x);
        let (secs, _) = sched_secs_since(sched0, started.elapsed().as_secs_f64());
        best = best.max(CALIBRATION_STEPS as f64 / secs / 1e6);
    }
    println!(
        "host calibration (one core, a fixed splitmix64 chain; does not change with the code)"
    );
    println!(
        "  steps                      {best:.0} M per CPU-second (divide an engine figure by it to compare runs)"
    );
    best
}

/// Runs the engine phase for one shape and prints its figures; `calibration` is the host's
/// speed from [`calibration`] (M steps per CPU-second), printed against the figure.
pub(crate) fn engine(
    clients: usize,
    readings: usize,
    spacing_ms: i64,
    api: EngineApi,
    runs: usize,
    calibration: f64,
) {
    let keys: Vec<String> = (0..clients).map(|c| format!("client-{c:06}")).collect();
    let total = clients * readings;
    // Round-robin over clients on a common clock, as a partition sees it.
    let mut input = Vec::with_capacity(total);
    for k in 0..readings {
        for (c, _) in keys.iter().enumerate() {
            let v = ((c * 31 + k * 17) % 1000) as f64 * 0.01;
            input.push((c as u32, k as i64 * spacing_ms, v));
        }
    }
    let cfg = WindowConfig {
        size_ms: 600_000,
        grace_ms: 0,
        scope: WatermarkScope::Partition,
    };
    // Per run: (CPU seconds, wall seconds, seconds waiting for a CPU).
    let mut runs_s: Vec<(f64, f64, f64)> = Vec::new();
    let mut stats = None;
    let mut batch: Vec<(i32, &str, Reading)> = Vec::with_capacity(BATCH);
    let mut out = Vec::with_capacity(BATCH);
    for _ in 0..runs.max(1) {
        let mut e = WindowEngine::new(cfg);
        let sched0 = thread_sched_ns();
        let started = Instant::now();
        match api {
            EngineApi::Batch => {
                // The chunk is rebuilt in a reused buffer; that copy is timed too.
                for chunk in input.chunks(BATCH) {
                    batch.clear();
                    batch.extend(
                        chunk
                            .iter()
                            .map(|&(c, t, v)| (0, keys[c as usize].as_str(), Reading { t, v })),
                    );
                    out.clear();
                    e.process_batch(&batch, &mut out);
                    black_box(&out);
                }
            }
            EngineApi::Single => {
                for &(c, t, v) in &input {
                    black_box(e.process(0, &keys[c as usize], Reading { t, v }));
                }
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let (cpu, wait) = sched_secs_since(sched0, wall);
        runs_s.push((cpu, wall, wait));
        stats = Some(e.stats());
    }
    let Some(s) = stats else { return };
    let rate = |secs: f64| total as f64 / secs / 1e6;
    let cpu: Vec<f64> = runs_s.iter().map(|r| rate(r.0)).collect();
    let best = cpu.iter().copied().fold(0.0, f64::max);
    let worst = cpu.iter().copied().fold(f64::MAX, f64::min);
    let best_wall = runs_s.iter().map(|r| rate(r.1)).fold(0.0, f64::max);
    let waited = runs_s.iter().map(|r| r.2).sum::<f64>() / runs_s.iter().map(|r| r.1).sum::<f64>();
    let api_name = match api {
        EngineApi::Batch => "process_batch",
        EngineApi::Single => "process",
    };
    println!(
        "window engine (pure, one core, {clients} clients, {} readings/window, {api_name}, exact FA/FI)",
        600_000 / spacing_ms
    );
    println!(
        "  readings processed         {total} x {} runs",
        runs_s.len()
    );
    let verdict = match engine_target(clients, spacing_ms) {
        Some(t) if best >= t => format!("(target >= {t:.0} M: met)"),
        Some(t) => format!("(target >= {t:.0} M: NOT met)"),
        None => String::new(),
    };
    println!("  throughput                 {best:.1} M readings/s per CPU-second {verdict}");
    println!(
        "  spread over runs           {worst:.1}-{best:.1} M/s per CPU-second; wall clock best {best_wall:.1} M/s, waited for a CPU {:.0}% of the time",
        waited * 100.0
    );
    println!("  time per reading           {:.1} ns CPU", 1e3 / best);
    println!(
        "  per host calibration step  {:.4} readings (the throughput / the calibration row)",
        best / calibration
    );
    println!("  readings buffered          {}", s.readings);
    println!(
        "  state bytes per reading    {:.1} (reading buffers: capacity x 12 B; target <= 16)",
        s.reading_heap_bytes as f64 / s.readings as f64
    );
    println!(
        "  incl. per-client overhead  {:.1} (+ struct and key per client)",
        (s.reading_heap_bytes + s.overhead_bytes) as f64 / s.readings as f64
    );
}

/// The window kinds of issue 28 on one shape, measured in one run: M readings per
/// CPU-second of each, and its ratio to the sliding window (per-record `process`, the same
/// call the aligned kinds have), so a change shows which kind it moved.
pub(crate) fn engine_kinds(clients: usize, readings: usize, spacing_ms: i64, runs: usize) {
    use sensorflow_core::window::aligned::{AlignedConfig, AlignedEngine, AlignedKind, Emit};
    let keys: Vec<String> = (0..clients).map(|c| format!("client-{c:06}")).collect();
    let total = clients * readings;
    let mut input = Vec::with_capacity(total);
    for k in 0..readings {
        for c in 0..clients {
            let v = ((c * 31 + k * 17) % 1000) as f64 * 0.01;
            input.push((c, k as i64 * spacing_ms, v));
        }
    }
    let aligned = |kind, emit| AlignedConfig {
        kind,
        emit,
        grace_ms: 0,
        scope: WatermarkScope::Partition,
    };
    let tumbling = AlignedKind::Tumbling { size_ms: 600_000 };
    let hopping = AlignedKind::Hopping {
        size_ms: 600_000,
        advance_ms: 60_000,
    };
    let kinds: [(&str, Option<AlignedConfig>); 6] = [
        ("Sliding 10 min, per record", None),
        (
            "Tumbling 10 min, per record",
            Some(aligned(tumbling, Emit::PerRecord)),
        ),
        (
            "Tumbling 10 min, final",
            Some(aligned(tumbling, Emit::Final)),
        ),
        (
            "Hopping 10 min / 1 min, per record",
            Some(aligned(hopping, Emit::PerRecord)),
        ),
        (
            "Hopping 10 min / 1 min, final",
            Some(aligned(hopping, Emit::Final)),
        ),
        (
            "Global, per record",
            Some(aligned(AlignedKind::Global, Emit::PerRecord)),
        ),
    ];
    println!(
        "window kinds (pure, one core, {clients} clients, a reading per {} s each, process per reading, exact aggregates)",
        spacing_ms / 1000
    );
    let mut sliding = None;
    for (name, cfg) in kinds {
        let mut best = 0.0f64;
        let mut emitted = 0usize;
        for _ in 0..runs.max(1) {
            let sched0 = thread_sched_ns();
            let started = Instant::now();
            emitted = 0;
            match cfg {
                None => {
                    let mut e = WindowEngine::new(WindowConfig {
                        size_ms: 600_000,
                        grace_ms: 0,
                        scope: WatermarkScope::Partition,
                    });
                    for &(c, t, v) in &input {
                        black_box(e.process(0, &keys[c], Reading { t, v }));
                        emitted += 1;
                    }
                }
                Some(cfg) => {
                    let mut e = AlignedEngine::new(cfg);
                    let mut out = Vec::new();
                    for &(c, t, v) in &input {
                        out.clear();
                        let _ = black_box(e.process(0, &keys[c], Reading { t, v }, &mut out));
                        emitted += out.len();
                    }
                }
            }
            let (cpu, _) = sched_secs_since(sched0, started.elapsed().as_secs_f64());
            best = best.max(total as f64 / cpu / 1e6);
        }
        let base = *sliding.get_or_insert(best);
        println!(
            "  {name:<36} {best:6.1} M readings/s per CPU-second ({:.2}x the sliding window; {:.2} windows emitted per reading)",
            best / base,
            emitted as f64 / total as f64
        );
    }
}
