//! The client-under-test for the TUF conformance suite
//! (theupdateframework/tuf-conformance, `CLIENT-CLI.md`): `init`, `refresh` and
//! `download`, built on the agent's own verification code
//! (`continuum_agent::trust::load_repository`) with a plain HTTP transport, since the
//! suite serves its repositories over HTTP. See the README for how to run the suite.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use async_trait::async_trait;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// TUF conformance client for Continuum's verification code.
#[derive(Debug, Parser)]
struct Args {
    /// Where trusted metadata lives (root.json, timestamp.json, …).
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata.
    #[arg(long)]
    metadata_url: Option<String>,
    /// Target paths to download, in order.
    #[arg(long = "target-name")]
    target_names: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Where downloaded targets go.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trust this root.
    Init {
        /// The initial root.json.
        trusted_root: PathBuf,
    },
    /// Update the trusted metadata.
    Refresh,
    /// Update, then download the targets.
    Download,
}

/// Most bytes of one HTTP answer.
const MAX_RESPONSE: u64 = 64 << 20;

/// A file name and the bytes received for it.
type Fetched = (String, Vec<u8>);

/// GET over HTTP/1.1 on loopback, one connection per request. It remembers the exact
/// bytes of every metadata file it fetched, so that trusted metadata can be stored
/// byte for byte as received.
#[derive(Debug, Clone, Default)]
struct Http {
    fetched: std::sync::Arc<std::sync::Mutex<Vec<Fetched>>>,
}

#[async_trait]
impl Transport for Http {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let fail =
            |m: String| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), m);
        if url.scheme() != "http" {
            return Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url.as_str(),
            ));
        }
        let host = url.host_str().ok_or_else(|| fail("no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let mut stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| fail("no HTTP header".into()))?;
        let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut body = raw[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body).ok_or_else(|| fail("bad chunked body".into()))?;
        }
        if status == 200
            && let Some(name) = url.path_segments().and_then(|mut s| s.next_back())
            && let Ok(mut fetched) = self.fetched.lock()
        {
            fetched.push((name.to_owned(), body.clone()));
        }
        match status {
            200 => Ok(Box::pin(Once(Some(Ok(Bytes::from(body)))))),
            403 | 404 => Err(TransportError::new(
                TransportErrorKind::FileNotFound,
                url.as_str(),
            )),
            other => Err(fail(format!("HTTP {other}"))),
        }
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&body[..line_end])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

struct Once(Option<Result<Bytes, TransportError>>);

impl futures_core::Stream for Once {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.take())
    }
}

fn base(url: &str) -> anyhow::Result<Url> {
    let with_slash = if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    };
    Ok(Url::parse(&with_slash)?)
}

/// tough keeps its datastore (including its clock file) here; the suite reads the
/// trusted roles from the metadata directory itself.
fn datastore(args: &Args) -> PathBuf {
    args.metadata_dir.join("datastore")
}

async fn load(args: &Args) -> anyhow::Result<tough::Repository> {
    let metadata = base(
        args.metadata_url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--metadata-url is required"))?,
    )?;
    let targets = base(
        args.target_base_url
            .as_deref()
            .unwrap_or("http://127.0.0.1/unused/"),
    )?;
    let store = datastore(args);
    let root = std::fs::read(store.join("root.json"))
        .or_else(|_| std::fs::read(args.metadata_dir.join("root.json")))?;
    let http = Http::default();
    let result =
        continuum_agent::trust::load_repository(&root, &store, metadata, targets, http.clone())
            .await;
    mirror(args, &http)?;
    Ok(result?)
}

fn version_of(bytes: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    value["signed"]["version"].as_u64()
}

/// Copies what tough trusts now into the metadata directory under plain role names,
/// using the bytes as they were received whenever this run fetched that version.
fn mirror(args: &Args, http: &Http) -> anyhow::Result<()> {
    let store = datastore(args);
    let fetched = http.fetched.lock().map(|f| f.clone()).unwrap_or_default();
    let trusted: Vec<String> = std::fs::read_dir(&store)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".json") && n != "latest_known_time.json")
                .collect()
        })
        .unwrap_or_default();
    for name in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        if !trusted.iter().any(|t| t == name) {
            let _ = std::fs::remove_file(args.metadata_dir.join(name));
        }
    }
    for name in trusted {
        let ours = std::fs::read(store.join(&name))?;
        let version = version_of(&ours);
        let role = name.trim_end_matches(".json");
        let received = fetched.iter().rev().find(|(file, bytes)| {
            (file == &name
                || file
                    .strip_suffix(&format!(".{name}"))
                    .is_some_and(|v| v.parse::<u64>().is_ok())
                || file.ends_with(&format!(".{role}.json")))
                && version_of(bytes) == version
        });
        let target = args.metadata_dir.join(&name);
        let keep = std::fs::read(&target)
            .ok()
            .filter(|b| version_of(b) == version);
        let bytes = match (received, keep) {
            (Some((_, bytes)), _) => bytes.clone(),
            (None, Some(existing)) => existing,
            (None, None) => ours,
        };
        std::fs::write(target, bytes)?;
    }
    Ok(())
}

/// A target's file name in the target directory: the path with `/` escaped, so every
/// target has one flat file.
fn local_name(target: &str) -> String {
    target.replace('%', "%25").replace('/', "%2F")
}

async fn download(args: &Args) -> anyhow::Result<()> {
    let repo = load(args).await?;
    let dir = args
        .target_dir
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--target-dir is required"))?;
    std::fs::create_dir_all(dir)?;
    for name in &args.target_names {
        let target = tough::TargetName::new(name.as_str())?;
        let path: &Path = &dir.join(local_name(name));
        let expected = repo
            .targets()
            .signed
            .find_target(&target, false)
            .map(|t| t.hashes.sha256.to_vec())
            .ok();
        if let (Some(hash), Ok(bytes)) = (&expected, std::fs::read(path))
            && continuum_shared::tls::sha256(&bytes).as_slice() == hash.as_slice()
        {
            continue; // cached and still what the metadata says
        }
        let stream = repo
            .read_target(&target)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name} is not a target"))?;
        let bytes = tough::IntoVec::into_vec(stream).await?;
        std::fs::write(path, bytes)?;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Command::Init { trusted_root } => std::fs::create_dir_all(datastore(&args))
            .and_then(|()| std::fs::copy(trusted_root, args.metadata_dir.join("root.json")))
            .and_then(|_| {
                std::fs::copy(trusted_root, datastore(&args).join("root.json")).map(|_| ())
            })
            .map_err(anyhow::Error::from),
        Command::Refresh => load(&args).await.map(|_| ()),
        Command::Download => download(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
