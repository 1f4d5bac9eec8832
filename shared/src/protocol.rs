//! The messages an agent and the control plane exchange, by stream kind.
//!
//! Every stream starts with a [`Preamble`](crate::framing::Preamble) naming its
//! [`StreamKind`] and the protocol version the opener speaks; after that come
//! length-prefixed frames of the types below. Compatibility rules, so that one
//! control plane serves agents of the current and the previous version:
//!
//! - a message type that changes shape gets a new version, and the old shape stays
//!   here (in [`v1`]) for as long as that version is served;
//! - enums only ever gain variants at the end, and a peer is sent only variants that
//!   its version knows;
//! - [`Refusal`] never changes, so any version can read why it was turned away.

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// ALPN protocol identifier for every Continuum connection, QUIC or TLS over TCP.
pub const ALPN: &[u8] = b"continuum/1";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 4;

/// The oldest version the control plane still serves (at least one behind the current
/// one), so upgrading the control plane never strands a site.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Whether the control plane of this build serves agents speaking `version`.
pub fn is_supported(version: u16) -> bool {
    (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// What a stream is for. The kind fixes the message types and the frame size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamKind {
    /// Join with a token, or renew a certificate by proving possession of the site key.
    Enroll = 1,
    /// The long-lived stream of one agent session: hello, welcome, heartbeats, notices.
    Control = 2,
    /// One download of TUF metadata or a target, from an offset (so a broken transfer
    /// resumes where it stopped).
    Fetch = 3,
    /// Telemetry batches from the agent, each acknowledged (protocol version 3).
    Telemetry = 4,
    /// Opened by the control plane: a service's container logs, streamed from the site
    /// (protocol version 3).
    Logs = 5,
}

impl StreamKind {
    /// The largest frame accepted on a stream of this kind, in bytes (payload only).
    pub const fn frame_limit(self) -> usize {
        match self {
            StreamKind::Enroll => 16 * 1024,
            StreamKind::Control => 64 * 1024,
            StreamKind::Fetch => 16 * 1024,
            StreamKind::Telemetry => 256 * 1024,
            StreamKind::Logs => 64 * 1024,
        }
    }

    /// Decodes the kind byte of a preamble.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(StreamKind::Enroll),
            2 => Some(StreamKind::Control),
            3 => Some(StreamKind::Fetch),
            4 => Some(StreamKind::Telemetry),
            5 => Some(StreamKind::Logs),
            _ => None,
        }
    }

    /// A lower-case name for logs and error messages.
    pub const fn name(self) -> &'static str {
        match self {
            StreamKind::Enroll => "enroll",
            StreamKind::Control => "control",
            StreamKind::Fetch => "fetch",
            StreamKind::Telemetry => "telemetry",
            StreamKind::Logs => "logs",
        }
    }
}

/// Why a request was turned down. Sent as a frame before the connection closes, and
/// never changed between versions so that every agent can read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// A machine-readable reason.
    pub code: RefusalCode,
    /// What happened and what to do about it, for a site admin to read.
    pub message: String,
}

/// Machine-readable refusal reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The join token is unknown to this control plane or its secret is wrong.
    InvalidToken,
    /// The join token's lifetime is over.
    TokenExpired,
    /// The join token has no uses left.
    TokenUsed,
    /// Another site is already enrolled under the requested name.
    NameTaken,
    /// The request is malformed (bad CSR, bad name, wrong message for the stream).
    BadRequest,
    /// The site has been revoked by an operator.
    Revoked,
    /// The certificate or key does not belong to any enrolled site.
    UnknownSite,
    /// The protocol version is not served by this control plane.
    UnsupportedVersion,
    /// The stream needs a client certificate and the connection has none.
    Unauthenticated,
    /// The control plane failed; retrying later may help.
    Internal,
}

/// Application close codes carried in QUIC CONNECTION_CLOSE frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly end of a session.
    Normal = 0,
    /// The peer broke the protocol (garbage, oversized frame, wrong message).
    Protocol = 1,
    /// The peer speaks a protocol version that is not served.
    Version = 2,
    /// The peer could not prove who it is, or may not do what it asked.
    Unauthorized = 3,
    /// The site was revoked; it will not be let back in.
    Revoked = 4,
    /// The control plane is shutting down; reconnect later.
    ShuttingDown = 5,
    /// A newer connection of the same site took this one's place.
    Replaced = 6,
    /// An internal error on the closing side.
    Internal = 7,
}

impl CloseCode {
    /// Maps a received code back; unknown codes read as [`CloseCode::Protocol`].
    pub fn from_u32(code: u32) -> Self {
        match code {
            0 => CloseCode::Normal,
            2 => CloseCode::Version,
            3 => CloseCode::Unauthorized,
            4 => CloseCode::Revoked,
            5 => CloseCode::ShuttingDown,
            6 => CloseCode::Replaced,
            7 => CloseCode::Internal,
            _ => CloseCode::Protocol,
        }
    }
}

/// The first frame on an [`StreamKind::Enroll`] stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EnrollRequest {
    /// A new site joins with a token.
    Join(JoinRequest),
    /// An enrolled site asks for a fresh certificate for its registered key.
    Renew(RenewRequest),
}

/// A join: the token's secret, and a certificate request made with a key that never
/// leaves the site.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's public identifier.
    pub token_id: String,
    /// The token's secret, proving the operator handed this token out.
    pub token_secret: Vec<u8>,
    /// The site name asked for; the control plane derives one from the token if absent.
    pub name: Option<String>,
    /// The site's host name, used to derive names under fleet tokens.
    pub hostname: String,
    /// A PKCS#10 certificate signing request (DER), self-signed with the site key.
    pub csr_der: Vec<u8>,
}

/// A renewal. It works without a valid client certificate (one that expired while the
/// site was offline) because `proof` shows possession of the registered key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The site's name.
    pub site: String,
    /// A certificate signing request for the site's registered key (DER).
    pub csr_der: Vec<u8>,
    /// Signature by the site key over [`renewal_proof_message`] for this connection.
    pub proof: Vec<u8>,
}

/// The label under which both ends export TLS keying material for a renewal proof.
pub const RENEWAL_EXPORTER_LABEL: &[u8] = b"EXPORTER-continuum-renewal";

/// The bytes a site signs to prove possession of its key on one particular connection:
/// a fixed context, the site name, and keying material exported from the TLS session,
/// so a proof cannot be replayed on another connection.
pub fn renewal_proof_message(site: &str, exported: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(32 + site.len() + exported.len());
    message.extend_from_slice(b"continuum renewal proof v1\0");
    message.extend_from_slice(site.as_bytes());
    message.push(0);
    message.extend_from_slice(exported);
    message
}

/// The answer on an enroll stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EnrollResponse {
    /// A certificate was issued.
    Issued(IssuedCertificate),
    /// The request was turned down.
    Refused(Refusal),
}

/// A site certificate and what the site needs to use it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The name the site is enrolled under (its certificate's common name).
    pub site: String,
    /// The site's certificate (DER).
    pub cert_der: Vec<u8>,
    /// The control plane's CA certificate (DER), trusted from now on.
    pub ca_der: Vec<u8>,
    /// Start of the certificate's validity, Unix seconds.
    pub not_before: i64,
    /// End of the certificate's validity, Unix seconds.
    pub not_after: i64,
    /// Labels the operator gave the site through its token.
    pub labels: Labels,
}

/// The first frame of an agent on its control stream (protocol version 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's version string.
    pub agent_version: String,
    /// Detected facts about the site (arch, os, cpus, memory, hostname, engine).
    pub labels: Labels,
    /// When the agent process started, Unix seconds.
    pub started_at: i64,
}

/// Message shapes of protocol versions 1 to 3, still served.
pub mod v3 {
    use serde::{Deserialize, Serialize};

    use super::{HealthState, Heartbeat, ServicePhase, TrustStatus};

    /// Versions 1 to 3's agent messages: no secrets key, and service reports without
    /// secret versions.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum AgentMessage {
        /// The agent is alive.
        Heartbeat(Heartbeat),
        /// What the agent made of its desired state.
        Trust(TrustStatus),
        /// The state of one service.
        Service(ServiceReport),
        /// The site admin's update lock.
        Lock(Option<String>),
    }

    /// Versions 1 to 3's service report.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct ServiceReport {
        pub service: String,
        pub desired: Option<String>,
        pub running: Option<String>,
        pub last_known_good: Option<String>,
        pub phase: ServicePhase,
        pub health: HealthState,
        pub restarts: u32,
        pub last_error: Option<String>,
        pub failed: Option<String>,
        pub failure: Option<String>,
        pub at: i64,
    }

    impl From<AgentMessage> for super::AgentMessage {
        fn from(old: AgentMessage) -> Self {
            match old {
                AgentMessage::Heartbeat(beat) => super::AgentMessage::Heartbeat(beat),
                AgentMessage::Trust(status) => super::AgentMessage::Trust(status),
                AgentMessage::Lock(lock) => super::AgentMessage::Lock(lock),
                AgentMessage::Service(r) => super::AgentMessage::Service(super::ServiceReport {
                    service: r.service,
                    desired: r.desired,
                    running: r.running,
                    last_known_good: r.last_known_good,
                    phase: r.phase,
                    health: r.health,
                    restarts: r.restarts,
                    last_error: r.last_error,
                    failed: r.failed,
                    failure: r.failure,
                    at: r.at,
                    secrets: Default::default(),
                }),
            }
        }
    }
}

/// Message shapes of protocol version 1, still served.
pub mod v1 {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    /// Version 1's hello: every label was a string, and the start time was not sent.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Hello {
        /// The agent's version string.
        pub agent_version: String,
        /// Detected facts, all as strings.
        pub labels: BTreeMap<String, String>,
    }

    impl From<Hello> for super::Hello {
        fn from(old: Hello) -> Self {
            super::Hello {
                agent_version: old.agent_version,
                labels: old
                    .labels
                    .into_iter()
                    .map(|(key, value)| {
                        let value = crate::labels::LabelValue::from_legacy(&key, value);
                        (key, value)
                    })
                    .collect(),
                started_at: 0,
            }
        }
    }
}

/// What the control plane sends on a control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The session is accepted.
    Welcome(Welcome),
    /// The session is refused; the connection closes next.
    Refused(Refusal),
    /// The site's desired state is at this generation: fetch and verify it. Sent after
    /// the welcome and whenever it changes (never to version-1 agents).
    DesiredState {
        /// The director targets version for this site.
        generation: u64,
    },
    /// The central team decommissions this site: remove everything of ours (the
    /// services' volumes and images too, unless `keep_data`), report it with
    /// [`AgentMessage::Decommissioned`], then wipe the state and uninstall. Sent after
    /// the welcome and on every notice while the order stands (version 4 on).
    Decommission {
        /// Keep the services' named volumes and images.
        keep_data: bool,
    },
}

/// Acceptance of a session, with the parameters the agent should use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The site name the control plane knows this agent by.
    pub site: String,
    /// The protocol version of this session.
    pub protocol_version: u16,
    /// How often the agent should send a heartbeat.
    pub heartbeat_secs: u32,
    /// The control plane's clock, Unix seconds, so the agent can report skew.
    pub server_time: i64,
}

/// What an agent sends on its control stream after its hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// The agent is alive.
    Heartbeat(Heartbeat),
    /// What the agent made of its desired state.
    Trust(TrustStatus),
    /// The state of one service at the site, sent when it changes.
    Service(ServiceReport),
    /// The site admin's update lock (`continuum-agent lock`): why updates wait, or
    /// `None` when released. Sent at the start of a session and when it changes.
    Lock(Option<String>),
    /// The public half of the site's secrets key (an age recipient, `age1…`): what the
    /// control plane seals this site's secrets to. Sent at the start of every session
    /// from protocol version 4 on.
    SecretsKey(String),
    /// The decommission is carried out: what was removed. The control plane revokes the
    /// site next.
    Decommissioned(String),
}

/// The longest reason a site lock carries.
pub const MAX_LOCK_REASON: usize = 256;

/// The longest text (errors, log tails) a service report carries.
pub const MAX_REPORT_TEXT: usize = 2048;

/// Cuts `text` to at most `max` bytes, keeping its end (where errors and log tails say
/// most).
pub fn keep_end(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = text.len() - max;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
    text
}

/// One service at a site: what should run, what runs, and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The service.
    pub service: String,
    /// The release the desired state names (none: the service is being removed).
    pub desired: Option<String>,
    /// The release whose container runs now.
    pub running: Option<String>,
    /// The last release that proved healthy here.
    pub last_known_good: Option<String>,
    /// Where the service stands.
    pub phase: ServicePhase,
    /// The last health verdict of the running container.
    pub health: HealthState,
    /// Restarts of the running container counted by the engine.
    pub restarts: u32,
    /// The last thing that went wrong, if it still applies.
    pub last_error: Option<String>,
    /// A release that failed here and is not retried until the desired state changes.
    pub failed: Option<String>,
    /// Why it failed, with the container's last log lines.
    pub failure: Option<String>,
    /// When this report was made, Unix seconds.
    pub at: i64,
    /// The versions of the secrets the desired release mounts, as the desired state
    /// the report speaks of sealed them (from protocol version 4 on), so a rollout of a
    /// changed secret knows which report is about the new value. (Never skipped when
    /// empty: bincode frames have no field names.)
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, u64>,
}

/// Where a service stands at a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServicePhase {
    /// Getting the image or creating the container.
    Deploying,
    /// The new release runs and must prove healthy before its deadline.
    Trial,
    /// The desired release runs and proved healthy.
    Running,
    /// The desired release failed; the last-known-good release runs instead.
    RolledBack,
    /// The desired release failed and there is nothing to go back to.
    Failed,
    /// The site's own policy refuses the release.
    Refused,
    /// The service is no longer desired and its containers are gone.
    Removed,
}

impl ServicePhase {
    /// The phase's name, as JSON and the CLI show it.
    pub fn name(self) -> &'static str {
        match self {
            ServicePhase::Deploying => "deploying",
            ServicePhase::Trial => "trial",
            ServicePhase::Running => "running",
            ServicePhase::RolledBack => "rolled-back",
            ServicePhase::Failed => "failed",
            ServicePhase::Refused => "refused",
            ServicePhase::Removed => "removed",
        }
    }
}

/// A health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// Not probed yet, or inside the start period.
    Starting,
    /// The last probes passed.
    Healthy,
    /// The last probe failed.
    Unhealthy,
    /// No container runs.
    Down,
}

impl HealthState {
    /// The verdict's name, as JSON and the CLI show it.
    pub fn name(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Down => "down",
        }
    }
}

/// The outcome of an agent's last attempt to take on new desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustStatus {
    /// The generation it verified last and keeps running (0: none yet).
    pub verified_generation: u64,
    /// The result of the last attempt.
    pub state: TrustState,
    /// Why, when not verified.
    pub reason: Option<String>,
}

/// Results of verifying desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustState {
    /// The newest desired state verified and is now in force.
    Verified,
    /// The newest desired state was refused; the previous one stays in force.
    Refused,
    /// New state could not be fetched or has expired; the previous one stays in force.
    Stale,
}

/// Which TUF repository a fetch reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Repository {
    /// Releases and artifacts, signed by the release keys.
    Image,
    /// This site's desired state, signed by the director.
    Director,
}

/// The first frame on a fetch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Which repository.
    pub repository: Repository,
    /// `metadata/<file>` or `targets/<path>`, as a TUF client asks for them.
    pub path: String,
    /// Byte offset to start from (non-zero when resuming).
    pub offset: u64,
}

/// The answer on a fetch stream; after `Found`, exactly `length - offset` raw bytes
/// follow and the stream ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchResponse {
    /// The file exists; its whole length.
    Found {
        /// Total length of the file.
        length: u64,
    },
    /// No such file (TUF clients treat this differently from other failures).
    NotFound,
    /// The request is not allowed or malformed.
    Refused(Refusal),
}

/// The first frame on a logs stream: which service's logs the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// The service.
    pub service: String,
    /// How many lines from the end to start with.
    pub tail: u32,
    /// Whether to keep streaming new lines until the stream is closed.
    pub follow: bool,
}

/// Largest chunk of log text in one frame.
pub const MAX_LOG_CHUNK: usize = 32 * 1024;

/// What the agent sends on a logs stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFrame {
    /// Log text as the container wrote it (stdout and stderr interleaved).
    Text(String),
    /// The logs ended (the container stopped, or the tail was all that was asked for).
    End,
    /// The request cannot be served (no such service here, no container engine).
    Refused(Refusal),
}

/// A liveness beat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Counts up from 1 within a session.
    pub seq: u64,
    /// Seconds since the agent process started.
    pub uptime_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(secrets: &[(&str, u64)]) -> ServiceReport {
        ServiceReport {
            service: "web".into(),
            desired: Some("2".into()),
            running: Some("1".into()),
            last_known_good: Some("1".into()),
            phase: ServicePhase::Trial,
            health: HealthState::Starting,
            restarts: 0,
            last_error: None,
            failed: None,
            failure: None,
            at: 7,
            secrets: secrets.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        }
    }

    #[test]
    fn service_reports_cross_the_wire_with_and_without_secrets() {
        use crate::framing::{decode_payload, encode_value};
        for original in [report(&[]), report(&[("db", 3)])] {
            let message = AgentMessage::Service(original.clone());
            let bytes = encode_value(&message).unwrap();
            let back: AgentMessage = decode_payload(&bytes, 1 << 20).unwrap();
            assert_eq!(back, message);
        }
    }

    #[test]
    fn a_version_3_agent_message_reads_as_the_current_one() {
        use crate::framing::{decode_payload, encode_value};
        let current = report(&[]);
        let old = v3::AgentMessage::Service(v3::ServiceReport {
            service: current.service.clone(),
            desired: current.desired.clone(),
            running: current.running.clone(),
            last_known_good: current.last_known_good.clone(),
            phase: current.phase,
            health: current.health,
            restarts: current.restarts,
            last_error: None,
            failed: None,
            failure: None,
            at: current.at,
        });
        let bytes = encode_value(&old).unwrap();
        let read: v3::AgentMessage = decode_payload(&bytes, 1 << 20).unwrap();
        assert_eq!(AgentMessage::from(read), AgentMessage::Service(current));
        // A current report is not a version-3 one: the versions really differ.
        let new = encode_value(&AgentMessage::Service(report(&[("db", 1)]))).unwrap();
        assert!(decode_payload::<v3::AgentMessage>(&new, 1 << 20).is_err());
    }

    #[test]
    fn names_are_what_json_shows() {
        let json = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        for phase in [
            ServicePhase::Deploying,
            ServicePhase::Trial,
            ServicePhase::Running,
            ServicePhase::RolledBack,
            ServicePhase::Failed,
            ServicePhase::Refused,
            ServicePhase::Removed,
        ] {
            assert_eq!(phase.name(), json(serde_json::to_value(phase).unwrap()));
        }
        for health in [
            HealthState::Starting,
            HealthState::Healthy,
            HealthState::Unhealthy,
            HealthState::Down,
        ] {
            assert_eq!(health.name(), json(serde_json::to_value(health).unwrap()));
        }
    }

    #[test]
    fn keep_end_keeps_whole_characters_at_the_end() {
        assert_eq!(keep_end("abcdef".into(), 3), "def");
        assert_eq!(keep_end("aé".into(), 2), "é");
        assert_eq!(keep_end("abc".into(), 10), "abc");
    }
}
