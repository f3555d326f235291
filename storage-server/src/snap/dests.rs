//! The destinations of one snapshot as the control service sends them
//! (`DestinationSet` in the admin API), kept in a copy's persisted
//! hydration source, and opened as a [`DestinationSet`].

use std::sync::Arc;

use basalt_proto::storage_admin as pb;
use basalt_snapshot::set::{DestinationSet, Layout};
use basalt_snapshot::{Destination, DestinationSpec};
use serde::{Deserialize, Serialize};

/// Most destinations one snapshot may use.
pub const MAX_MEMBERS: usize = 8;

/// One snapshot's destinations and layout.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetSpec {
    pub members: Vec<DestinationSpec>,
    /// `single`, `duplicate` or `striped`.
    pub layout: String,
    pub stripe_blocks: u64,
    /// Destinations holding a full copy besides the layout's.
    #[serde(default)]
    pub copies: Vec<DestinationSpec>,
}

impl std::fmt::Debug for SetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        write!(f, "{} {:?}", self.layout, names)
    }
}

impl SetSpec {
    /// One destination holding everything.
    pub fn single(d: &DestinationSpec) -> SetSpec {
        SetSpec {
            members: vec![d.clone()],
            layout: "single".into(),
            stripe_blocks: 0,
            copies: Vec::new(),
        }
    }

    /// Checks and converts the admin API's form; errors say what is wrong.
    pub fn from_pb(set: Option<pb::DestinationSet>) -> Result<SetSpec, String> {
        let set = set.ok_or("destinations are required")?;
        if set.destinations.is_empty() || set.destinations.len() > MAX_MEMBERS {
            return Err(format!(
                "a snapshot needs 1 to {MAX_MEMBERS} destinations, got {}",
                set.destinations.len()
            ));
        }
        let layout = match pb::SetLayout::try_from(set.layout) {
            Ok(pb::SetLayout::Single) => "single",
            Ok(pb::SetLayout::Duplicate) => "duplicate",
            Ok(pb::SetLayout::Striped) => "striped",
            _ => return Err(format!("unknown destination layout {}", set.layout)),
        };
        let member = |d: pb::Destination| DestinationSpec {
            name: d.name,
            url: d.url,
            endpoint: d.endpoint,
            region: d.region,
            allow_http: d.allow_http,
            access_key_id: d.access_key_id,
            secret_access_key: d.secret_access_key,
        };
        if set.copies.len() > MAX_MEMBERS {
            return Err(format!("at most {MAX_MEMBERS} copies"));
        }
        let spec = SetSpec {
            members: set.destinations.into_iter().map(member).collect(),
            layout: layout.to_owned(),
            stripe_blocks: set.stripe_blocks,
            copies: set.copies.into_iter().map(member).collect(),
        };
        // Refuse now what would fail later, in the background.
        spec.open()?;
        Ok(spec)
    }

    /// Opens every member (no network I/O).
    pub fn open(&self) -> Result<DestinationSet, String> {
        let layout = Layout::parse(&self.layout, self.stripe_blocks).map_err(|e| e.to_string())?;
        let open = |list: &[DestinationSpec]| {
            list.iter()
                .map(|m| Destination::open(m).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        };
        let copies = open(&self.copies)?;
        DestinationSet::new(open(&self.members)?, layout)
            .and_then(|s| s.with_copies(copies))
            .map_err(|e| e.to_string())
    }
}
