//! Telemetry streams: an agent's batches, checked, stored once, and acknowledged only
//! when durable. The site is the connection's certificate, never anything in the batch,
//! so no site can write another's telemetry.

use std::sync::Arc;

use continuum_shared::link::FramedStream;
use continuum_shared::protocol::{Refusal, RefusalCode};
use continuum_shared::telemetry::{Batch, TelemetryReply};
use tracing::{debug, warn};

use crate::plane::ControlPlane;

/// Serves one telemetry stream of `site` until the agent closes it.
pub async fn serve(cp: Arc<ControlPlane>, mut stream: FramedStream, site: String) {
    loop {
        let batch = match stream.recv::<Batch>().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(e) => {
                warn!(site, error = %e, "unreadable telemetry batch refused");
                refuse(
                    &mut stream,
                    RefusalCode::BadRequest,
                    format!("unreadable batch: {e}"),
                )
                .await;
                return;
            }
        };
        if let Err(reason) = batch.check() {
            warn!(site, %reason, "malformed telemetry batch refused");
            refuse(&mut stream, RefusalCode::BadRequest, reason).await;
            return;
        }
        let records = batch.records.len();
        match cp.telemetry.ingest(&site, batch).await {
            Ok(cursor) => {
                debug!(site, records, through = cursor.through, "telemetry stored");
                let ack = TelemetryReply::Ack {
                    epoch: cursor.epoch,
                    through: cursor.through,
                };
                if stream.send(&ack).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(site, error = %e, "storing telemetry failed");
                refuse(
                    &mut stream,
                    RefusalCode::Internal,
                    "the control plane could not store telemetry; retry later".into(),
                )
                .await;
                return;
            }
        }
    }
}

async fn refuse(stream: &mut FramedStream, code: RefusalCode, message: String) {
    let _ = stream
        .send(&TelemetryReply::Refused(Refusal { code, message }))
        .await;
    stream.finish().await;
}
