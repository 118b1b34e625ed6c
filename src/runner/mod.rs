//! The journey runner: runs a journey's steps in order within the run's
//! timeout, then its `finally` steps, and produces a [`RunResult`] with a
//! trace (root span `journey <name>`, one child span per step).

pub mod ids;
pub mod context;
pub mod result;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context as OtelContext, KeyValue, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{Journey, Step};
use crate::steps::attempt;
use crate::steps::context::DeadlineReason;
use crate::vocab::{fmt_dur, StepError, Verdict};
use context::{RunContext, RunEnv};
use result::{ErrorType, Outcome, RunResult, StepResult};

/// Why the main steps stopped early.
enum Interrupted {
    Timeout,
    Cancelled,
}

/// The result of a run, or `None` when the agent shut down mid-run (not counted).
///
/// With `retries`, a failed attempt is run again from the start (its
/// `finally` steps ran after it) after `delay`, up to `attempts` times; the
/// result is the last attempt's, with how many attempts it took. Every
/// attempt has its own root span, tied to the others by `synthetics.run.id`.
pub async fn run_journey(
    journey: &Journey,
    env: Arc<RunEnv>,
    cancel: &CancellationToken,
) -> Option<RunResult> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let max = journey.retries.map_or(1, |r| r.attempts.max(1));
    let mut earlier = Vec::new();
    let mut attempt = 1;
    let slot_start = Instant::now();
    loop {
        let mut r = run_attempt_guarded(journey, env.clone(), cancel, &run_id, attempt).await?;
        r.attempts = attempt;
        let delay = journey.retries.map(|r| r.delay).unwrap_or_default();
        // Retries stay within the run's schedule slot (`check` ensures they fit; this guards the slow case).
        let fits = slot_start
            .elapsed()
            .saturating_add(delay)
            .saturating_add(journey.timeout)
            <= journey.interval;
        if r.outcome != Outcome::Failure || attempt >= max || !fits {
            r.failed_attempts = earlier;
            return Some(r);
        }
        earlier.push(format!(
            "attempt {attempt}: {}: {}",
            r.error_type.map(|e| e.as_str()).unwrap_or("internal"),
            r.message.as_deref().unwrap_or("")
        ));
        tracing::info!(journey = %journey.name, run_id = %run_id, attempt, "attempt failed; retrying in {}", fmt_dur(delay));
        tokio::select! {
            biased;
            // Shutting down: the failure is real, report it without more attempts.
            _ = cancel.cancelled() => {
                r.failed_attempts = earlier;
                r.failed_attempts.pop();
                return Some(r);
            }
            _ = tokio::time::sleep(delay) => {}
        }
        attempt += 1;
    }
}

/// One attempt; a panic anywhere in it becomes an `internal` failure instead
/// of killing the task (which would leave the journey "running" for ever).
async fn run_attempt_guarded(
    journey: &Journey,
    env: Arc<RunEnv>,
    cancel: &CancellationToken,
    run_id: &str,
    attempt: u32,
) -> Option<RunResult> {
    let started_at = SystemTime::now();
    let started = Instant::now();
    match AssertUnwindSafe(run_attempt(journey, env, cancel, run_id, attempt))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(payload) => {
            let msg = format!(
                "internal error: the agent panicked during the run: {}",
                panic_message(payload.as_ref())
            );
            tracing::error!(journey = %journey.name, run_id = %run_id, "{msg}");
            Some(RunResult {
                journey: journey.name.clone(),
                run_id: run_id.to_string(),
                outcome: Outcome::Failure,
                duration: started.elapsed(),
                error_type: Some(ErrorType::Internal),
                message: Some(msg),
                steps: Vec::new(),
                cleanup_error: None,
                trace_id: String::new(),
                started: started_at,
                attempts: attempt,
                failed_attempts: Vec::new(),
            })
        }
    }
}

/// The text of a panic payload (`panic!("…")` carries a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

async fn run_attempt(
    journey: &Journey,
    env: Arc<RunEnv>,
    cancel: &CancellationToken,
    run_id: &str,
    attempt: u32,
) -> Option<RunResult> {
    let mut ctx = RunContext::new(env.clone(), &journey.name);
    ctx.run_id = run_id.to_string();
    let started_at = SystemTime::now();
    let started = Instant::now();
    let deadline = crate::vocab::later(started, journey.timeout);

    let fixed = journey.span_attributes();
    let mut root_attrs = Vec::with_capacity(fixed.len() + 3);
    root_attrs.push(fixed[0].clone());
    root_attrs.extend([
        KeyValue::new("synthetics.location", env.location.clone()),
        KeyValue::new("synthetics.run.id", ctx.run_id.clone()),
        KeyValue::new("synthetics.run.attempt", attempt as i64),
    ]);
    root_attrs.extend(fixed[1..].iter().cloned());
    let root = env
        .tracer
        .span_builder(format!("journey {}", journey.name))
        .with_kind(SpanKind::Internal)
        .with_attributes(root_attrs);
    let trace = crate::vocab::attempt_trace_id(crate::vocab::id128(run_id), attempt);
    let root = ids::with_trace_id(trace, || root.start(&env.tracer));
    let root_cx = OtelContext::new().with_span(root);
    let trace_id = root_cx.span().span_context().trace_id().to_string();

    // Register the run's token before any step, so an early webhook is kept.
    let callback_hub = env.callbacks().cloned().filter(|_| journey.needs().callback_listener);
    if let Some(h) = &callback_hub {
        h.register(&ctx.callback_token);
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
        h.unregister(&ctx.callback_token);
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
        attempts: attempt,
        failed_attempts: Vec::new(),
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
    ctx.step_deadline = Some(crate::vocab::later(started, limit));
    ctx.step_deadline_reason = match deadline {
        Some((_, run_timeout)) if limit < step_limit => DeadlineReason::JourneyTimeout(run_timeout),
        _ => DeadlineReason::StepLimit(limit),
    };
    let raw =
        tokio::time::timeout(limit, AssertUnwindSafe(attempt(ctx, step)).catch_unwind()).await;
    let res = match raw {
        Ok(Ok(r)) => r,
        Ok(Err(payload)) => {
            let msg = format!(
                "internal error: the agent panicked in this step: {}",
                panic_message(payload.as_ref())
            );
            tracing::error!(journey = %ctx.journey, run_id = %ctx.run_id, step = %step.name, "{msg}");
            Err(StepError::new(ErrorType::Internal, msg))
        }
        Err(_) => Err(StepError::new(ErrorType::Timeout, ctx.deadline_message())),
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
            let msg = crate::vocab::clean_text(&ctx.redact(&e.message));
            (Outcome::Failure, Some(e.error_type), Some(msg), partial.phases, partial.cert_not_after, partial.attempts, partial.attributes, None)
        }
    };
    let cert_remaining_secs = cert.map(crate::vocab::remaining_secs);

    let span = ctx.trace_cx.span();
    for kv in attrs {
        span.set_attribute(redact_kv(ctx, kv));
    }
    for p in &phases {
        span.set_attribute(KeyValue::new(phase_key(p.name), p.duration.as_secs_f64() * 1000.0));
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

/// `synthetics.phase.<name>_ms`, made once per phase name (a fixed set): each
/// step span, and the exporter's copy of it, shares the string.
fn phase_key(name: &'static str) -> opentelemetry::Key {
    static KEYS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<&'static str, opentelemetry::Key>>> = std::sync::LazyLock::new(Default::default);
    KEYS.lock()
        .expect("phase keys")
        .entry(name)
        .or_insert_with(|| opentelemetry::Key::from(Arc::<str>::from(format!("synthetics.phase.{name}_ms"))))
        .clone()
}

fn redact_kv(ctx: &RunContext, kv: KeyValue) -> KeyValue {
    match &kv.value {
        Value::String(s) => {
            let redacted = ctx.redactor().redacted_if_changed(s.as_str());
            let text = redacted.as_deref().unwrap_or(s.as_str());
            if !crate::vocab::is_clean(text) {
                return KeyValue::new(kv.key, crate::vocab::clean_text(text));
            }
            match redacted {
                Some(r) => KeyValue::new(kv.key, r),
                None => kv,
            }
        }
        _ => kv,
    }
}

/// Default per-step timeout when neither step nor agent sets one.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::future::BoxFuture;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::sync::CancellationToken;

    use super::run_journey;
    use crate::config::validate::compile_files;
    use crate::config::Journey;
    use crate::steps::context::{RunContext, RunEnv};
    use crate::steps::{KindInfo, Needs, StepKind};
    use crate::vocab::{ErrorType, Observation, Outcome, PhaseRecording, StepError};

    /// A step kind that panics: stands for a bug anywhere inside a run.
    /// Test-only, so no probe file can name it.
    #[derive(Debug)]
    pub struct PanicStep;

    pub const PANIC_INFO: KindInfo = KindInfo {
        name: "panic",
        span_kind: opentelemetry::trace::SpanKind::Internal,
        needs: Needs::NONE,
        phases: PhaseRecording::None,
        default_status: None,
    };

    impl StepKind for PanicStep {
        fn info(&self) -> &'static KindInfo {
            &PANIC_INFO
        }
        fn execute<'a>(
            &'a self,
            _: &'a mut RunContext,
        ) -> BoxFuture<'a, Result<Observation, StepError>> {
            Box::pin(async { panic!("page reported an absurd number") })
        }
        fn error_types(&self) -> &'static [ErrorType] {
            &[]
        }
    }

    pub fn journey(yaml: &str) -> Journey {
        compile_files(&[("t.yaml".into(), yaml.into())])
            .map_err(|d| format!("{d:?}"))
            .expect("valid")
            .remove(0)
    }

    /// Counts connections; answers each with the next of `replies` (the last one repeats).
    async fn tcp_server(replies: &'static [&'static str]) -> (u16, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let n = Arc::new(AtomicUsize::new(0));
        let count = n.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let i = count.fetch_add(1, Ordering::SeqCst);
                let reply = replies[i.min(replies.len() - 1)];
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        (port, n)
    }

    #[tokio::test]
    async fn a_panicking_step_fails_the_run_as_internal_and_cleanup_still_runs() {
        let (port, conns) = tcp_server(&["bye"]).await;
        let mut j = journey(&format!(
            "journeys:\n  - name: j\n    interval: 10s\n    steps:\n      - {{name: boom, tcp: {{address: \"127.0.0.1:1\"}}}}\n    finally:\n      - {{name: clean, tcp: {{address: \"127.0.0.1:{port}\", expect: bye}}}}\n"
        ));
        j.steps[0].kind = Box::new(PanicStep);
        let r = run_journey(&j, Arc::new(RunEnv::new_test()), &CancellationToken::new())
            .await
            .expect("a result");
        assert_eq!(
            (r.outcome, r.error_type),
            (Outcome::Failure, Some(ErrorType::Internal))
        );
        let m = r.message.unwrap_or_default();
        assert!(m.contains("step `boom`: internal error: the agent panicked in this step: page reported an absurd number"), "{m}");
        assert_eq!(conns.load(Ordering::SeqCst), 1, "the finally step ran");
        assert!(r.steps[1].cleanup && r.steps[1].outcome == Outcome::Success);
    }

    #[tokio::test]
    async fn a_failed_run_is_retried_from_the_start_and_reports_its_attempts() {
        // The first connection answers wrong, the second right.
        let (port, conns) = tcp_server(&["NO", "OK"]).await;
        let (fport, cleanups) = tcp_server(&["bye"]).await;
        let j = journey(&format!(
            "journeys:\n  - name: j\n    interval: 10s\n    timeout: 2s\n    retries: {{attempts: 3, delay: 50ms}}\n    steps:\n      - {{name: ask, tcp: {{address: \"127.0.0.1:{port}\", expect: OK}}}}\n    finally:\n      - {{name: clean, tcp: {{address: \"127.0.0.1:{fport}\", expect: bye}}}}\n"
        ));
        let r = run_journey(&j, Arc::new(RunEnv::new_test()), &CancellationToken::new())
            .await
            .expect("a result");
        assert_eq!(r.outcome, Outcome::Success, "{:?}", r.message);
        assert_eq!(r.attempts, 2);
        assert!(r.retried());
        assert_eq!(r.failed_attempts.len(), 1);
        assert!(
            r.failed_attempts[0].starts_with("attempt 1: assertion: step `ask`: expected `OK`"),
            "{}",
            r.failed_attempts[0]
        );
        assert_eq!(
            (
                conns.load(Ordering::SeqCst),
                cleanups.load(Ordering::SeqCst)
            ),
            (2, 2),
            "finally runs after each attempt"
        );

        // Always failing: every attempt is made, the last one is the result.
        let (port, conns) = tcp_server(&["NO"]).await;
        let j = journey(&format!(
            "journeys:\n  - name: j\n    interval: 10s\n    timeout: 2s\n    retries: {{attempts: 3, delay: 10ms}}\n    steps:\n      - {{name: ask, tcp: {{address: \"127.0.0.1:{port}\", expect: OK}}}}\n"
        ));
        let r = run_journey(&j, Arc::new(RunEnv::new_test()), &CancellationToken::new())
            .await
            .expect("a result");
        assert_eq!(
            (r.outcome, r.error_type, r.attempts, r.failed_attempts.len()),
            (Outcome::Failure, Some(ErrorType::Assertion), 3, 2)
        );
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_environment_builds_only_what_the_loaded_journeys_declare() {
        use opentelemetry::trace::TracerProvider;
        let tcp = journey("journeys:\n  - name: t\n    interval: 10s\n    steps:\n      - {name: a, tcp: {address: \"127.0.0.1:1\"}}\n");
        assert_eq!(Needs::of([&tcp]), Needs::RESOLVER);
        let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder().build().tracer("t");
        let env = RunEnv::build(&Default::default(), tracer, None, Default::default());
        env.prepare(Needs::of([&tcp])).expect("resolver");
        assert!(env.resolver.get().is_some());
        assert!(env.tls.get().is_none() && env.browser_if_made().is_none(), "no TLS roots, no browser for a tcp journey");

        // A browser step nested in `eventually` counts like any other.
        let page = journey("journeys:\n  - name: p\n    interval: 600s\n    timeout: 60s\n    steps:\n      - name: e\n        eventually:\n          within: 30s\n          step: {name: open, browser: {navigate: \"http://127.0.0.1:1/\"}}\n");
        let needs = Needs::of([&tcp, &page]);
        assert!(needs.browser && needs.resolver && !needs.tls && !needs.callback_listener, "{needs:?}");
        env.prepare(needs).expect("browser manager");
        let made = env.browser_if_made().expect("a browser manager for the browser step");
        env.prepare(needs).expect("again");
        assert!(Arc::ptr_eq(&made, env.browser()), "built once");
        assert_eq!(made.counts(), (0, 0), "no chromedriver until a session is needed");
        env.shutdown().await;
    }

    /// Echoes text messages, on any number of connections.
    async fn echo_server() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for _ in 0..10 {
                let Ok((s, _)) = l.accept().await else { return };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() && ws.send(m).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    /// Posts `token`'s webhook until the hub accepts it (it is registered when the step starts).
    fn send_webhook(
        addr: std::net::SocketAddr,
        token: &'static str,
    ) -> tokio::task::JoinHandle<bool> {
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for _ in 0..100 {
                let sent = client
                    .post(format!("http://{addr}/hook?token={token}"))
                    .body("{\"lead\":1}")
                    .timeout(std::time::Duration::from_secs(2))
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            false
        })
    }

    #[tokio::test]
    async fn callback_and_websocket_steps_work_inside_eventually_and_finally() {
        let stop = CancellationToken::new();
        let hub = crate::steps::callback::CallbackHub::start(
            "127.0.0.1:0".parse().unwrap(),
            stop.clone(),
            None,
        )
        .await
        .expect("callback listener");
        let addr = hub.addr;
        let mut env = RunEnv::new_test();
        env.callbacks = hub.into();
        let env = Arc::new(env);
        let ws = echo_server().await;
        let j = journey(&format!(
            r#"journeys:
  - name: nested
    interval: 30s
    timeout: 10s
    steps:
      - name: subscribe
        eventually:
          within: 3s
          step: {{name: open, websocket: {{connect: "ws://127.0.0.1:{ws}/", send: ping, receive: 1s}}, assert: {{body_contains: ping}}}}
      - name: hook
        eventually:
          within: 5s
          step: {{name: inner-hook, callback: {{within: 4s, token: tok-steps}}}}
    finally:
      - name: hook-in-finally
        eventually:
          within: 5s
          step: {{name: inner-final-hook, callback: {{within: 4s, token: tok-finally}}}}
      - name: ws-in-finally
        eventually:
          within: 3s
          step: {{name: bye, websocket: {{connection: cleanup, connect: "ws://127.0.0.1:{ws}/", send: bye, receive: 1s, close: true}}, assert: {{body_contains: bye}}}}
"#
        ));
        assert!(j.needs().callback_listener);
        let a = send_webhook(addr, "tok-steps");
        let b = send_webhook(addr, "tok-finally");
        let r = run_journey(&j, env, &CancellationToken::new())
            .await
            .expect("a result");
        assert!(a.await.unwrap() && b.await.unwrap());
        assert_eq!(
            r.outcome,
            Outcome::Success,
            "{:?} {:?}",
            r.message,
            r.steps
                .iter()
                .map(|s| (&s.name, &s.error))
                .collect::<Vec<_>>()
        );
        assert_eq!(r.cleanup_error, None);
        let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["subscribe", "hook", "hook-in-finally", "ws-in-finally"]
        );
        stop.cancel();
    }
}
