//! The transport seam: one authenticated connection between an agent and the control
//! plane, carrying many framed streams side by side.
//!
//! Session code on both ends talks to [`Link`] and [`FramedStream`] only. Today the link
//! is QUIC; a second transport (TLS over TCP with a stream multiplexer) becomes another
//! variant here, carrying exactly the same preambles and frames.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::FrameError;
use crate::framing::{self, Preamble};
use crate::protocol::{CloseCode, StreamKind};

/// How a link ended, as far as this side knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClosed {
    /// The application close code, if the link was closed by either application.
    pub code: Option<CloseCode>,
    /// The reason given, or a description of the transport failure.
    pub reason: String,
    /// Whether the peer closed it (as opposed to this side or a timeout).
    pub by_peer: bool,
}

impl fmt::Display for LinkClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.by_peer, self.code) {
            (true, Some(_)) => write!(f, "closed by the peer: {}", self.reason),
            _ => f.write_str(&self.reason),
        }
    }
}

/// A stream-level failure on a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The connection is gone.
    #[error("connection lost: {0}")]
    Closed(LinkClosed),
    /// The stream carried something the protocol does not allow.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A wait for the peer ran out.
    #[error("timed out after {0:?} waiting for the peer")]
    Timeout(Duration),
}

/// An authenticated connection.
#[derive(Clone, Debug)]
pub enum Link {
    /// QUIC via quinn.
    Quic(quinn::Connection),
}

impl Link {
    /// Opens a stream of `kind`, announcing protocol `version`.
    pub async fn open(&self, kind: StreamKind, version: u16) -> Result<FramedStream, LinkError> {
        match self {
            Link::Quic(conn) => {
                let (send, recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| LinkError::Closed(quic_closed(&e)))?;
                let mut stream = FramedStream::new(Box::new(send), Box::new(recv), kind, version);
                framing::write_preamble(&mut stream.send, Preamble { version, kind }).await?;
                Ok(stream)
            }
        }
    }

    /// Waits for the peer to open a stream. Its preamble is read by
    /// [`IncomingStream::preamble`], in the task that serves it.
    pub async fn accept(&self) -> Result<IncomingStream, LinkError> {
        match self {
            Link::Quic(conn) => {
                let (send, recv) = conn
                    .accept_bi()
                    .await
                    .map_err(|e| LinkError::Closed(quic_closed(&e)))?;
                Ok(IncomingStream {
                    send: Box::new(send),
                    recv: Box::new(recv),
                })
            }
        }
    }

    /// Closes the link with an application code and a reason the peer will see.
    pub fn close(&self, code: CloseCode, reason: &str) {
        let reason = truncate(reason, 900);
        match self {
            Link::Quic(conn) => conn.close(quinn::VarInt::from_u32(code as u32), reason.as_bytes()),
        }
    }

    /// Closes the link after giving the peer up to `linger` to read what was sent and
    /// hang up itself, which is how a last message (a refusal) gets delivered: closing at
    /// once would discard data still in flight.
    pub async fn close_after(&self, linger: Duration, code: CloseCode, reason: &str) {
        let _ = tokio::time::timeout(linger, self.closed()).await;
        self.close(code, reason);
    }

    /// Resolves when the link is gone, with why.
    pub async fn closed(&self) -> LinkClosed {
        match self {
            Link::Quic(conn) => quic_closed(&conn.closed().await),
        }
    }

    /// Why the link ended, if it has.
    pub fn close_reason(&self) -> Option<LinkClosed> {
        match self {
            Link::Quic(conn) => conn.close_reason().map(|e| quic_closed(&e)),
        }
    }

    /// The peer's address as this side sees it.
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Link::Quic(conn) => conn.remote_address(),
        }
    }

    /// The certificate chain the peer presented, if any.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        match self {
            Link::Quic(conn) => conn
                .peer_identity()?
                .downcast::<Vec<CertificateDer<'static>>>()
                .ok()
                .map(|chain| *chain),
        }
    }

    /// Keying material exported from the TLS session (RFC 5705), equal on both ends and
    /// unique to this connection.
    pub fn export_keying_material(&self, label: &[u8], context: &[u8]) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        match self {
            Link::Quic(conn) => conn.export_keying_material(&mut out, label, context).ok()?,
        }
        Some(out)
    }

    /// Bytes sent and received on this link so far, headers and retransmissions
    /// included (what the network carried).
    pub fn traffic(&self) -> (u64, u64) {
        match self {
            Link::Quic(conn) => {
                let stats = conn.stats();
                (stats.udp_tx.bytes, stats.udp_rx.bytes)
            }
        }
    }

    /// Which transport carries this link, for status displays.
    pub fn transport(&self) -> &'static str {
        match self {
            Link::Quic(_) => "quic",
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Describes why a QUIC connection ended.
pub fn quic_closed(error: &quinn::ConnectionError) -> LinkClosed {
    use quinn::ConnectionError as E;
    match error {
        E::ApplicationClosed(close) => LinkClosed {
            code: Some(CloseCode::from_u32(close.error_code.into_inner() as u32)),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
            by_peer: true,
        },
        E::LocallyClosed => LinkClosed {
            code: Some(CloseCode::Normal),
            reason: "closed by this side".into(),
            by_peer: false,
        },
        E::TimedOut => LinkClosed {
            code: None,
            reason: "the peer stopped answering (idle timeout)".into(),
            by_peer: false,
        },
        E::ConnectionClosed(close) => LinkClosed {
            code: None,
            reason: format!("transport error: {close}"),
            by_peer: true,
        },
        other => LinkClosed {
            code: None,
            reason: other.to_string(),
            by_peer: false,
        },
    }
}

type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
/// A boxed reading half of a stream.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// A stream the peer opened, whose preamble has not been read yet.
pub struct IncomingStream {
    send: BoxWrite,
    recv: BoxRead,
}

impl IncomingStream {
    /// Reads the preamble (within `deadline`) and returns the framed stream it announces.
    pub async fn preamble(mut self, deadline: Duration) -> Result<FramedStream, LinkError> {
        let preamble = tokio::time::timeout(deadline, framing::read_preamble(&mut self.recv))
            .await
            .map_err(|_| LinkError::Timeout(deadline))??
            .ok_or(FrameError::Truncated)?;
        Ok(FramedStream::new(
            self.send,
            self.recv,
            preamble.kind,
            preamble.version,
        ))
    }
}

/// One stream of frames of a known kind and version.
pub struct FramedStream {
    send: BoxWrite,
    recv: BoxRead,
    kind: StreamKind,
    version: u16,
}

impl FramedStream {
    fn new(send: BoxWrite, recv: BoxRead, kind: StreamKind, version: u16) -> Self {
        FramedStream {
            send,
            recv,
            kind,
            version,
        }
    }

    /// What this stream carries.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// The protocol version the opener announced.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Sends one message and flushes it.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), LinkError> {
        framing::write_frame(&mut self.send, message, self.kind.frame_limit()).await?;
        self.send.flush().await.map_err(FrameError::Io)?;
        Ok(())
    }

    /// Receives one message; `None` when the peer finished the stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, LinkError> {
        Ok(framing::read_frame(&mut self.recv, self.kind.frame_limit()).await?)
    }

    /// Receives one message, which must arrive within `deadline`.
    pub async fn recv_within<T: DeserializeOwned>(
        &mut self,
        deadline: Duration,
    ) -> Result<T, LinkError> {
        tokio::time::timeout(deadline, self.recv())
            .await
            .map_err(|_| LinkError::Timeout(deadline))??
            .ok_or(LinkError::Frame(FrameError::Truncated))
    }

    /// Sends raw bytes: only for tests that play a hostile peer.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.send.write_all(bytes).await.map_err(FrameError::Io)?;
        self.send.flush().await.map_err(FrameError::Io)?;
        Ok(())
    }

    /// Ends the sending side; the peer reads the end of the stream after the last frame.
    pub async fn finish(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.send.shutdown()).await;
    }

    /// Splits the stream so that reading can run in its own task. Reading a frame is not
    /// cancel-safe (a dropped read loses the bytes already taken), so a loop that also
    /// waits on timers must receive through [`FrameReader::spawn`] instead.
    pub fn split(self) -> (FrameWriter, FrameReader) {
        let limit = self.kind.frame_limit();
        (
            FrameWriter {
                send: self.send,
                limit,
            },
            FrameReader {
                recv: self.recv,
                limit,
            },
        )
    }

    /// Reads raw bytes after the frames (fetch streams carry file contents this way).
    pub fn into_raw_reader(self) -> BoxRead {
        self.recv
    }
}

/// The sending half of a split stream.
pub struct FrameWriter {
    send: BoxWrite,
    limit: usize,
}

impl FrameWriter {
    /// Sends one message and flushes it.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), LinkError> {
        framing::write_frame(&mut self.send, message, self.limit).await?;
        self.send.flush().await.map_err(FrameError::Io)?;
        Ok(())
    }

    /// Sends raw bytes (the contents that follow a fetch answer).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.send.write_all(bytes).await.map_err(FrameError::Io)?;
        Ok(())
    }

    /// Ends the sending side.
    pub async fn finish(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.send.shutdown()).await;
    }
}

/// The receiving half of a split stream.
pub struct FrameReader {
    recv: BoxRead,
    limit: usize,
}

impl FrameReader {
    /// Receives one message; `None` when the peer finished the stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, LinkError> {
        Ok(framing::read_frame(&mut self.recv, self.limit).await?)
    }

    /// Reads frames in a task of their own and hands them over a channel, whose receive
    /// is safe to use in `select!`. The channel yields the end of the stream as `Ok(None)`
    /// and closes after it or after the first error.
    pub fn spawn<T: DeserializeOwned + Send + 'static>(
        self,
    ) -> tokio::sync::mpsc::Receiver<Result<Option<T>, LinkError>> {
        self.spawn_as::<T, T>()
    }

    /// Like [`spawn`](Self::spawn), for a peer speaking an older shape `W` of the
    /// messages: each is read as `W` and handed over as `T`.
    pub fn spawn_as<W, T>(mut self) -> tokio::sync::mpsc::Receiver<Result<Option<T>, LinkError>>
    where
        W: DeserializeOwned + Into<T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                let item = self.recv::<W>().await.map(|m| m.map(Into::into));
                let last = !matches!(item, Ok(Some(_)));
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        rx
    }
}
