//! The journey runner: runs a journey's steps in order within the run's
//! timeout, then its `finally` steps, and produces a [`RunResult`] with a
//! trace (root span `journey <name>`, one child span per step).

pub mod context;
pub mod result;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context as OtelContext, KeyValue, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{Journey, Step};
use crate::steps::attempt;
use crate::vocab::{fmt_dur, StepError, Verdict};
use context::{RunContext, RunEnv};
use result::{ErrorType, Outcome, RunResult, StepResult};

/// Why the main steps stopped early.
enum Interrupted {
    Timeout,
    Cancelled,
}

/// The result of a run, or `None` when the agent shut down mid-run (not counted).
pub async fn run_journey(journey: &Journey, env: Arc<RunEnv>, cancel: &CancellationToken) -> Option<RunResult> {
    let mut ctx = RunContext::new(env.clone(), &journey.name);
    let started_at = SystemTime::now();
    let started = Instant::now();
    let deadline = started + journey.timeout;

    let mut root_attrs = vec![
        KeyValue::new("journey.name", journey.name.clone()),
        KeyValue::new("synthetics.location", env.location.clone()),
        KeyValue::new("synthetics.run.id", ctx.run_id.clone()),
    ];
    root_attrs.extend(journey.labels.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
    let root = env
        .tracer
        .span_builder(format!("journey {}", journey.name))
        .with_kind(SpanKind::Internal)
        .with_attributes(root_attrs)
        .start(&env.tracer);
    let root_cx = OtelContext::new().with_span(root);
    let trace_id = root_cx.span().span_context().trace_id().to_string();

    // Register the run's token before any step, so an early webhook is kept.
    let callback_hub = env.callbacks.clone().filter(|_| journey.needs().callback_listener);
    if let Some(h) = &callback_hub {
        h.register(&ctx.run_id);
    }
    let mut steps: Vec<StepResult> = Vec::new();
    let mut failure: Option<(ErrorType, String)> = None;
    let mut degraded = false;

    let vars = async {
        for (name, t) in &journey.vars {
            let v = ctx.render(t)?;
            ctx.set_var(name, v, false);
        }
        Ok::<(), StepError>(())
    }
    .await;
    if let Err(e) = vars {
        failure = Some((e.error_type, format!("journey variables: {}", e.message)));
    }

    let interrupted = if failure.is_some() {
        None
    } else {
        let main = async {
            for step in &journey.steps {
                let r = run_step(&mut ctx, step, &root_cx, false, Some((deadline, journey.timeout))).await;
                let failed = r.outcome == Outcome::Failure;
                steps.push(r);
                if failed {
                    break;
                }
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Some(Interrupted::Cancelled),
            r = tokio::time::timeout_at(deadline.into(), main) => r.err().map(|_| Interrupted::Timeout),
        }
    };
    if let Some(why) = &interrupted {
        // The step in progress was dropped mid-flight: record it as such.
        if let Some(r) = finish_interrupted_step(&mut ctx, journey, &steps, matches!(why, Interrupted::Timeout)) {
            steps.push(r);
        }
    }
    for s in &steps {
        if s.outcome == Outcome::Failure && failure.is_none() {
            failure = Some((s.error_type.unwrap_or(ErrorType::Internal), format!("step `{}`: {}", s.name, s.error.clone().unwrap_or_default())));
        }
        degraded |= s.outcome == Outcome::Degraded;
    }
    if let (Some(Interrupted::Timeout), None) = (&interrupted, &failure) {
        failure = Some((ErrorType::Timeout, format!("journey timed out after {}", fmt_dur(journey.timeout))));
    }

    // Cleanup always runs, each step under its own timeout, even after a timeout or on shutdown.
    let mut cleanup_errors = Vec::new();
    for step in &journey.finally {
        let r = run_step(&mut ctx, step, &root_cx, true, None).await;
        if r.outcome == Outcome::Failure {
            cleanup_errors.push(format!("cleanup step `{}`: {}", r.name, r.error.clone().unwrap_or_default()));
        }
        steps.push(r);
    }
    ctx.state.close_all().await;
    if let Some(h) = &callback_hub {
        h.unregister(&ctx.run_id);
    }

    let root = root_cx.span();
    if matches!(interrupted, Some(Interrupted::Cancelled)) {
        root.set_attribute(KeyValue::new("synthetics.cancelled", true));
        root.end();
        return None;
    }
    let outcome = match (&failure, degraded) {
        (Some(_), _) => Outcome::Failure,
        (None, true) => Outcome::Degraded,
        (None, false) => Outcome::Success,
    };
    let message = failure.as_ref().map(|(_, m)| ctx.redact(m));
    let cleanup_error = (!cleanup_errors.is_empty()).then(|| ctx.redact(&cleanup_errors.join("; ")));
    root.set_attribute(KeyValue::new("outcome", outcome.as_str()));
    if let Some((et, _)) = &failure {
        root.set_attribute(KeyValue::new("error.type", et.as_str()));
        root.set_status(Status::error(message.clone().unwrap_or_default()));
    }
    if let Some(c) = &cleanup_error {
        root.set_attribute(KeyValue::new("synthetics.cleanup.error", c.clone()));
    }
    root.end();
    Some(RunResult {
        journey: journey.name.clone(),
        run_id: ctx.run_id.clone(),
        outcome,
        duration: started.elapsed(),
        error_type: failure.map(|(e, _)| e),
        message,
        steps,
        cleanup_error,
        trace_id,
        started: started_at,
    })
}

/// The step that was running when the run was interrupted, if any.
fn finish_interrupted_step(ctx: &mut RunContext, journey: &Journey, done: &[StepResult], timed_out: bool) -> Option<StepResult> {
    let step = journey.steps.get(done.len())?;
    let start = ctx.step_starts.get(&step.name).copied()?;
    let waiting = ctx.waiting_for;
    let msg = if timed_out {
        let during = if waiting.is_empty() { String::new() } else { format!(" while waiting for {waiting}") };
        format!("journey timeout of {} reached{during}", fmt_dur(journey.timeout))
    } else {
        "cancelled: the agent is shutting down".to_string()
    };
    let msg = ctx.redact(&msg);
    let span = ctx.trace_cx.span();
    span.set_attribute(KeyValue::new("outcome", "failure"));
    span.set_attribute(KeyValue::new("error.type", "timeout"));
    span.set_status(Status::error(msg.clone()));
    span.end();
    Some(StepResult {
        name: step.name.clone(),
        kind: step.kind.kind(),
        phase_recording: step.kind.info().phases,
        outcome: Outcome::Failure,
        duration: start.elapsed(),
        error_type: Some(ErrorType::Timeout),
        error: Some(msg),
        phases: Vec::new(),
        cert_remaining_secs: None,
        attempts: None,
        cleanup: false,
        skipped: false,
        started: SystemTime::now() - start.elapsed(),
    })
}

/// `deadline` is the run's (instant, timeout); a step never outlives it.
async fn run_step(ctx: &mut RunContext, step: &Step, parent: &OtelContext, cleanup: bool, deadline: Option<(Instant, Duration)>) -> StepResult {
    let env = ctx.env.clone();
    let span = env
        .tracer
        .span_builder(format!("step {}", step.name))
        .with_kind(step.kind.info().span_kind.clone())
        .with_attributes(vec![
            KeyValue::new("step.name", step.name.clone()),
            KeyValue::new("step.kind", step.kind.kind()),
            KeyValue::new("synthetics.step.cleanup", cleanup),
        ])
        .start_with_context(&env.tracer, parent);
    ctx.trace_cx = parent.with_span(span);
    ctx.waiting_for = "";
    let started_at = SystemTime::now();
    let started = Instant::now();
    ctx.step_starts.insert(step.name.clone(), started);

    let step_limit = step.timeout.or_else(|| step.kind.default_timeout()).unwrap_or(env.default_step_timeout);
    let run_left = deadline.map(|(d, _)| d.saturating_duration_since(started));
    let limit = run_left.map_or(step_limit, |left| left.min(step_limit));
    ctx.step_deadline = Some(started + limit);
    let res = match tokio::time::timeout(limit, attempt(ctx, step)).await {
        Ok(r) => r,
        Err(_) => {
            let during = if ctx.waiting_for.is_empty() { String::new() } else { format!(" while waiting for {}", ctx.waiting_for) };
            let msg = match deadline {
                Some((_, run_timeout)) if limit < step_limit => format!("journey timeout of {} reached{during}", fmt_dur(run_timeout)),
                _ => format!("timed out after {}{during}", fmt_dur(limit)),
            };
            Err(StepError::new(ErrorType::Timeout, msg))
        }
    };
    let duration = started.elapsed();

    let mut skipped = false;
    let (outcome, error_type, error, phases, cert, attempts, attrs, reported) = match res {
        // Nothing to clean up: the step that would have created it never ran.
        Err(e) if cleanup && e.unset_variable.is_some() => {
            skipped = true;
            (Outcome::Success, None, None, Vec::new(), None, None, vec![KeyValue::new("synthetics.step.skipped", true)], None)
        }
        Ok((obs, verdict)) => {
            let outcome = if verdict == Verdict::Degraded { Outcome::Degraded } else { Outcome::Success };
            (outcome, None, None, obs.phases, obs.cert_not_after, obs.attempts, obs.attributes, obs.reported_duration)
        }
        Err(e) => {
            let partial = e.observation.map(|b| *b).unwrap_or_default();
            let msg = ctx.redact(&e.message);
            (Outcome::Failure, Some(e.error_type), Some(msg), partial.phases, partial.cert_not_after, partial.attempts, partial.attributes, None)
        }
    };
    let cert_remaining_secs = cert.map(crate::vocab::remaining_secs);

    let span = ctx.trace_cx.span();
    for kv in attrs {
        span.set_attribute(redact_kv(ctx, kv));
    }
    for p in &phases {
        span.set_attribute(KeyValue::new(format!("synthetics.phase.{}_ms", p.name), p.duration.as_secs_f64() * 1000.0));
    }
    if let Some(s) = cert_remaining_secs {
        span.set_attribute(KeyValue::new("tls.server.cert.remaining_s", s));
    }
    if let Some(a) = attempts {
        span.set_attribute(KeyValue::new("synthetics.attempts", a as i64));
    }
    span.set_attribute(KeyValue::new("outcome", outcome.as_str()));
    if let (Some(et), Some(msg)) = (error_type, &error) {
        span.set_attribute(KeyValue::new("error.type", et.as_str()));
        span.set_status(Status::error(msg.clone()));
    }
    span.end();
    ctx.trace_cx = parent.clone();

    StepResult {
        name: step.name.clone(),
        kind: step.kind.kind(),
        phase_recording: step.kind.info().phases,
        outcome,
        duration: reported.unwrap_or(duration),
        error_type,
        error,
        phases,
        cert_remaining_secs,
        attempts,
        cleanup,
        skipped,
        started: started_at,
    }
}

fn redact_kv(ctx: &RunContext, kv: KeyValue) -> KeyValue {
    match &kv.value {
        Value::String(s) => {
            let r = ctx.redact(s.as_str());
            if r != s.as_str() {
                return KeyValue::new(kv.key, r);
            }
            kv
        }
        _ => kv,
    }
}

/// Default per-step timeout when neither step nor agent sets one.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);
