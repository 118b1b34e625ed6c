//! Trace ids of runs. A run's first attempt is traced under its run id and
//! each retry under an id derived from it ([`crate::vocab::attempt_trace_id`]),
//! so a kept run needs to store only its run id, and a run id finds its trace.

use std::cell::Cell;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

/// Trace ids: the one [`with_trace_id`] asks for, random otherwise.
#[derive(Debug, Default)]
pub struct RunTraceIds(RandomIdGenerator);

thread_local! {
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

impl IdGenerator for RunTraceIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID.take().unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// Calls `start`, which starts a root span, so that the span's trace id is `id`
/// (the SDK takes no trace id from a span builder; span starts are synchronous,
/// so the id is handed over on this thread). A tracer from another provider
/// draws its own.
pub fn with_trace_id<R>(id: u128, start: impl FnOnce() -> R) -> R {
    NEXT_TRACE_ID.set(Some(TraceId::from(id)));
    let r = start();
    NEXT_TRACE_ID.set(None);
    r
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span, TraceContextExt, Tracer, TracerProvider};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    #[test]
    fn a_root_span_takes_the_trace_id_it_is_given_and_only_that_one() {
        let provider = SdkTracerProvider::builder().with_id_generator(RunTraceIds::default()).build();
        let tracer = provider.tracer("t");
        let id = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128;
        let root = with_trace_id(id, || tracer.start("root"));
        assert_eq!(root.span_context().trace_id(), TraceId::from(id));
        // A child inherits it; the next root span draws a random one.
        let cx = opentelemetry::Context::new().with_span(root);
        let child = tracer.start_with_context("child", &cx);
        assert_eq!(child.span_context().trace_id(), TraceId::from(id));
        let other = tracer.start("other");
        assert_ne!(other.span_context().trace_id(), TraceId::from(id));
        assert!(other.span_context().is_valid());
        // A child started inside `with_trace_id` keeps its parent's id, and the id is not left over.
        let child = with_trace_id(7, || tracer.start_with_context("child", &cx));
        assert_eq!(child.span_context().trace_id(), TraceId::from(id));
        assert_ne!(tracer.start("next").span_context().trace_id(), TraceId::from(7));
        cx.span().end();
    }
}
