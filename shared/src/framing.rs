//! How bytes on a stream become messages.
//!
//! A stream opens with a six-byte [`Preamble`] (`CTM`, protocol version, stream kind);
//! after it come frames: a big-endian `u32` payload length, then the payload, a
//! bincode-encoded message. The length is checked against the stream kind's limit before
//! a single payload byte is read, and decoding is capped by the same limit, so a hostile
//! peer can make us buffer at most one frame's worth.
//!
//! This module is the only place that knows the codec (bincode 2), so the wire encoding
//! can change here alone.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::FrameError;
use crate::protocol::StreamKind;

/// Bytes that open every stream, so a stray connection is told apart from a peer.
pub const MAGIC: [u8; 3] = *b"CTM";

/// Length of the preamble in bytes.
pub const PREAMBLE_LEN: usize = 6;

/// The header of every stream: which protocol version the opener speaks and what the
/// stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// The opener's protocol version.
    pub version: u16,
    /// What the stream carries.
    pub kind: StreamKind,
}

impl Preamble {
    /// The six bytes of this preamble.
    pub fn encode(self) -> [u8; PREAMBLE_LEN] {
        let v = self.version.to_be_bytes();
        [MAGIC[0], MAGIC[1], MAGIC[2], v[0], v[1], self.kind as u8]
    }

    /// Reads a preamble; any version is accepted here (the server decides what it serves).
    pub fn decode(bytes: [u8; PREAMBLE_LEN]) -> Result<Self, FrameError> {
        if bytes[..3] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let kind = StreamKind::from_byte(bytes[5]).ok_or(FrameError::UnknownKind(bytes[5]))?;
        Ok(Preamble {
            version: u16::from_be_bytes([bytes[3], bytes[4]]),
            kind,
        })
    }
}

/// Encodes `message` as one frame (length prefix included), refusing to produce a
/// frame the receiver would reject.
pub fn encode_frame<T: Serialize>(message: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; 4];
    bincode::serde::encode_into_std_write(message, &mut frame, config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let size = frame.len() - 4;
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    frame[..4].copy_from_slice(&(size as u32).to_be_bytes());
    Ok(frame)
}

/// Encodes `value` without a length prefix, for storing in sled in the wire codec.
pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Decodes one frame's payload. Every byte must be used: trailing bytes are an error.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8], limit: usize) -> Result<T, FrameError> {
    if payload.len() > limit {
        return Err(FrameError::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    let (value, used) =
        decode_capped(payload, limit).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Malformed(format!(
            "{} bytes left over after the message",
            payload.len() - used
        )));
    }
    Ok(value)
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes with bincode's allocation cap set to the smallest class that holds `limit`,
/// so a length field inside a small frame cannot make us allocate a large buffer.
fn decode_capped<T: DeserializeOwned>(
    payload: &[u8],
    limit: usize,
) -> Result<(T, usize), bincode::error::DecodeError> {
    const K16: usize = 16 * 1024;
    const K64: usize = 64 * 1024;
    const M1: usize = 1024 * 1024;
    const M16: usize = 16 * 1024 * 1024;
    let base = config();
    if limit <= K16 {
        bincode::serde::decode_from_slice(payload, base.with_limit::<K16>())
    } else if limit <= K64 {
        bincode::serde::decode_from_slice(payload, base.with_limit::<K64>())
    } else if limit <= M1 {
        bincode::serde::decode_from_slice(payload, base.with_limit::<M1>())
    } else {
        bincode::serde::decode_from_slice(payload, base.with_limit::<M16>())
    }
}

/// Writes a preamble.
pub async fn write_preamble<W: AsyncWrite + Unpin>(
    w: &mut W,
    preamble: Preamble,
) -> Result<(), FrameError> {
    w.write_all(&preamble.encode()).await?;
    Ok(())
}

/// Reads a preamble; `None` if the stream ended before any byte.
pub async fn read_preamble<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Preamble>, FrameError> {
    let mut bytes = [0u8; PREAMBLE_LEN];
    if !read_exact_or_eof(r, &mut bytes).await? {
        return Ok(None);
    }
    Preamble::decode(bytes).map(Some)
}

/// Writes one message as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    message: &T,
    limit: usize,
) -> Result<(), FrameError> {
    let frame = encode_frame(message, limit)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame and decodes it; `None` if the stream ended cleanly between frames.
/// The length is checked before the payload is read.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    limit: usize,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    if !read_exact_or_eof(r, &mut len).await? {
        return Ok(None);
    }
    let size = u32::from_be_bytes(len) as usize;
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    let mut payload = vec![0u8; size];
    if !read_exact_or_eof(r, &mut payload).await? && size > 0 {
        return Err(FrameError::Truncated);
    }
    decode_payload(&payload, limit).map(Some)
}

/// Fills `buf`; `Ok(false)` if the stream ended before the first byte, an error if it
/// ended part way.
async fn read_exact_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{LabelValue, Labels};
    use crate::protocol::{AgentMessage, Heartbeat, Hello};
    use proptest::prelude::*;

    fn hello() -> Hello {
        let mut labels = Labels::new();
        labels.insert("cpus".into(), LabelValue::Int(2));
        labels.insert("arch".into(), "x86_64".into());
        Hello {
            agent_version: "0.1.0".into(),
            labels,
            started_at: 1_700_000_000,
        }
    }

    #[tokio::test]
    async fn frames_round_trip_through_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let preamble = Preamble {
            version: 2,
            kind: StreamKind::Control,
        };
        write_preamble(&mut a, preamble).await.unwrap();
        write_frame(&mut a, &hello(), 1024).await.unwrap();
        let beat = AgentMessage::Heartbeat(Heartbeat {
            seq: 1,
            uptime_secs: 9,
        });
        write_frame(&mut a, &beat, 1024).await.unwrap();
        drop(a);
        assert_eq!(read_preamble(&mut b).await.unwrap(), Some(preamble));
        assert_eq!(
            read_frame::<_, Hello>(&mut b, 1024).await.unwrap(),
            Some(hello())
        );
        assert_eq!(
            read_frame::<_, AgentMessage>(&mut b, 1024).await.unwrap(),
            Some(beat)
        );
        assert_eq!(
            read_frame::<_, AgentMessage>(&mut b, 1024).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading_the_payload() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(10_000_000u32).to_be_bytes()).await.unwrap();
        let err = read_frame::<_, Hello>(&mut b, 64 * 1024).await.unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    size: 10_000_000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn encoder_refuses_frames_the_peer_would_reject() {
        let err = encode_frame(&"x".repeat(100), 50).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    #[test]
    fn bad_magic_and_unknown_kind() {
        assert!(matches!(
            Preamble::decode(*b"GET / "),
            Err(FrameError::BadMagic)
        ));
        assert!(matches!(
            Preamble::decode([b'C', b'T', b'M', 0, 2, 99]),
            Err(FrameError::UnknownKind(99))
        ));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut frame = encode_frame(&hello(), 1024).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_payload::<Hello>(&frame[4..], 1024),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn a_small_frame_cannot_claim_a_huge_allocation() {
        // A string whose length field claims far more bytes than the frame holds.
        let mut payload = vec![253u8]; // bincode varint marker for a u64 length
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode_payload::<String>(&payload, 16 * 1024).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_payload::<Hello>(&bytes, 16 * 1024);
            let _ = decode_payload::<AgentMessage>(&bytes, 16 * 1024);
            let _ = decode_payload::<crate::protocol::EnrollRequest>(&bytes, 16 * 1024);
            let mut pre = [0u8; PREAMBLE_LEN];
            for (slot, b) in pre.iter_mut().zip(bytes.iter()) { *slot = *b; }
            let _ = Preamble::decode(pre);
        }

        #[test]
        fn hello_round_trips(version in any::<String>(), started in any::<i64>(), n in any::<i64>()) {
            let mut labels = Labels::new();
            labels.insert("memory".into(), LabelValue::Int(n));
            labels.insert("agent".into(), LabelValue::Text(version.clone()));
            let h = Hello { agent_version: version, labels, started_at: started };
            let frame = encode_frame(&h, 64 * 1024).unwrap();
            prop_assert_eq!(decode_payload::<Hello>(&frame[4..], 64 * 1024).unwrap(), h);
        }
    }
}
