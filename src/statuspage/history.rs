//! The bounded in-memory run history behind the status page: a ring buffer
//! of compact run samples per journey, full detail for recent failures only.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::steps::{delivery, Delivery};
use crate::vocab::{ErrorType, Outcome, RunResult};

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

/// A run's step samples: up to two inline (no allocation per kept run for
/// most journeys), more on the heap.
#[derive(Debug, Clone)]
pub enum StepSamples {
    Inline(u8, [StepSample; 2]),
    Heap(Box<[StepSample]>),
}

impl StepSamples {
    fn new(samples: impl ExactSizeIterator<Item = StepSample>) -> StepSamples {
        let n = samples.len();
        if n > 2 {
            return StepSamples::Heap(samples.collect());
        }
        let blank = StepSample {
            ms: 0.0,
            outcome: Outcome::Success,
        };
        let mut inline = [blank; 2];
        for (slot, s) in inline.iter_mut().zip(samples) {
            *slot = s;
        }
        StepSamples::Inline(n as u8, inline)
    }
}

impl std::ops::Deref for StepSamples {
    type Target = [StepSample];
    fn deref(&self) -> &[StepSample] {
        match self {
            StepSamples::Inline(n, s) => &s[..*n as usize],
            StepSamples::Heap(s) => s,
        }
    }
}

/// One run, compact: 96 bytes, plus 8 per step beyond two.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Start of the run, Unix milliseconds.
    pub at_ms: u64,
    pub duration_ms: f32,
    pub outcome: Outcome,
    pub error_type: Option<ErrorType>,
    pub run_id: u128,
    pub trace_id: u128,
    /// Aligned with `names`.
    pub steps: StepSamples,
    pub names: Arc<[StepName]>,
    pub detail: Option<Box<Detail>>,
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

impl Entry {
    pub fn from_result(r: &RunResult, names: &Arc<[StepName]>) -> Entry {
        let steps = StepSamples::new(r.steps.iter().map(|s| StepSample {
            ms: ms(s.duration),
            outcome: s.outcome,
        }));
        let detail = (r.outcome == Outcome::Failure).then(|| {
            Box::new(Detail {
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
            })
        });
        Entry {
            at_ms: r
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            duration_ms: ms(r.duration),
            outcome: r.outcome,
            error_type: r.error_type,
            run_id: hex128(&r.run_id),
            trace_id: hex128(&r.trace_id),
            steps,
            names: names.clone(),
            detail,
        }
    }

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
            .map(|(_, s)| *s)
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

/// Run and trace ids are 32 hex digits; anything else is stored as 0.
fn hex128(s: &str) -> u128 {
    if s.len() == 32 {
        u128::from_str_radix(s, 16).unwrap_or(0)
    } else {
        0
    }
}

/// The kept runs of one journey, oldest first.
#[derive(Debug)]
pub struct History {
    cap: usize,
    runs: VecDeque<Entry>,
    names: Arc<[StepName]>,
    /// Runs recorded since the agent started (kept or not).
    pub total: u64,
}

impl History {
    pub fn new(cap: usize) -> History {
        History {
            cap: cap.max(1),
            runs: VecDeque::new(),
            names: Arc::from(Vec::new()),
            total: 0,
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn runs(&self) -> &VecDeque<Entry> {
        &self.runs
    }

    pub fn last(&self) -> Option<&Entry> {
        self.runs.back()
    }

    pub fn push(&mut self, r: &RunResult) {
        // Compared in place: the names rarely change, and this runs for every run.
        let same = self.names.len() == r.steps.len()
            && self.names.iter().zip(&r.steps).all(|(n, s)| {
                n.name == s.name && n.cleanup == s.cleanup && n.delivery == delivery(s.kind)
            });
        if !same {
            self.names = r
                .steps
                .iter()
                .map(|s| StepName {
                    name: s.name.clone(),
                    cleanup: s.cleanup,
                    delivery: delivery(s.kind),
                })
                .collect();
        }
        let entry = Entry::from_result(r, &self.names);
        if self.runs.len() == self.cap {
            self.runs.pop_front();
        }
        let detailed = entry.detail.is_some();
        self.runs.push_back(entry);
        self.total += 1;
        if detailed {
            self.trim_details();
        }
    }

    /// Drops the detail of the oldest failures beyond [`DETAILED_FAILURES`].
    fn trim_details(&mut self) {
        let mut seen = 0;
        for e in self.runs.iter_mut().rev() {
            if e.detail.is_some() {
                seen += 1;
                if seen > DETAILED_FAILURES {
                    e.detail = None;
                }
            }
        }
    }

    /// Share of kept runs that did not fail (degraded counts as good, as in the SLO).
    pub fn success_ratio(&self) -> Option<f64> {
        if self.runs.is_empty() {
            return None;
        }
        let good = self
            .runs
            .iter()
            .filter(|e| e.outcome != Outcome::Failure)
            .count();
        Some(good as f64 / self.runs.len() as f64)
    }

    /// Duration percentiles in milliseconds over the kept runs.
    pub fn percentiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        let mut v: Vec<f64> = self.runs.iter().map(|e| e.duration_ms as f64).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        qs.iter().map(|&q| percentile(&v, q)).collect()
    }

    /// The current outcome and the start of the streak of runs that share it.
    /// `complete` is false when the streak reaches back past the kept history.
    pub fn current_state(&self) -> Option<State> {
        let last = self.runs.back()?;
        let mut since = last.at_ms;
        let mut complete = false;
        for e in self.runs.iter().rev() {
            if e.outcome != last.outcome {
                complete = true;
                break;
            }
            since = e.at_ms;
        }
        Some(State {
            outcome: last.outcome,
            since_ms: since,
            complete: complete || self.total == self.runs.len() as u64,
        })
    }

    pub fn find(&self, run_id: u128) -> Option<&Entry> {
        self.runs.iter().rev().find(|e| e.run_id == run_id)
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
        assert!(Arc::ptr_eq(&h.runs()[0].names, &h.runs()[2].names));
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
        let names = |i: usize| h.runs()[i].names.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(0), ["lead in CRM", "pay"]);
        assert_eq!(names(1), ["lead in CRM", "checkout"]);
        assert_eq!(names(2), ["lead in CRM"]);
        assert_eq!(names(3), ["lead in CRM", "pay"]);
        assert!(!Arc::ptr_eq(&h.runs()[0].names, &h.runs()[3].names));
        assert_eq!(h.runs()[1].failed_step(), None);
    }

    #[test]
    fn step_samples_stay_inline_up_to_two_and_keep_their_order() {
        let sample = |i: u32| StepSample {
            ms: i as f32,
            outcome: Outcome::Success,
        };
        for n in 0..5u32 {
            let s = StepSamples::new((0..n).map(sample));
            assert_eq!(s.len(), n as usize);
            assert_eq!(s.iter().map(|x| x.ms as u32).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
            assert_eq!(matches!(s, StepSamples::Inline(..)), n <= 2);
        }
        // The compact record stays within the size its cost figures assume.
        assert!(std::mem::size_of::<Entry>() <= 96, "{}", std::mem::size_of::<Entry>());
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
        let d = h.last().unwrap().detail.as_ref().unwrap();
        assert_eq!(d.message, "step `pay`: expected status 200, got 503");
        assert_eq!(d.steps[1].phases, vec![("connect", 1.0), ("ttfb", 25.0)]);
        assert_eq!(d.steps[1].offset_ms, 50.0);
        assert_eq!(h.last().unwrap().failed_step(), Some("pay"));
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
        assert_eq!(s.since_ms, h.runs()[3].at_ms);
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
