//! Asking the control service for a new layout when the primary fails.
//!
//! A queue that cannot reach its primary (connection refused, or no answer
//! within `--request-timeout-ms`) calls [`Failover::report`]; one refused
//! with StaleEpoch or WrongRole calls [`Failover::refresh`]. Both send
//! `ReportUnreachable` to the control service, which fences the primary and
//! promotes a mirror if it cannot reach the primary either, and answer with
//! the layout to use; the queue then reconnects at once and resubmits its
//! in-flight requests. Queues share one report: the first one asks, the
//! others find the layout already moved on. Without `--control` (tests,
//! standalone use) nobody is asked and the queues keep retrying the layout
//! they have (the node manager may still push one).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_auth::{Credentials, Principal};
use basalt_proto::control as pb;
use basalt_proto::control::control_client::ControlClient;
use tonic::transport::Channel;

use crate::layout::{Layout, LayoutSnapshot};
use crate::queue::lock;

/// What a report achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// A new layout is installed: reconnect now.
    Changed,
    /// Nothing changed (no control service, it is unreachable, or it can
    /// reach the primary): retry after the usual pause.
    Unchanged,
    /// This backend's attachment was superseded: it is fenced for good.
    Fenced,
}

struct Client {
    rt: tokio::runtime::Runtime,
    client: ControlClient<Channel>,
}

struct State {
    client: Option<Client>,
    /// Last (address, epoch) reported and when, to pace repeated reports.
    last: Option<(String, u64, Instant)>,
}

pub struct Failover {
    /// The control service's address and the credentials presented to it
    /// (mutual TLS).
    control: Option<(String, Credentials)>,
    volume_id: u64,
    attachment: u64,
    reporter: String,
    layout: Arc<Layout>,
    /// Timeout of one call (the control service probes the primary within it).
    timeout: Duration,
    /// Minimum interval between reports of the same primary and epoch.
    pace: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("control", &self.control.as_ref().map(|(url, _)| url))
            .finish()
    }
}

impl Failover {
    /// `control`: the control service's address (`HOST:PORT`,
    /// `http://HOST:PORT` or `https://HOST:PORT`, always over TLS) and the
    /// node's credentials to present to it; None: nobody to ask.
    pub fn new(
        control: Option<(String, Credentials)>,
        volume_id: u64,
        attachment: u64,
        reporter: String,
        layout: Arc<Layout>,
        timeout: Duration,
    ) -> Failover {
        Failover {
            control,
            volume_id,
            attachment,
            reporter,
            layout,
            timeout,
            pace: Duration::from_millis(500),
            state: Mutex::new(State {
                client: None,
                last: None,
            }),
        }
    }

    /// The primary in `seen` cannot be reached.
    pub fn report(&self, queue: u16, seen: &LayoutSnapshot) -> Reported {
        self.ask(queue, seen, true)
    }

    /// The primary refused our epoch or role: ask for the current layout.
    pub fn refresh(&self, queue: u16, seen: &LayoutSnapshot) -> Reported {
        self.ask(queue, seen, false)
    }

    fn ask(&self, queue: u16, seen: &LayoutSnapshot, unreachable: bool) -> Reported {
        if self.control.is_none() {
            return Reported::Unchanged;
        }
        let mut st = lock(&self.state);
        if self.layout.is_fenced() {
            return Reported::Fenced;
        }
        // Another queue may have got a new layout while we waited.
        if self.layout.snapshot() != *seen {
            return Reported::Changed;
        }
        if let Some((addr, epoch, at)) = &st.last {
            if *addr == seen.primary && *epoch == seen.epoch && at.elapsed() < self.pace {
                return Reported::Unchanged;
            }
        }
        st.last = Some((seen.primary.clone(), seen.epoch, Instant::now()));
        let req = pb::ReportUnreachableRequest {
            volume_id: self.volume_id,
            epoch: seen.epoch,
            data_address: if unreachable {
                seen.primary.clone()
            } else {
                String::new()
            },
            reporter: self.reporter.clone(),
            attachment: self.attachment,
        };
        let started = Instant::now();
        let answer = match self.call(&mut st, req) {
            Ok(a) => a,
            Err(e) => {
                st.client = None;
                tracing::warn!(
                    queue,
                    "cannot reach the control service to report primary {} ({e}); requests wait and retry",
                    seen.primary
                );
                return Reported::Unchanged;
            }
        };
        let outcome = pb::ReportOutcome::try_from(answer.outcome).unwrap_or_default();
        tracing::info!(queue, ?outcome, primary = %answer.primary_address, epoch = answer.epoch, took_ms = started.elapsed().as_millis() as u64, "control service answered");
        if outcome == pb::ReportOutcome::Fenced {
            if self.layout.fence() {
                tracing::error!(
                    attachment = self.attachment,
                    "the control service says this attachment was superseded (the volume was \
                     attached elsewhere with force, or detached): failing every request from now on"
                );
            }
            return Reported::Fenced;
        }
        if answer.primary_address.is_empty() {
            return Reported::Unchanged;
        }
        let fresh = LayoutSnapshot {
            primary: answer.primary_address,
            epoch: answer.epoch,
        };
        if fresh == *seen {
            return Reported::Unchanged;
        }
        match self.layout.update(fresh.primary, fresh.epoch) {
            Ok(()) => Reported::Changed,
            Err(crate::layout::LayoutError::Fenced) => Reported::Fenced,
            // A newer layout arrived meanwhile (node manager push).
            Err(_) => Reported::Changed,
        }
    }

    fn call(
        &self,
        st: &mut State,
        req: pb::ReportUnreachableRequest,
    ) -> Result<pb::ReportUnreachableResponse, String> {
        if st.client.is_none() {
            st.client = Some(self.connect()?);
        }
        let Some(c) = st.client.as_mut() else {
            return Err("no client".into());
        };
        let timeout = self.timeout;
        let fut = c.client.report_unreachable(req);
        match c
            .rt
            .block_on(async { tokio::time::timeout(timeout, fut).await })
        {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Err(s)) => Err(format!("{}: {}", s.code(), s.message())),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    fn connect(&self) -> Result<Client, String> {
        let Some((url, creds)) = &self.control else {
            return Err("no control service (--control)".into());
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let ep = basalt_auth::endpoint(url, creds.client_tls(&Principal::control()))
            .map_err(|e| format!("bad --control address: {e}"))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true);
        let ch = rt.block_on(async { ep.connect_lazy() });
        Ok(Client {
            rt,
            client: ControlClient::new(ch),
        })
    }
}
