//! Per-volume state that outlives VMM sessions.

use std::sync::Arc;

use crate::config::Config;
use crate::config_notify::ConfigNotifier;
use crate::failover::Failover;
use crate::layout::Layout;
use crate::primary::ConnectParams;
use crate::stats::Stats;
use crate::virtio_blk::BlkConfigSpace;

#[derive(Debug)]
pub struct Volume {
    pub config: Config,
    pub blk: BlkConfigSpace,
    pub layout: Arc<Layout>,
    pub stats: Arc<Stats>,
    /// Backend-request channel of the current VMM session (config-change
    /// notifications after a resize).
    pub notifier: ConfigNotifier,
    /// Asks the control service for a new layout.
    pub failover: Failover,
    pub(crate) connect: ConnectParams,
}

impl Volume {
    pub fn new(config: Config) -> Volume {
        let connect = ConnectParams {
            tls: config.tls.clone(),
            grant_file: config.grant_file.clone(),
            volume_id: config.volume_id,
            attachment: config.attachment,
            timeout: config.connect_timeout,
        };
        let layout = Arc::new(Layout::new(config.primary.clone(), config.epoch));
        Volume {
            blk: BlkConfigSpace::new(config.size_bytes, config.queues, config.queue_size),
            failover: Failover::new(
                config
                    .control
                    .clone()
                    .map(|c| (c, config.credentials.clone())),
                config.volume_id,
                config.attachment,
                config.backend_id.clone(),
                layout.clone(),
                config.control_timeout,
            ),
            layout,
            stats: Arc::new(Stats::new(usize::from(config.queues))),
            notifier: ConfigNotifier::default(),
            connect,
            config,
        }
    }
}
