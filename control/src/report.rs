//! Failure reports from the data path (`ReportUnreachable`).

use basalt_proto::control as pb;

use crate::error::{ControlError, Result};
use crate::Control;

impl Control {
    pub(crate) async fn report_unreachable(
        &self,
        _r: pb::ReportUnreachableRequest,
    ) -> Result<pb::ReportUnreachableResponse> {
        Err(ControlError::Unavailable("not yet".into()))
    }
}
