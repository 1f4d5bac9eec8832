//! Delivery: batches from the outbox over one telemetry stream, one at a time, each
//! deleted only when the control plane acknowledges it.

use std::time::Duration;

use continuum_shared::link::Link;
use continuum_shared::protocol::{PROTOCOL_VERSION, StreamKind};
use continuum_shared::telemetry::TelemetryReply;
use tracing::{debug, warn};

use super::Telemetry;
use crate::error::AgentError;

/// How long the control plane may take to store and acknowledge a batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle sender looks at the outbox even without a wake-up.
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// Sends what the outbox holds over `link`, then waits for more, until the link breaks
/// or the control plane refuses a batch.
pub async fn deliver(telemetry: &Telemetry, link: Link) -> Result<(), AgentError> {
    let outbox = telemetry.outbox();
    let mut pushes = telemetry.pushes();
    let mut stream = link.open(StreamKind::Telemetry, PROTOCOL_VERSION).await?;
    loop {
        pushes.borrow_and_update();
        let Some(batch) = outbox.batch()? else {
            tokio::select! {
                changed = pushes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep(IDLE_CHECK) => {}
            }
            continue;
        };
        let (epoch, records, dropped) = (batch.epoch, batch.records.len(), batch.dropped.len());
        let reply = async {
            stream.send(&batch).await?;
            stream.recv_within::<TelemetryReply>(ACK_TIMEOUT).await
        };
        match reply.await {
            Ok(TelemetryReply::Ack {
                epoch: acked,
                through,
            }) => {
                debug!(records, dropped, through, "telemetry acknowledged");
                if acked != epoch {
                    outbox.unsent();
                    return Err(AgentError::State(format!(
                        "the control plane acknowledged telemetry epoch {acked}, not {epoch}"
                    )));
                }
                outbox.ack(epoch, through)?;
            }
            Ok(TelemetryReply::Refused(refusal)) => {
                outbox.unsent();
                warn!(reason = %refusal.message, "the control plane refused a telemetry batch");
                return Err(AgentError::Refused(refusal));
            }
            Err(e) => {
                outbox.unsent();
                return Err(e.into());
            }
        }
    }
}
