//! `eventually` step: repeats an inner step until it passes or a deadline
//! passes, with exponential backoff. For asynchronous pipelines, e.g. "the
//! lead shows up in the CRM within 30 s".

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::config::model::EventuallySpec;
use crate::config::validate::{compile_step, Checker};
use crate::config::Step;
use crate::runner::attempt;
use crate::runner::context::RunContext;
use crate::runner::result::ErrorType;
use crate::steps::assertions::fmt_dur;
use crate::steps::{Observation, StepError, StepKind};

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
        let deadline = cut.map_or(started + self.within, |c| c.min(started + self.within));
        let mut backoff = self.backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
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
            let now = Instant::now();
            if now + backoff >= deadline {
                let mut e = StepError::new(
                    last.error_type,
                    format!(
                        "gave up after {} and {attempts} attempt{} of `{}`; last attempt: {}",
                        fmt_dur(started.elapsed()),
                        if attempts == 1 { "" } else { "s" },
                        self.inner.name,
                        last.message
                    ),
                );
                let mut partial = last.observation.map(|b| *b).unwrap_or_default();
                partial.attempts = Some(attempts);
                e.observation = Some(Box::new(partial));
                return Err(e);
            }
            ctx.waiting_for = "the next attempt";
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }
}

impl StepKind for EventuallyStep {
    fn kind(&self) -> &'static str {
        "eventually"
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        self.inner.kind.error_types()
    }
    fn default_timeout(&self) -> Option<Duration> {
        Some(self.within + Duration::from_secs(1))
    }
}
