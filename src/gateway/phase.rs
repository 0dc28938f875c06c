//! The pipeline's sections ([`Phase`]) and, for a request traced by OpenTelemetry, when each
//! ran ([`Phases`]). Apart from `super::otel` because the request's [`Exchange`] carries the
//! timings and the exporter reads the exchange: this leaf keeps the two from importing each
//! other.
//!
//! [`Exchange`]: super::exchange::Exchange

use std::time::Instant;

use opentelemetry::KeyValue;

use super::error::GatewayError;

/// The section a step runs in; some steps act on the request in one and on the response in
/// another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Inbound,
    Backend,
    Outbound,
    OnError,
}

/// A phase's span: when it started and ended, and the error that ended it.
#[derive(Clone, Copy)]
pub(crate) struct PhaseSpan {
    pub(crate) start: Instant,
    pub(crate) end: Option<Instant>,
    pub(crate) error: Option<&'static str>,
}

/// The backend call's span.
pub(crate) struct CallSpan {
    pub(crate) start: Instant,
    pub(crate) end: Option<Instant>,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<&'static str>,
    pub(crate) attributes: Vec<KeyValue>,
}

/// What the pipeline of a sampled request records on its way (see `pipeline::run`).
#[derive(Default)]
pub struct Phases {
    /// Indexed by [`phase_index`].
    pub(crate) spans: [Option<PhaseSpan>; 4],
    open: Option<Phase>,
    pub(crate) call: Option<CallSpan>,
}

fn phase_index(phase: Phase) -> usize {
    match phase {
        Phase::Inbound => 0,
        Phase::Backend => 1,
        Phase::Outbound => 2,
        Phase::OnError => 3,
    }
}

pub(crate) const PHASE_NAMES: [&str; 4] = ["inbound", "backend", "outbound", "on-error"];

impl Phases {
    fn close(&mut self, now: Instant, error: Option<&'static str>) {
        if let Some(open) = self.open.take()
            && let Some(span) = &mut self.spans[phase_index(open)]
        {
            span.end = Some(now);
            span.error = span.error.or(error);
        }
    }

    fn begin(&mut self, phase: Phase) {
        let now = Instant::now();
        self.close(now, None);
        self.spans[phase_index(phase)] = Some(PhaseSpan {
            start: now,
            end: None,
            error: None,
        });
        self.open = Some(phase);
    }
}

/// A phase starts (the one before, if any, ends).
#[inline]
pub fn begin(phases: &mut Option<Box<Phases>>, phase: Phase) {
    if let Some(p) = phases {
        p.begin(phase);
    }
}

/// The phase that was running failed with `err` (`on-error` runs next).
#[inline]
pub fn failed(phases: &mut Option<Box<Phases>>, err: &GatewayError) {
    if let Some(p) = phases {
        p.close(Instant::now(), Some(err.reason));
    }
}

/// The pipeline is done: the phase still running ends.
#[inline]
pub fn end(phases: &mut Option<Box<Phases>>) {
    if let Some(p) = phases {
        p.close(Instant::now(), None);
    }
}

/// The backend call starts.
#[inline]
pub fn call_started(phases: &mut Option<Box<Phases>>) {
    if let Some(p) = phases {
        p.call = Some(CallSpan {
            start: Instant::now(),
            end: None,
            status: None,
            error: None,
            attributes: Vec::new(),
        });
    }
}
