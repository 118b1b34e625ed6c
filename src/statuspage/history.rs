//! The bounded in-memory run history behind the status page: a ring buffer
//! of compact run samples per journey, full detail for recent failures only.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::steps::{delivery, Delivery};
use crate::vocab::{attempt_trace_id, id128, ErrorType, Outcome, RunResult};

/// Failures per journey whose message, steps and phases are kept (the rest keep their sample).
pub const DETAILED_FAILURES: usize = 50;

/// One step of a journey as the history names it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepName {
    pub name: String,
    pub cleanup: bool,
    pub delivery: Option<Delivery>,
}

/// A step's sample in one run.
#[derive(Debug, Clone, Copy)]
pub struct StepSample {
    pub ms: f32,
    pub outcome: Outcome,
}

/// One kept run as the page reads it: a view into the history's storage.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Start of the run, Unix milliseconds.
    pub at_ms: u64,
    pub duration_ms: f32,
    pub outcome: Outcome,
    pub error_type: Option<ErrorType>,
    pub run_id: u128,
    /// 0 when tracing gave none.
    pub trace_id: u128,
    /// Aligned with `names`.
    pub steps: Samples<'a>,
    pub names: &'a [StepName],
    pub detail: Option<&'a Detail>,
}

/// The step samples of one kept run, stored packed (see [`pack`]).
#[derive(Debug, Clone, Copy)]
pub struct Samples<'a>(&'a [u32]);

impl<'a> Samples<'a> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<StepSample> {
        self.0.get(i).map(|&p| unpack(p))
    }

    pub fn iter(&self) -> impl Iterator<Item = StepSample> + 'a {
        self.0.iter().map(|&p| unpack(p))
    }
}

/// A step sample in 4 bytes: the duration's `f32` bits (never negative, so
/// the sign bit is free) with the outcome in the sign bit and the lowest
/// mantissa bit (costing one unit in the last place of the duration).
fn pack(s: StepSample) -> u32 {
    let ms = if s.ms.is_finite() && s.ms > 0.0 { s.ms } else { 0.0 };
    let o = match s.outcome {
        Outcome::Success => 0,
        Outcome::Degraded => 1,
        Outcome::Failure => 2,
    };
    (ms.to_bits() & 0x7fff_fffe) | ((o >> 1) << 31) | (o & 1)
}

fn unpack(p: u32) -> StepSample {
    let outcome = match ((p >> 31) << 1) | (p & 1) {
        0 => Outcome::Success,
        1 => Outcome::Degraded,
        _ => Outcome::Failure,
    };
    StepSample {
        ms: f32::from_bits(p & 0x7fff_fffe),
        outcome,
    }
}

/// What a failed run's page shows.
#[derive(Debug, Clone)]
pub struct Detail {
    pub message: String,
    pub cleanup_error: Option<String>,
    pub steps: Vec<StepDetail>,
}

#[derive(Debug, Clone)]
pub struct StepDetail {
    pub name: String,
    pub kind: &'static str,
    /// From the start of the run.
    pub offset_ms: f32,
    pub duration_ms: f32,
    pub outcome: Outcome,
    pub error_type: Option<ErrorType>,
    pub error: Option<String>,
    pub phases: Vec<(&'static str, f32)>,
    pub cleanup: bool,
    pub skipped: bool,
}

impl Detail {
    fn of(r: &RunResult) -> Detail {
        Detail {
            message: r.message.clone().unwrap_or_default(),
            cleanup_error: r.cleanup_error.clone(),
            steps: r
                .steps
                .iter()
                .map(|s| StepDetail {
                    name: s.name.clone(),
                    kind: s.kind,
                    offset_ms: ms(s.started.duration_since(r.started).unwrap_or_default()),
                    duration_ms: ms(s.duration),
                    outcome: s.outcome,
                    error_type: s.error_type,
                    error: s.error.clone(),
                    phases: s.phases.iter().map(|p| (p.name, ms(p.duration))).collect(),
                    cleanup: s.cleanup,
                    skipped: s.skipped,
                })
                .collect(),
        }
    }
}

impl Entry<'_> {
    pub fn run_id_hex(&self) -> String {
        format!("{:032x}", self.run_id)
    }

    /// The trace id, unless tracing gave none (all zeros).
    pub fn trace_id_hex(&self) -> Option<String> {
        (self.trace_id != 0).then(|| format!("{:032x}", self.trace_id))
    }

    /// The sample of the first step with this delivery role, and its duration.
    pub fn delivery(&self, role: Delivery) -> Option<StepSample> {
        self.names
            .iter()
            .zip(self.steps.iter())
            .find(|(n, _)| n.delivery == Some(role))
            .map(|(_, s)| s)
    }

    /// Name of the step that failed the run.
    pub fn failed_step(&self) -> Option<&str> {
        self.names
            .iter()
            .zip(self.steps.iter())
            .find(|(n, s)| !n.cleanup && s.outcome == Outcome::Failure)
            .map(|(n, _)| n.name.as_str())
    }
}

fn ms(d: Duration) -> f32 {
    (d.as_secs_f64() * 1000.0) as f32
}

/// Whether a run has the steps these names were taken from. Compared in
/// place: the names rarely change, and this runs for every run.
fn same_steps(names: &[StepName], r: &RunResult) -> bool {
    names.len() == r.steps.len()
        && names
            .iter()
            .zip(&r.steps)
            .all(|(n, s)| n.name == s.name && n.cleanup == s.cleanup && n.delivery == delivery(s.kind))
}

/// A run as stored: 28 bytes, its step samples (4 bytes each) beside it in its chunk.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// The run id as four words: a `u128` would align the record to 16 bytes.
    run_id: [u32; 4],
    /// Milliseconds after the chunk's `base_ms`.
    at_offset_ms: u32,
    duration_ms: f32,
    outcome: Outcome,
    error_type: Option<ErrorType>,
    trace: Trace,
    /// The run's attempts (`retries`), saturating.
    attempts: u8,
}

/// Where a kept run's trace id comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Trace {
    /// Tracing gave none.
    None,
    /// [`attempt_trace_id`] of the run id and its attempts, as the agent's runs are traced.
    Derived,
    /// Anything else (another tracer): kept in the history's `other_traces`.
    Other,
}

fn split(id: u128) -> [u32; 4] {
    [(id >> 96) as u32, (id >> 64) as u32, (id >> 32) as u32, id as u32]
}

fn join(w: [u32; 4]) -> u128 {
    w.iter().fold(0, |acc, &x| (acc << 32) | u128::from(x))
}

/// Runs per storage chunk. Chunks are allocated at this fixed size and never
/// grown, so a history that fills up reallocates nothing (a doubling buffer
/// left its old copies behind as heap fragments: about 40% of the history's
/// memory in the scheduler benchmark), and at most one chunk per journey is
/// part-empty.
const CHUNK: usize = 16;

/// Consecutive runs with the same steps, and those steps' names once.
#[derive(Debug)]
struct Chunk {
    /// Sequence number (runs since start) of `records[0]`.
    first_seq: u64,
    /// Unix milliseconds the records' start times count from.
    base_ms: u64,
    names: Arc<[StepName]>,
    records: Vec<Record>,
    /// `names.len()` packed samples per record, in record order.
    steps: Vec<u32>,
}

impl Chunk {
    fn entry<'a>(&'a self, i: usize, h: &'a History) -> Entry<'a> {
        let (r, details) = (&self.records[i], &h.details);
        let n = self.names.len();
        let seq = self.first_seq + i as u64;
        let run_id = join(r.run_id);
        Entry {
            at_ms: self.base_ms + u64::from(r.at_offset_ms),
            duration_ms: r.duration_ms,
            outcome: r.outcome,
            error_type: r.error_type,
            run_id,
            trace_id: match r.trace {
                Trace::None => 0,
                Trace::Derived => attempt_trace_id(run_id, u32::from(r.attempts)),
                Trace::Other => h.other_traces.iter().rev().find(|(s, _)| *s == seq).map_or(0, |(_, t)| *t),
            },
            steps: Samples(&self.steps[i * n..(i + 1) * n]),
            names: &self.names,
            detail: (r.outcome == Outcome::Failure)
                .then(|| details.iter().rev().find(|(s, _)| *s == seq).map(|(_, d)| &**d))
                .flatten(),
        }
    }
}

/// The kept runs of one journey, oldest first.
#[derive(Debug)]
pub struct History {
    cap: usize,
    chunks: VecDeque<Chunk>,
    /// Records at the front of the first chunk that fell out of the history.
    start: usize,
    len: usize,
    /// The detail of the last [`DETAILED_FAILURES`] failures, by sequence number, oldest first.
    details: VecDeque<(u64, Box<Detail>)>,
    /// Trace ids of kept runs not traced the agent's way ([`Trace::Other`]), by sequence number.
    other_traces: VecDeque<(u64, u128)>,
    /// Runs recorded since the agent started (kept or not).
    pub total: u64,
}

/// The kept runs of a [`History`], oldest first.
#[derive(Clone, Copy)]
pub struct Runs<'a>(&'a History);

impl<'a> Runs<'a> {
    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Entry<'a>> + Clone + 'a {
        let h = self.0;
        h.chunks.iter().enumerate().flat_map(move |(ci, c)| {
            let from = if ci == 0 { h.start } else { 0 };
            (from..c.records.len()).map(move |i| c.entry(i, h))
        })
    }

    pub fn front(&self) -> Option<Entry<'a>> {
        self.iter().next()
    }

    pub fn back(&self) -> Option<Entry<'a>> {
        let h = self.0;
        let c = h.chunks.back()?;
        (h.len > 0).then(|| c.entry(c.records.len() - 1, h))
    }

    /// The `i`th kept run, oldest first.
    pub fn get(&self, i: usize) -> Option<Entry<'a>> {
        self.iter().nth(i)
    }
}

impl History {
    pub fn new(cap: usize) -> History {
        History {
            cap: cap.max(1),
            chunks: VecDeque::new(),
            start: 0,
            len: 0,
            details: VecDeque::new(),
            other_traces: VecDeque::new(),
            total: 0,
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn runs(&self) -> Runs<'_> {
        Runs(self)
    }

    pub fn last(&self) -> Option<Entry<'_>> {
        self.runs().back()
    }

    pub fn push(&mut self, r: &RunResult) {
        let chunk_cap = CHUNK.min(self.cap);
        let at_ms = r.started.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        // A new chunk also when the start time does not fit the offset (weeks
        // between runs, or the clock set back).
        let fits = |c: &&Chunk| at_ms.checked_sub(c.base_ms).is_some_and(|d| d <= u64::from(u32::MAX));
        let same = self.chunks.back().filter(|c| same_steps(&c.names, r));
        if same.is_none_or(|c| c.records.len() >= chunk_cap || !fits(&c)) {
            let names = match same {
                Some(c) => c.names.clone(),
                None => r
                    .steps
                    .iter()
                    .map(|s| StepName {
                        name: s.name.clone(),
                        cleanup: s.cleanup,
                        delivery: delivery(s.kind),
                    })
                    .collect(),
            };
            // The chunk list grows one slot at a time: doubling would leave up
            // to half its slots (80 bytes each) unused for the journey's life,
            // 2.5 kB per journey at the default `history`.
            if self.chunks.len() == self.chunks.capacity() {
                self.chunks.reserve_exact(1);
            }
            self.chunks.push_back(Chunk {
                first_seq: self.total,
                base_ms: at_ms,
                records: Vec::with_capacity(chunk_cap),
                steps: Vec::with_capacity(chunk_cap * names.len()),
                names,
            });
        }
        let chunk = self.chunks.back_mut().expect("a chunk with room was just ensured");
        let (run_id, trace_id) = (id128(&r.run_id), id128(&r.trace_id));
        let attempts = u8::try_from(r.attempts).unwrap_or(u8::MAX);
        let trace = if trace_id == 0 {
            Trace::None
        } else if trace_id == attempt_trace_id(run_id, u32::from(attempts)) {
            Trace::Derived
        } else {
            self.other_traces.push_back((self.total, trace_id));
            Trace::Other
        };
        chunk.records.push(Record {
            run_id: split(run_id),
            at_offset_ms: (at_ms - chunk.base_ms) as u32,
            duration_ms: ms(r.duration),
            outcome: r.outcome,
            error_type: r.error_type,
            trace,
            attempts,
        });
        chunk.steps.extend(r.steps.iter().map(|s| {
            pack(StepSample {
                ms: ms(s.duration),
                outcome: s.outcome,
            })
        }));
        if r.outcome == Outcome::Failure {
            self.details.push_back((self.total, Box::new(Detail::of(r))));
            if self.details.len() > DETAILED_FAILURES {
                self.details.pop_front();
            }
        }
        self.total += 1;
        self.len += 1;
        if self.len > self.cap {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        self.start += 1;
        self.len -= 1;
        if self.start == self.chunks[0].records.len() {
            self.chunks.pop_front();
            self.start = 0;
        }
        let first = self.chunks[0].first_seq + self.start as u64;
        while self.details.front().is_some_and(|(s, _)| *s < first) {
            self.details.pop_front();
        }
        while self.other_traces.front().is_some_and(|(s, _)| *s < first) {
            self.other_traces.pop_front();
        }
    }

    /// Share of kept runs that did not fail (degraded counts as good, as in the SLO).
    pub fn success_ratio(&self) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let good = self
            .runs()
            .iter()
            .filter(|e| e.outcome != Outcome::Failure)
            .count();
        Some(good as f64 / self.len as f64)
    }

    /// Duration percentiles in milliseconds over the kept runs.
    pub fn percentiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        let mut v: Vec<f64> = self.runs().iter().map(|e| e.duration_ms as f64).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        qs.iter().map(|&q| percentile(&v, q)).collect()
    }

    /// The current outcome and the start of the streak of runs that share it.
    /// `complete` is false when the streak reaches back past the kept history.
    pub fn current_state(&self) -> Option<State> {
        let last = self.last()?;
        let mut since = last.at_ms;
        let mut complete = false;
        for e in self.runs().iter().rev() {
            if e.outcome != last.outcome {
                complete = true;
                break;
            }
            since = e.at_ms;
        }
        Some(State {
            outcome: last.outcome,
            since_ms: since,
            complete: complete || self.total == self.len as u64,
        })
    }

    pub fn find(&self, run_id: u128) -> Option<Entry<'_>> {
        self.runs().iter().rev().find(|e| e.run_id == run_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct State {
    pub outcome: Outcome,
    pub since_ms: u64,
    pub complete: bool,
}

/// Nearest-rank percentile of sorted values (`q` in 0..=1).
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vocab::{Phase, StepResult};

    pub fn run(n: u64, outcome: Outcome, ms: u64) -> RunResult {
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + n);
        let step = |name: &str, kind: &'static str, o: Outcome| StepResult {
            name: name.into(),
            kind,
            phase_recording: Default::default(),
            outcome: o,
            duration: Duration::from_millis(ms / 2),
            error_type: (o == Outcome::Failure).then_some(ErrorType::HttpStatus),
            error: (o == Outcome::Failure).then(|| "expected status 200, got 503".into()),
            phases: vec![
                Phase {
                    name: "connect",
                    duration: Duration::from_millis(1),
                },
                Phase {
                    name: "ttfb",
                    duration: Duration::from_millis(ms / 4),
                },
            ],
            cert_remaining_secs: None,
            attempts: None,
            cleanup: false,
            skipped: false,
            started: started + Duration::from_millis(ms / 2),
        };
        RunResult {
            journey: "shop".into(),
            run_id: format!("{n:032x}"),
            outcome,
            duration: Duration::from_millis(ms),
            error_type: (outcome == Outcome::Failure).then_some(ErrorType::HttpStatus),
            message: (outcome == Outcome::Failure)
                .then(|| "step `pay`: expected status 200, got 503".into()),
            steps: vec![
                step("lead in CRM", "eventually", Outcome::Success),
                step("pay", "http", outcome),
            ],
            cleanup_error: None,
            trace_id: format!("{:032x}", n + 0xabc),
            started,
            attempts: 1,
            failed_attempts: Vec::new(),
        }
    }

    #[test]
    fn ring_buffer_keeps_the_newest_runs_up_to_its_bound() {
        let mut h = History::new(3);
        for n in 0..5 {
            h.push(&run(n, Outcome::Success, 100));
        }
        assert_eq!(h.runs().len(), 3);
        assert_eq!(h.total, 5);
        let ids: Vec<u128> = h.runs().iter().map(|e| e.run_id).collect();
        assert_eq!(ids, vec![2, 3, 4]);
        assert_eq!(
            h.last().unwrap().trace_id_hex().unwrap(),
            format!("{:032x}", 4 + 0xabc)
        );
        // Runs of the same steps share one list of names.
        assert!(std::ptr::eq(h.runs().get(0).unwrap().names, h.runs().get(2).unwrap().names));
    }

    #[test]
    fn changed_steps_get_new_names_and_older_runs_keep_theirs() {
        let mut h = History::new(10);
        h.push(&run(0, Outcome::Success, 100));
        let mut renamed = run(1, Outcome::Success, 100);
        renamed.steps[1].name = "checkout".into();
        h.push(&renamed);
        let mut fewer = run(2, Outcome::Success, 100);
        fewer.steps.truncate(1);
        h.push(&fewer);
        h.push(&run(3, Outcome::Success, 100));
        let names = |i: usize| h.runs().get(i).unwrap().names.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(0), ["lead in CRM", "pay"]);
        assert_eq!(names(1), ["lead in CRM", "checkout"]);
        assert_eq!(names(2), ["lead in CRM"]);
        assert_eq!(names(3), ["lead in CRM", "pay"]);
        assert!(!std::ptr::eq(h.runs().get(0).unwrap().names, h.runs().get(3).unwrap().names));
        assert_eq!(h.runs().get(1).unwrap().failed_step(), None);
    }

    #[test]
    fn the_chunk_list_keeps_no_spare_slots() {
        let mut h = History::new(500);
        for n in 0..1200 {
            h.push(&run(n, Outcome::Success, 100));
            assert!(h.chunks.capacity() <= 500 / CHUNK + 2, "after run {n}: room for {} chunks, {} used", h.chunks.capacity(), h.chunks.len());
        }
        assert_eq!(h.runs().len(), 500);
    }

    #[test]
    fn a_run_is_stored_in_28_bytes_plus_4_per_step_in_fixed_chunks() {
        // The cost figures in the README assume these sizes.
        assert_eq!(std::mem::size_of::<Record>(), 28);
        let mut h = History::new(40);
        for n in 0..100 {
            h.push(&run(n, Outcome::Success, 100));
            let ids: Vec<u128> = h.runs().iter().map(|e| e.run_id).collect();
            let first = (n + 1).saturating_sub(40) as u128;
            assert_eq!(ids, (first..=n as u128).collect::<Vec<_>>(), "after run {n}");
            assert_eq!(h.runs().len(), ids.len());
            assert_eq!(h.runs().back().unwrap().run_id, n as u128);
            assert_eq!(h.runs().front().unwrap().run_id, first);
            // No chunk ever grows past its size, so none is reallocated.
            for c in &h.chunks {
                assert_eq!(c.records.capacity(), CHUNK);
                assert_eq!(c.steps.capacity(), CHUNK * 2);
            }
            // At most one part-empty chunk beyond the kept runs, at each end,
            // and no spare slots in the chunk list.
            assert!(h.chunks.len() <= 40 / CHUNK + 2, "{} chunks", h.chunks.len());
            assert!(h.chunks.capacity() <= 40 / CHUNK + 2, "room for {} chunks", h.chunks.capacity());
        }
        // Newest first, as the run table reads them.
        let newest: Vec<u128> = h.runs().iter().rev().take(3).map(|e| e.run_id).collect();
        assert_eq!(newest, [99, 98, 97]);
        assert_eq!(h.runs().get(0).unwrap().steps.len(), 2);
        assert_eq!(std::mem::size_of_val(&h.chunks[0].steps[0]), 4);
        // A history smaller than a chunk keeps chunks of its own size.
        let mut h = History::new(1);
        for n in 0..3 {
            h.push(&run(n, Outcome::Success, 100));
        }
        assert_eq!(h.chunks.len(), 1);
        assert_eq!(h.chunks[0].records.capacity(), 1);
        assert_eq!(h.last().unwrap().run_id, 2);
    }

    #[test]
    fn a_failure_loses_its_detail_when_it_falls_out_of_the_history() {
        let mut h = History::new(3);
        h.push(&run(0, Outcome::Failure, 100));
        assert!(h.last().unwrap().detail.is_some());
        for n in 1..3 {
            h.push(&run(n, Outcome::Success, 100));
        }
        assert_eq!(h.details.len(), 1);
        h.push(&run(3, Outcome::Success, 100));
        assert!(h.details.is_empty());
        assert!(h.runs().iter().all(|e| e.detail.is_none()));
    }

    #[test]
    fn only_recent_failures_keep_their_detail() {
        let mut h = History::new(500);
        for n in 0..(DETAILED_FAILURES as u64 + 10) {
            h.push(&run(n, Outcome::Failure, 100));
        }
        let detailed = h.runs().iter().filter(|e| e.detail.is_some()).count();
        assert_eq!(detailed, DETAILED_FAILURES);
        assert!(h.runs().front().unwrap().detail.is_none());
        let last = h.last().unwrap();
        let d = last.detail.unwrap();
        assert_eq!(d.message, "step `pay`: expected status 200, got 503");
        assert_eq!(d.steps[1].phases, vec![("connect", 1.0), ("ttfb", 25.0)]);
        assert_eq!(d.steps[1].offset_ms, 50.0);
        assert_eq!(h.last().unwrap().failed_step(), Some("pay"));
    }

    #[test]
    fn step_samples_pack_into_4_bytes_losing_at_most_one_unit_in_the_last_place() {
        for outcome in Outcome::ALL {
            for ms in [0.0_f32, 0.001, 1.5, 12.345, 1e6, 3.1e10, f32::MAX] {
                let back = unpack(pack(StepSample { ms, outcome }));
                assert_eq!(back.outcome, outcome, "{ms} {outcome:?}");
                assert!((back.ms - ms).abs() <= ms * f32::EPSILON, "{ms} came back as {}", back.ms);
            }
            // Nothing a clock can report turns into a negative or odd duration.
            for bad in [-1.0_f32, f32::NAN, f32::INFINITY] {
                let back = unpack(pack(StepSample { ms: bad, outcome }));
                assert_eq!((back.ms, back.outcome), (0.0, outcome));
            }
        }
    }

    #[test]
    fn trace_ids_derived_from_the_run_id_are_not_stored_and_others_are_kept_beside() {
        let mut h = History::new(3);
        let mut derived = run(1, Outcome::Success, 100);
        derived.trace_id = format!("{:032x}", attempt_trace_id(1, 1));
        let mut retried = run(2, Outcome::Success, 100);
        retried.attempts = 3;
        retried.trace_id = format!("{:032x}", attempt_trace_id(2, 3));
        let mut untraced = run(3, Outcome::Failure, 100);
        untraced.trace_id = String::new();
        h.push(&derived);
        h.push(&retried);
        h.push(&untraced);
        assert!(h.other_traces.is_empty());
        let traces: Vec<u128> = h.runs().iter().map(|e| e.trace_id).collect();
        assert_eq!(traces, [1, attempt_trace_id(2, 3), 0]);
        assert_eq!(h.last().unwrap().trace_id_hex(), None);
        // A trace id from another tracer is kept beside the run, and goes with it.
        h.push(&run(4, Outcome::Success, 100));
        assert_eq!(h.other_traces.len(), 1);
        assert_eq!(h.last().unwrap().trace_id, 4 + 0xabc);
        for n in 5..8 {
            h.push(&derived_run(n));
        }
        assert!(h.other_traces.is_empty());
        assert_eq!(h.runs().iter().map(|e| e.run_id).collect::<Vec<_>>(), [5, 6, 7]);
    }

    fn derived_run(n: u64) -> RunResult {
        let mut r = run(n, Outcome::Success, 100);
        r.trace_id = format!("{:032x}", attempt_trace_id(n as u128, 1));
        r
    }

    #[test]
    fn start_times_survive_weeks_between_runs_and_a_clock_set_back() {
        let mut h = History::new(10);
        let at = |e: Entry| e.at_ms;
        let mut r = run(0, Outcome::Success, 100);
        h.push(&r);
        let first = at(h.last().unwrap());
        r.started += Duration::from_secs(60 * 86_400);
        h.push(&r);
        r.started -= Duration::from_secs(90 * 86_400);
        h.push(&r);
        r.started += Duration::from_millis(1500);
        h.push(&r);
        let times: Vec<u64> = h.runs().iter().map(at).collect();
        let day = 86_400_000;
        assert_eq!(times, [first, first + 60 * day, first - 30 * day, first - 30 * day + 1500]);
        assert_eq!(h.chunks.len(), 3);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        let mut h = History::new(10);
        for (n, ms) in [300, 100, 200, 400].into_iter().enumerate() {
            h.push(&run(n as u64, Outcome::Success, ms));
        }
        assert_eq!(h.percentiles(&[0.5, 0.95]), vec![Some(200.0), Some(400.0)]);
    }

    #[test]
    fn state_and_ratio_follow_the_latest_streak() {
        let mut h = History::new(10);
        assert_eq!(h.current_state(), None);
        assert_eq!(h.success_ratio(), None);
        for (n, o) in [
            Outcome::Success,
            Outcome::Failure,
            Outcome::Degraded,
            Outcome::Failure,
            Outcome::Failure,
        ]
        .into_iter()
        .enumerate()
        {
            h.push(&run(n as u64, o, 100));
        }
        let s = h.current_state().unwrap();
        assert_eq!(s.outcome, Outcome::Failure);
        assert_eq!(s.since_ms, h.runs().get(3).unwrap().at_ms);
        assert!(s.complete);
        assert_eq!(h.success_ratio(), Some(0.4));
        // A streak longer than the kept history is only known to be at least that old.
        let mut h = History::new(2);
        for n in 0..4 {
            h.push(&run(n, Outcome::Success, 100));
        }
        assert!(!h.current_state().unwrap().complete);
    }

    #[test]
    fn delivery_steps_are_found_by_role() {
        let mut h = History::new(2);
        h.push(&run(1, Outcome::Success, 800));
        let e = h.last().unwrap();
        assert_eq!(e.delivery(Delivery::Arrived).unwrap().ms, 400.0);
        assert!(e.delivery(Delivery::Webhook).is_none());
    }
}
