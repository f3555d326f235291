//! Reports of unreachable in-sync mirrors to the control service.
//!
//! A primary whose link to an in-sync mirror is down cannot acknowledge
//! writes: every write is answered `MirrorUnavailable` (and held by the
//! backend) until the control service removes the mirror from the in-sync
//! set and pushes the new layout with `SetLayout`. Heartbeats would notice a
//! dead server only after seconds, and never a hung one or a broken path
//! between two live servers, so the primary reports the mirror itself with
//! `Control/ReportUnreachable` as soon as its link goes down or cannot be
//! established.
//!
//! One task per mirror link watches the link's state; it never touches the
//! data path. While the link is down and the peer is still an in-sync mirror
//! of this primary copy, it reports — one call at a time, each bounded by a
//! short timeout — and, if the answer does not change the layout (the
//! control service could reach the mirror, or the call failed), reports
//! again with exponential backoff. It stops reporting when the link is up
//! again or the layout no longer lists the peer as in sync, and ends when
//! the link is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

use basalt_proto::control as pb;
use basalt_proto::control::control_client::ControlClient;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::copy::Copy;
use crate::meta::{PeerMeta, Role};
use crate::mirror::{LinkState, MirrorLink};

/// Bound on one report call (connect included).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// First pause between reports about the same mirror; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("invalid --control address {url:?} ({source}); use the form HOST:PORT (or http://HOST:PORT, https://HOST:PORT: always over TLS)")]
    Url {
        url: String,
        source: basalt_auth::FilesError,
    },
}

/// Sends reports to one control service.
pub struct Reporter {
    channel: Channel,
    server_id: String,
}

impl Reporter {
    /// A reporter for the control service at `url` (`HOST:PORT`,
    /// `http://HOST:PORT` or `https://HOST:PORT`; always over TLS with
    /// `tls`, which presents this server's certificate and checks the
    /// control service's); connects lazily, so the control service need not
    /// be up yet.
    pub fn new(url: &str, server_id: &str, tls: ClientTlsConfig) -> Result<Reporter, ReportError> {
        let endpoint = basalt_auth::endpoint(url, tls).map_err(|source| ReportError::Url {
            url: url.to_owned(),
            source,
        })?;
        let channel = endpoint
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Ok(Reporter {
            channel,
            server_id: server_id.to_owned(),
        })
    }

    /// Starts watching `link`, a link of `copy`, for as long as it exists.
    pub fn watch(self: &Arc<Self>, copy: &Arc<Copy>, link: &MirrorLink) {
        tokio::spawn(watch_link(
            self.clone(),
            Arc::downgrade(copy),
            copy.volume_id,
            link.peer.clone(),
            link.watch(),
        ));
    }

    async fn report(
        &self,
        volume_id: u64,
        epoch: u64,
        address: &str,
    ) -> Result<pb::ReportUnreachableResponse, tonic::Status> {
        let mut client = ControlClient::new(self.channel.clone());
        let call = client.report_unreachable(pb::ReportUnreachableRequest {
            volume_id,
            epoch,
            data_address: address.to_owned(),
            reporter: self.server_id.clone(),
            attachment: 0,
        });
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "the control service did not answer in time",
            )),
        }
    }
}

/// Whether `peer` is an in-sync mirror of the primary copy, and the epoch.
fn in_sync(copy: &Weak<Copy>, peer: &PeerMeta) -> Option<(bool, u64)> {
    let copy = copy.upgrade()?;
    let m = copy.meta();
    let listed = m.role == Role::Primary
        && m.mirrors
            .iter()
            .any(|p| p.server_id == peer.server_id && p.address == peer.address);
    Some((listed, m.epoch))
}

async fn watch_link(
    reporter: Arc<Reporter>,
    copy: Weak<Copy>,
    volume_id: u64,
    peer: PeerMeta,
    mut link: crate::mirror::LinkWatch,
) {
    let Some(mut layout) = copy.upgrade().map(|c| c.layout_changes()) else {
        return;
    };
    let mut backoff = FIRST_BACKOFF;
    let mut reports = 0u64;
    loop {
        // Wait until the link is down (or ends).
        while *link.state.borrow_and_update() != LinkState::Down {
            backoff = FIRST_BACKOFF;
            reports = 0;
            tokio::select! {
                r = link.state.changed() => if r.is_err() { return },
                _ = link.closed.changed() => return,
            }
        }
        let Some((listed, epoch)) = in_sync(&copy, &peer) else {
            return;
        };
        if !listed {
            // Not (or no longer) in sync: nothing to report until the link
            // or the layout changes.
            tokio::select! {
                r = link.state.changed() => if r.is_err() { return },
                r = layout.changed() => if r.is_err() { return },
                _ = link.closed.changed() => return,
            }
            continue;
        }
        reports += 1;
        let loud = reports == 1 || reports.is_power_of_two();
        let result = tokio::select! {
            r = reporter.report(volume_id, epoch, &peer.address) => r,
            _ = link.closed.changed() => return,
        };
        match result {
            Ok(r) => {
                let outcome = pb::ReportOutcome::try_from(r.outcome)
                    .unwrap_or(pb::ReportOutcome::Unspecified);
                if loud {
                    tracing::warn!(volume = volume_id, mirror = %peer.server_id, addr = %peer.address, epoch, reports, ?outcome, new_epoch = r.epoch, "reported unreachable in-sync mirror to the control service");
                }
            }
            Err(e) => {
                if loud {
                    tracing::warn!(volume = volume_id, mirror = %peer.server_id, addr = %peer.address, epoch, reports, "cannot report unreachable mirror to the control service: {e}");
                }
            }
        }
        // A report that removed the mirror has changed the layout by now
        // (the control service pushes it before answering), which the next
        // round sees; otherwise report again after a pause.
        if in_sync(&copy, &peer).is_some_and(|(listed, e)| listed && e == epoch) {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                r = link.state.changed() => if r.is_err() { return },
                r = layout.changed() => if r.is_err() { return },
                _ = link.closed.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
