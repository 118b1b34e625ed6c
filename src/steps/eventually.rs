//! `eventually` step: repeats an inner step until it passes or a deadline
//! passes, with exponential backoff. For asynchronous pipelines, e.g. "the
//! lead shows up in the CRM within 30 s".

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::config::model::Dur;
use crate::steps::compile::{compile_step, Checker, Step, StepCx};
use crate::steps::context::RunContext;
use crate::steps::StepSpec;
use crate::steps::{attempt, KindInfo, Needs, StepKind};
use crate::vocab::{fmt_dur, ErrorType, Observation, StepError};
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventuallySpec {
    /// Give up after this long.
    pub within: Dur,
    #[serde(default = "default_backoff_initial")]
    pub backoff: Dur,
    #[serde(default = "default_backoff_max")]
    pub max_backoff: Dur,
    #[schemars(with = "StepSpec")]
    pub step: Spanned<StepSpec>,
}

fn default_backoff_initial() -> Dur {
    Dur(Duration::from_millis(250))
}

fn default_backoff_max() -> Dur {
    Dur(Duration::from_secs(5))
}

/// What `eventually` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo = KindInfo { name: "eventually", span_kind: opentelemetry::trace::SpanKind::Internal, needs: Needs::NONE, phases: crate::vocab::PhaseRecording::None, default_status: None };

/// Builds a `eventually` step from its config (the registry calls this).
pub fn compile(spec: &EventuallySpec, step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
    EventuallyStep::compile(spec, step.journey, c).map(|k| Box::new(k) as _)
}

#[derive(Debug)]
pub struct EventuallyStep {
    within: Duration,
    backoff: Duration,
    max_backoff: Duration,
    inner: Box<Step>,
}

impl EventuallyStep {
    pub fn compile(spec: &EventuallySpec, journey: &str, c: &mut Checker) -> Option<EventuallyStep> {
        if spec.backoff.0.is_zero() || spec.backoff.0 > spec.max_backoff.0 {
            c.error("eventually.backoff", "expected a positive duration no larger than `max_backoff`");
        }
        c.check_wait("eventually.within", spec.within.0);
        let inner = compile_step(c, journey, &spec.step)?;
        Some(EventuallyStep { within: spec.within.0, backoff: spec.backoff.0, max_backoff: spec.max_backoff.0, inner: Box::new(inner) })
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let started = Instant::now();
        // Give up with a full message shortly before the step would be cut off.
        let cut = ctx.step_deadline.map(|d| d.checked_sub(Duration::from_millis(50)).unwrap_or(d));
        let until = crate::vocab::later(started, self.within);
        let deadline = cut.map_or(until, |c| c.min(until));
        let mut backoff = self.backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let tried_at = Instant::now();
            let per_try = self.inner.timeout.or_else(|| self.inner.kind.default_timeout()).unwrap_or(ctx.env.default_step_timeout).min(deadline.saturating_duration_since(Instant::now()));
            let last = match tokio::time::timeout(per_try, attempt(ctx, &self.inner)).await {
                Ok(Ok((mut obs, _))) => {
                    obs.attempts = Some(attempts);
                    obs.reported_duration = Some(started.elapsed());
                    return Ok(obs);
                }
                Ok(Err(e)) => e,
                Err(_) => StepError::new(ErrorType::Timeout, format!("attempt timed out after {}", fmt_dur(per_try))),
            };
            // The last wait ends just before the deadline, with room for one more
            // attempt as long as this one took: giving up while time is left
            // would report "not within" for a lead that arrives in that time.
            let reserve = tried_at.elapsed().max(Duration::from_millis(50));
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining <= reserve {
                let tries = format!("{attempts} attempt{} of `{}`", if attempts == 1 { "" } else { "s" }, self.inner.name);
                // The configured wait is what the reader set and compares with; say the elapsed
                // time only when the run's own time ran out first.
                let how = if deadline < until {
                    format!("gave up after {}, before its `within` of {} was over, because the run's time ran out", fmt_dur(started.elapsed()), fmt_dur(self.within))
                } else {
                    format!("did not succeed within {} (its `within`)", fmt_dur(self.within))
                };
                let mut e = StepError::new(last.error_type, format!("{how}: {tries}; last attempt: {}", last.message));
                let mut partial = last.observation.map(|b| *b).unwrap_or_default();
                partial.attempts = Some(attempts);
                e.observation = Some(Box::new(partial));
                return Err(e);
            }
            ctx.waiting_for = "the next attempt";
            tokio::time::sleep(backoff.min(remaining - reserve)).await;
            backoff = backoff.saturating_mul(2).min(self.max_backoff);
        }
    }
}

impl StepKind for EventuallyStep {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }
    fn nested(&self) -> Vec<&Step> {
        vec![&self.inner]
    }
    fn configured_wait(&self) -> Option<Duration> {
        Some(self.within)
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        self.inner.kind.error_types()
    }
    fn default_timeout(&self) -> Option<Duration> {
        Some(self.within.saturating_add(Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use crate::steps::attempt;
    use crate::steps::compile::test_step;
    use crate::steps::context::RunContext;
    use crate::vocab::ErrorType;

    #[tokio::test]
    async fn retries_until_within_then_reports_the_last_error_and_attempts() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let step = test_step(&format!("name: wait\neventually:\n  within: 400ms\n  backoff: 50ms\n  step:\n    name: inner\n    tcp: {{address: \"127.0.0.1:{port}\"}}\n"));
        assert_eq!(step.kind.nested().len(), 1);
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("nothing listens");
        assert_eq!(e.error_type, ErrorType::Connect, "{}", e.message);
        let attempts = e.observation.as_ref().and_then(|o| o.attempts).unwrap_or(0);
        assert!(attempts >= 2, "attempts {attempts}: {}", e.message);
        // The configured wait, not the time it took to give up.
        let said = format!("did not succeed within 400ms (its `within`): {attempts} attempts of `inner`; last attempt: could not connect to 127.0.0.1:{port}");
        assert!(e.message.starts_with(&said), "{}", e.message);
    }

    /// With `within: 1s` and a backoff that would jump past it (0.4 s, then
    /// 0.8 s), the last attempt is made just before the deadline instead of
    /// giving up at 0.4 s: a target that comes up at 0.7 s passes.
    #[tokio::test]
    async fn the_last_attempt_is_made_before_the_deadline_not_skipped() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let up = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(700));
            let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1500));
            drop(l);
        });
        let step = test_step(&format!("name: wait\neventually:\n  within: 1s\n  backoff: 400ms\n  max_backoff: 2s\n  step:\n    name: inner\n    tcp: {{address: \"127.0.0.1:{port}\"}}\n"));
        let started = std::time::Instant::now();
        let obs = attempt(&mut RunContext::new_test(), &step).await.map(|(o, _)| o);
        let took = started.elapsed();
        let obs = obs.unwrap_or_else(|e| panic!("gave up after {took:?}: {}", e.message));
        assert_eq!(obs.attempts, Some(3), "attempts at 0 s, 0.4 s and just before 1 s");
        assert!(took < std::time::Duration::from_millis(1000), "{took:?}");
        up.join().unwrap();
    }
}
