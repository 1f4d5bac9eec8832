//! Logs on demand: the control plane opens a logs stream on the agent's link and the
//! agent streams the service's container output back, as the engine delivers it.

use std::time::Duration;

use continuum_shared::link::{FramedStream, Link};
use continuum_shared::protocol::{
    LogFrame, LogRequest, MAX_LOG_CHUNK, Refusal, RefusalCode, StreamKind,
};
use futures_util::StreamExt;
use tracing::debug;

use crate::engine::Engine;

/// How long the control plane has to send its request after opening the stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most logs streams served at once; more wait for the link to accept them.
const MAX_STREAMS: usize = 8;

/// Serves the streams the control plane opens on `link` until it closes.
pub async fn serve(link: Link, engine: Option<String>, site: String) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
    while let Ok(incoming) = link.accept().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (engine, site) = (engine.clone(), site.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(stream) = incoming.preamble(REQUEST_TIMEOUT).await else {
                return;
            };
            if stream.kind() == StreamKind::Logs {
                serve_logs(stream, engine.as_deref(), &site).await;
            } else {
                debug!(
                    kind = stream.kind().name(),
                    "ignored a stream the control plane opened"
                );
            }
        });
    }
}

async fn serve_logs(mut stream: FramedStream, engine: Option<&str>, site: &str) {
    let request = match stream.recv_within::<LogRequest>(REQUEST_TIMEOUT).await {
        Ok(request) => request,
        Err(_) => return,
    };
    let refuse = |message: String| {
        LogFrame::Refused(Refusal {
            code: RefusalCode::BadRequest,
            message,
        })
    };
    let Some(address) = engine else {
        let _ = stream
            .send(&refuse(
                "this agent runs no containers (--engine none)".into(),
            ))
            .await;
        stream.finish().await;
        return;
    };
    let container = match find_container(address, site, &request.service).await {
        Ok(found) => found,
        Err(message) => {
            let _ = stream.send(&refuse(message)).await;
            stream.finish().await;
            return;
        }
    };
    let (engine, id) = container;
    let mut logs = Box::pin(engine.logs(&id, request.tail, request.follow));
    while let Some(chunk) = logs.next().await {
        let Ok(chunk) = chunk else { break };
        for piece in chunk.chunks(MAX_LOG_CHUNK / 2) {
            let text = String::from_utf8_lossy(piece).into_owned();
            if stream.send(&LogFrame::Text(text)).await.is_err() {
                // The operator went away.
                return;
            }
        }
    }
    let _ = stream.send(&LogFrame::End).await;
    stream.finish().await;
}

/// The engine and the id of the service's container, the running one first.
async fn find_container(
    address: &str,
    site: &str,
    service: &str,
) -> Result<(Engine, String), String> {
    let engine = Engine::connect(address)
        .await
        .map_err(|e| format!("the container engine is unreachable: {e}"))?;
    let mut ours = engine
        .ours(site)
        .await
        .map_err(|e| format!("listing containers: {e}"))?;
    ours.retain(|c| c.service == service);
    ours.sort_by_key(|c| !c.running);
    match ours.into_iter().next() {
        Some(container) => Ok((engine, container.id)),
        None => Err(format!("no container of service {service:?} at this site")),
    }
}
