//! Step kinds. **To add a kind**: write `src/steps/<kind>.rs` holding its
//! config struct (serde, `deny_unknown_fields`, doc comments), its `INFO`
//! declarations ([`KindInfo`]), `pub fn compile(&Spec, &StepCx, &mut Checker)`
//! and its [`StepKind`] runtime; then add one line to `step_kinds!` below
//! (it declares the module too).
//! The list generates the probe-file [`StepSpec`], the "exactly one kind"
//! check and its message, and the dispatch to each kind's `compile`.
//!
//! Nothing outside this directory names a kind: the runner, telemetry and
//! the daemon read what kinds declare ([`KindInfo`], [`StepKind::nested`]);
//! `tests/architecture.rs` fails on a kind name matched anywhere else.
//! Shared pieces: [`context`] (the run context), [`compile`] (checker,
//! runnable steps), [`assertions`], [`extract`], [`net`].

pub mod assertions;
pub mod compile;
pub mod context;
pub mod extract;
pub mod net;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use opentelemetry::trace::SpanKind;
use serde::Deserialize;

use crate::config::model::{AssertSpec, Dur, ExtractSpec};
use crate::vocab::{ErrorType, Observation, PhaseMetric, PhaseRecording, StepError, Verdict};
use compile::{Checker, Step, StepCx};
use context::RunContext;

/// The registry: one line per kind, `key => its config type`. The key is the
/// module (declared here), the probe-file field and the `step.kind` attribute. The order
/// is the order of fields in error messages.
macro_rules! step_kinds {
    ($($key:ident => $spec:ty),* $(,)?) => {
        $(pub mod $key;)*

        /// One step as written in a probe file: a name, an optional timeout,
        /// exactly one kind, and the shared `assert` and `extract`.
        #[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        #[schemars(transform = exactly_one_kind)]
        pub struct StepSpec {
            pub name: String,
            pub timeout: Option<Dur>,
            $(pub $key: Option<$spec>,)*
            #[serde(default, rename = "assert")]
            pub assertions: AssertSpec,
            #[serde(default)]
            pub extract: BTreeMap<String, ExtractSpec>,
        }

        /// Every kind's name, in registration order.
        pub const KIND_NAMES: &[&str] = &[$(stringify!($key)),*];

        /// Every kind's declarations, in registration order.
        pub const KINDS: &[&KindInfo] = &[$(&$key::INFO),*];

        impl StepSpec {
            /// The kinds this step sets (exactly one when valid).
            pub fn kinds_set(&self) -> Vec<&'static KindInfo> {
                let mut set = Vec::new();
                $(if self.$key.is_some() {
                    set.push(&$key::INFO);
                })*
                set
            }
        }

        /// Compiles the step's kind with that kind's `compile`.
        pub(crate) fn compile_kind(spec: &StepSpec, step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
            $(if let Some(k) = &spec.$key {
                return $key::compile(k, step, c);
            })*
            None
        }
    };
}

step_kinds! {
    http => http::HttpSpec,
    dns => dns::DnsSpec,
    tcp => tcp::TcpSpec,
    tls => tls::TlsSpec,
    websocket => websocket::WebSocketSpec,
    eventually => Box<eventually::EventuallySpec>,
    callback => callback::CallbackSpec,
    browser => browser::BrowserSpec,
    grpc => grpc::GrpcSpec,
}

/// The schema's form of the "exactly one kind" check `compile_step` makes.
fn exactly_one_kind(schema: &mut schemars::Schema) {
    let one: Vec<serde_json::Value> = KIND_NAMES.iter().map(|k| serde_json::json!({ "required": [k] })).collect();
    schema.insert("oneOf".into(), one.into());
}

/// What a kind declares about itself, so no other module matches on its name.
#[derive(Debug)]
pub struct KindInfo {
    /// `http`, `dns`, …: the probe-file key and the `step.kind` attribute.
    pub name: &'static str,
    /// Kind of the step's span (`Client` when the step is one outbound request).
    pub span_kind: SpanKind,
    /// What the agent must provide for the kind to run.
    pub needs: Needs,
    /// Where the kind's phases go as metrics.
    pub phases: PhaseRecording,
    /// Status codes accepted when the step asserts none (HTTP: 200-399).
    pub default_status: Option<(u16, u16)>,
}

/// What a step (or a journey, summed over its steps) needs from the agent.
/// The run environment builds only what the loaded journeys need
/// ([`context::RunEnv::prepare`]); nothing outside this directory asks which kind needs what.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The inbound callback listener (`callback.listen`), with the run registered before its first step.
    pub callback_listener: bool,
    /// Chromium and chromedriver.
    pub browser: bool,
    /// The system resolver, for names in URLs and addresses.
    pub resolver: bool,
    /// The TLS client configurations (the system's trusted roots).
    pub tls: bool,
}

impl Needs {
    pub const NONE: Needs = Needs { callback_listener: false, browser: false, resolver: false, tls: false };
    /// Name lookups only (`dns` without its own server).
    pub const RESOLVER: Needs = Needs { resolver: true, ..Needs::NONE };
    /// Outbound connections that may speak TLS: the resolver and the TLS configs.
    pub const NETWORK: Needs = Needs { resolver: true, tls: true, ..Needs::NONE };

    pub fn or(self, other: Needs) -> Needs {
        Needs {
            callback_listener: self.callback_listener || other.callback_listener,
            browser: self.browser || other.browser,
            resolver: self.resolver || other.resolver,
            tls: self.tls || other.tls,
        }
    }

    /// What a set of journeys needs, nested steps included.
    pub fn of<'a>(journeys: impl IntoIterator<Item = &'a compile::Journey>) -> Needs {
        journeys.into_iter().fold(Needs::NONE, |n, j| n.or(j.needs()))
    }
}

/// Every phase histogram some kind declares, for creating the instruments up front.
pub fn phase_metrics() -> impl Iterator<Item = &'static PhaseMetric> {
    KINDS.iter().flat_map(|k| match k.phases {
        PhaseRecording::Own(ms) => ms,
        _ => &[],
    })
}

/// What a step of some kind says about an asynchronous delivery, for the
/// status page's marketing view (lead-capture style journeys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The step passes once the item arrived where it should (`eventually`).
    Arrived,
    /// The step passes once the pipeline's webhook arrived (`callback`).
    Webhook,
}

/// The delivery role of the kind named `kind` (as in [`KindInfo::name`] and `step.kind`), if it has one.
pub fn delivery(kind: &str) -> Option<Delivery> {
    match kind {
        "eventually" => Some(Delivery::Arrived),
        "callback" => Some(Delivery::Webhook),
        _ => None,
    }
}

/// The one interface every step kind implements.
pub trait StepKind: Send + Sync + fmt::Debug {
    /// The kind's declarations (its module's `INFO`).
    fn info(&self) -> &'static KindInfo;
    /// Performs the step once. Timeouts are applied by the caller.
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>>;
    /// Error types this step can end with, so their series exist from startup.
    fn error_types(&self) -> &'static [ErrorType];
    /// Step timeout when the step sets none (kinds that wait on purpose need longer).
    fn default_timeout(&self) -> Option<Duration> {
        None
    }
    /// How long the step waits on purpose for something to happen (an
    /// `eventually`'s or a `callback`'s `within`), for messages that name it.
    fn configured_wait(&self) -> Option<Duration> {
        None
    }
    /// Steps nested in this one (`eventually`'s inner step), so whatever walks
    /// a journey (needs, validation) sees them too.
    fn nested(&self) -> Vec<&Step> {
        Vec::new()
    }
    /// `http`, `dns`, …
    fn kind(&self) -> &'static str {
        self.info().name
    }
}

/// Runs one attempt of a step: the action, then assertions, then extractions.
/// The runner calls it once per step; `eventually` repeatedly for its inner step.
pub async fn attempt(ctx: &mut RunContext, step: &Step) -> Result<(Observation, Verdict), StepError> {
    let t = Instant::now();
    let obs = step.kind.execute(ctx).await?;
    // Secrets this step extracts are known before its assertions quote the body.
    for x in &step.extract {
        x.mark_secret(ctx, &obs);
    }
    step.assertions.check_content(ctx, &obs).map_err(|e| e.with_observation(&obs))?;
    let elapsed = obs.reported_duration.unwrap_or_else(|| t.elapsed());
    let verdict = step.assertions.check_timing(elapsed).map_err(|e| e.with_observation(&obs))?;
    for x in &step.extract {
        x.apply(ctx, &obs).map_err(|e| e.with_observation(&obs))?;
    }
    Ok((obs, verdict))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::compile::test_step;

    #[test]
    fn the_registry_lists_each_kind_once_with_its_declarations_in_order() {
        let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        assert_eq!(names, KIND_NAMES);
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        // The schema's "exactly one kind" is generated from the same list.
        let schema = serde_json::to_value(schemars::schema_for!(StepSpec)).unwrap();
        let one_of: Vec<&str> = schema["oneOf"].as_array().expect("oneOf").iter().map(|r| r["required"][0].as_str().unwrap()).collect();
        assert_eq!(one_of, KIND_NAMES);
        for k in KIND_NAMES {
            assert!(schema["properties"].get(*k).is_some(), "`{k}` is a StepSpec field");
        }
    }

    #[test]
    fn each_field_dispatches_to_its_own_kind() {
        let steps = [
            ("http", "http: {url: \"http://127.0.0.1:1/\"}"),
            ("dns", "dns: {name: example.test}"),
            ("tcp", "tcp: {address: \"127.0.0.1:1\"}"),
            ("tls", "tls: {address: \"127.0.0.1:1\"}"),
            ("websocket", "websocket: {connect: \"ws://127.0.0.1:1/\"}"),
            ("eventually", "eventually: {within: 2s, step: {name: inner, tcp: {address: \"127.0.0.1:1\"}}}"),
            ("callback", "callback: {within: 1s}"),
            ("browser", "browser: {navigate: \"http://127.0.0.1:1/\"}"),
            ("grpc", "grpc: {address: \"127.0.0.1:1\"}"),
        ];
        let covered: Vec<&str> = steps.iter().map(|(k, _)| *k).collect();
        assert_eq!(covered, KIND_NAMES, "a kind without a dispatch case here");
        for (kind, yaml) in steps {
            let s = test_step(&format!("name: s\n{yaml}\n"));
            assert_eq!(s.kind.kind(), kind);
            // The same declarations the registry lists (INFO is a const: compared by value).
            let listed = KINDS[KIND_NAMES.iter().position(|k| *k == kind).unwrap()];
            assert_eq!(format!("{:?}", s.kind.info()), format!("{listed:?}"));
        }
    }

    #[test]
    fn needs_are_summed_over_journeys_with_nested_steps_in_eventually_and_finally() {
        // Built here from compiled steps: compiling whole files is the layer above.
        let journey = |steps: Vec<compile::Step>, finally: Vec<compile::Step>| compile::Journey {
            name: "j".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(20),
            labels: BTreeMap::new(),
            buckets: None,
            locations: None,
            vars: Vec::new(),
            retries: None,
            steps,
            finally,
            slo: None,
            source: String::new(),
            fingerprint: 0,
            span_attrs: Default::default(),
        };
        let js = [
            journey(vec![test_step("name: t\ntcp: {address: \"127.0.0.1:1\"}\n")], Vec::new()),
            journey(
                vec![test_step("name: wait\neventually: {within: 5s, step: {name: hook, callback: {within: 2s}}}\n")],
                vec![test_step("name: look\neventually: {within: 5s, step: {name: page, browser: {navigate: \"http://127.0.0.1:1/\"}}}\n")],
            ),
        ];
        let (plain, nested) = (&js[0], &js[1]);
        let p = Needs::of([plain]);
        assert!(!p.callback_listener && !p.browser, "{p:?}");
        let n = Needs::of([nested]);
        assert!(n.callback_listener && n.browser, "nested in `eventually` and in `finally`: {n:?}");
        // The outer steps need neither themselves: only the walk finds them.
        assert!(!nested.steps[0].kind.info().needs.callback_listener && !nested.finally[0].kind.info().needs.browser);
        assert_eq!(Needs::of(&js), p.or(n));
        assert_eq!(Needs::of(&js[..0]), Needs::NONE);
        assert_eq!(Needs::RESOLVER.or(Needs::NETWORK), Needs::NETWORK);
    }

    #[test]
    fn delivery_roles_and_phase_metrics_come_from_the_kinds() {
        assert_eq!(delivery("eventually"), Some(Delivery::Arrived));
        assert_eq!(delivery("callback"), Some(Delivery::Webhook));
        assert_eq!(delivery("http"), None);
        let own: Vec<&str> = KINDS
            .iter()
            .flat_map(|k| match k.phases {
                PhaseRecording::Own(ms) => ms.iter().map(|m| m.name).collect(),
                _ => Vec::new(),
            })
            .collect();
        let listed: Vec<&str> = phase_metrics().map(|m| m.name).collect();
        assert_eq!(listed, own);
        assert!(!listed.is_empty(), "the browser kind records its own phase metrics");
    }
}
