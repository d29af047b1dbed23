//! Virus scanning: the [`Scanner`] trait, the clamd client ([`Clamd`]), the reply parser, and
//! [`FakeScanner`], a scripted scanner that tests use to inject faults.
//!
//! A scan is incremental, so the put path can feed the bytes it is already reading for the
//! chunker (no second read of the data): [`Scanner::start`] opens a scan, [`ScanStream::feed`]
//! passes each piece of content as it is read, [`ScanStream::finish`] ends the stream and
//! returns the [`Verdict`].
//!
//! The clamd protocol (ClamAV's `clamd`, over TCP or a Unix socket):
//! - `zINSTREAM\0`, then the content as frames of a 4-byte big-endian length followed by that
//!   many bytes, then a frame of length 0. The reply ends with `\0`:
//!   `stream: OK` (clean), `stream: NAME FOUND` (infected by signature NAME),
//!   `INSTREAM size limit exceeded. ERROR` (the stream passed clamd's `StreamMaxLength`; clamd
//!   closes the socket, so a write may fail first: the reply is read even then), or another
//!   `... ERROR`.
//! - `zPING\0` → `PONG`; `zVERSION\0` → e.g. `ClamAV 1.4.6/27480/Thu Nov 26 08:00:00 2026`.
//!
//! Replies are parsed exactly ([`parse_scan_reply`]): only the literal `stream: OK` is clean.
//! Anything unexpected is an error, and an error is never "clean".

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// What a scanner said about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// The signature that matched, as the scanner names it (custom clamd signatures end in
    /// `.UNOFFICIAL`).
    Infected(String),
}

/// Why a scan gave no verdict. Every variant but [`ScanError::StreamLimit`] means the scanner
/// is unavailable (down, slow, broken): the put path fails closed on those unless configured to
/// fail open. `StreamLimit` is about the file, not the scanner: such a file is always refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// No connection could be made.
    #[error("cannot reach the virus scanner at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    /// The scanner did not accept data or answer in time.
    #[error("the virus scanner at {addr} timed out {during}")]
    Timeout { addr: String, during: String },
    /// The scanner answered with an error (other than the stream limit).
    #[error("the virus scanner at {addr} reported an error: {reply}")]
    Failed { addr: String, reply: String },
    /// The connection broke or the scanner answered something this client does not know.
    #[error("the virus scanner at {addr} failed: {detail}")]
    Protocol { addr: String, detail: String },
    /// The stream is longer than the scanner accepts.
    #[error("the file is larger than the virus scanner accepts ({detail})")]
    StreamLimit { detail: String },
}

impl ScanError {
    /// True for everything but the stream limit: the scanner, not the file, is the problem.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, ScanError::StreamLimit { .. })
    }

    /// What went wrong, without the scanner's address or the OS's words: what a file's
    /// `unscanned` stamp records, since its owner reads it (the detail goes to the log).
    pub fn summary(&self) -> &'static str {
        match self {
            ScanError::Unreachable { .. } => "the virus scanner could not be reached",
            ScanError::Timeout { .. } => "the virus scanner timed out",
            ScanError::Failed { .. } => "the virus scanner reported an error",
            ScanError::Protocol { .. } => "the virus scanner failed",
            ScanError::StreamLimit { .. } => "the file is larger than the virus scanner accepts",
        }
    }
}

/// A virus scanner. Implementations are shared by every put of a store, so they are `Send +
/// Sync`; each scan is its own [`ScanStream`].
///
/// Contracts:
/// - `start` either returns a stream ready to take content or fails; it does not read content.
/// - A verdict is only ever what the scanner said. A scanner that cannot be reached, times out,
///   answers an error or an unknown reply produces a [`ScanError`], never [`Verdict::Clean`].
/// - `ping` succeeds only when the scanner answered that it is alive; `version` returns the
///   scanner's own description (engine and signature versions).
pub trait Scanner: Send + Sync + fmt::Debug {
    /// Opens a scan of one stream.
    fn start(&self) -> Result<Box<dyn ScanStream>, ScanError>;
    /// Checks that the scanner answers.
    fn ping(&self) -> Result<(), ScanError>;
    /// The scanner's version string.
    fn version(&self) -> Result<String, ScanError>;
}

/// One scan in progress.
///
/// Contracts:
/// - `feed` takes the next bytes of the content, in order; it may buffer them. Once it returns
///   an error the scan is over: the error is the outcome (for clamd, what it answered after
///   closing the connection, e.g. the stream limit), and the stream must not be fed or finished.
/// - `finish` ends the content and returns the verdict for exactly the bytes fed.
/// - Dropping a stream without finishing it abandons the scan; no verdict is produced.
pub trait ScanStream: Send {
    fn feed(&mut self, data: &[u8]) -> Result<(), ScanError>;
    fn finish(self: Box<Self>) -> Result<Verdict, ScanError>;
}

// ------------------------------------------------------------------------------ replies

/// The clamd reply to the size limit, exactly.
const SIZE_LIMIT_REPLY: &str = "INSTREAM size limit exceeded. ERROR";

/// Strips the one terminator a clamd reply ends with (`\0` after a `z` command, `\n` after an
/// `n` command). Returns `None` when the reply has none, or holds another NUL or a line break.
fn reply_text(reply: &[u8]) -> Option<&str> {
    let body = reply
        .strip_suffix(b"\0")
        .or_else(|| reply.strip_suffix(b"\n"))?;
    if body.iter().any(|&b| b == 0 || b == b'\n' || b == b'\r') {
        return None;
    }
    std::str::from_utf8(body).ok()
}

/// Parses the reply to `zINSTREAM` exactly: `stream: OK`, `stream: NAME FOUND`, the size-limit
/// error, or another error reply. `addr` names the scanner in errors.
pub fn parse_scan_reply(reply: &[u8], addr: &str) -> Result<Verdict, ScanError> {
    let unknown = || ScanError::Protocol {
        addr: addr.to_string(),
        detail: format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(200)])
        ),
    };
    let text = reply_text(reply).ok_or_else(unknown)?;
    if text == SIZE_LIMIT_REPLY {
        return Err(ScanError::StreamLimit {
            detail: format!("clamd at {addr} answered {SIZE_LIMIT_REPLY:?}"),
        });
    }
    if let Some(rest) = text.strip_prefix("stream: ") {
        if rest == "OK" {
            return Ok(Verdict::Clean);
        }
        if let Some(name) = rest.strip_suffix(" FOUND") {
            let valid = !name.is_empty()
                && !name.starts_with(' ')
                && !name.ends_with(' ')
                && name.chars().all(|c| !c.is_control());
            return if valid {
                Ok(Verdict::Infected(name.to_string()))
            } else {
                Err(unknown())
            };
        }
    }
    if text.ends_with(" ERROR") {
        return Err(ScanError::Failed {
            addr: addr.to_string(),
            reply: text.to_string(),
        });
    }
    Err(unknown())
}

// ------------------------------------------------------------------------------ clamd

/// Where clamd listens: `tcp://host:port` or `unix:/path/to/clamd.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for ClamdAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(hostport) = s.strip_prefix("tcp://") {
            let hostport = hostport.trim_end_matches('/');
            match hostport.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(ClamdAddress::Tcp(hostport.to_string()))
                }
                _ => Err(format!("clamd address {s:?}: expected tcp://HOST:PORT")),
            }
        } else if let Some(path) = s.strip_prefix("unix:") {
            // `unix:/run/clamd.sock` and `unix:///run/clamd.sock` both name /run/clamd.sock.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.starts_with('/') {
                Ok(ClamdAddress::Unix(PathBuf::from(path)))
            } else {
                Err(format!("clamd address {s:?}: expected unix:/ABSOLUTE/PATH"))
            }
        } else {
            Err(format!(
                "clamd address {s:?}: expected tcp://HOST:PORT or unix:/PATH"
            ))
        }
    }
}

impl fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddress::Tcp(hp) => write!(f, "tcp://{hp}"),
            ClamdAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Serialize for ClamdAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClamdAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Timeouts of the clamd client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Making the connection (TCP).
    pub connect: Duration,
    /// Each write of content, and the answer to PING/VERSION.
    pub io: Duration,
    /// The verdict, after the last byte was sent (clamd scans then).
    pub scan: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            io: Duration::from_secs(30),
            scan: Duration::from_secs(120),
        }
    }
}

/// Content bytes per INSTREAM frame (clamd's own clients use similar sizes).
const FRAME: usize = 256 * 1024;
/// Longest reply read from clamd.
const MAX_REPLY: usize = 4096;

/// A clamd client. Every scan and command uses its own connection.
#[derive(Debug, Clone)]
pub struct Clamd {
    addr: ClamdAddress,
    timeouts: Timeouts,
}

impl Clamd {
    pub fn new(addr: ClamdAddress, timeouts: Timeouts) -> Self {
        Clamd { addr, timeouts }
    }

    pub fn address(&self) -> &ClamdAddress {
        &self.addr
    }

    fn connect(&self) -> Result<Conn, ScanError> {
        let unreachable = |detail: String| ScanError::Unreachable {
            addr: self.addr.to_string(),
            detail,
        };
        let conn = match &self.addr {
            ClamdAddress::Tcp(hostport) => {
                let addrs: Vec<_> = hostport
                    .to_socket_addrs()
                    .map_err(|e| unreachable(format!("resolving {hostport}: {e}")))?
                    .collect();
                let mut last = None;
                let mut stream = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, self.timeouts.connect) {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = stream.ok_or_else(|| {
                    unreachable(last.map_or("no address".to_string(), |e| e.to_string()))
                })?;
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }
            ClamdAddress::Unix(path) => {
                Conn::Unix(UnixStream::connect(path).map_err(|e| unreachable(e.to_string()))?)
            }
        };
        conn.set_write_timeout(self.timeouts.io)
            .map_err(|e| unreachable(e.to_string()))?;
        conn.set_read_timeout(self.timeouts.io)
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(conn)
    }

    /// Sends a `z` command and reads its `\0`-terminated answer.
    fn command(&self, cmd: &str) -> Result<String, ScanError> {
        let mut conn = self.connect()?;
        let addr = self.addr.to_string();
        conn.write_all(format!("z{cmd}\0").as_bytes())
            .map_err(|e| io_failure(&addr, &format!("sending {cmd}"), e))?;
        let reply = read_reply(
            &mut conn,
            &addr,
            &format!("waiting for the answer to {cmd}"),
        )?;
        reply_text(&reply)
            .map(str::to_string)
            .ok_or_else(|| ScanError::Protocol {
                addr,
                detail: format!(
                    "unexpected answer to {cmd}: {:?}",
                    String::from_utf8_lossy(&reply)
                ),
            })
    }
}

impl Scanner for Clamd {
    fn start(&self) -> Result<Box<dyn ScanStream>, ScanError> {
        let mut conn = self.connect()?;
        let addr = self.addr.to_string();
        conn.write_all(b"zINSTREAM\0")
            .map_err(|e| io_failure(&addr, "sending INSTREAM", e))?;
        let mut buf = Vec::with_capacity(FRAME + 8);
        buf.extend_from_slice(&[0; 4]);
        Ok(Box::new(ClamdStream {
            conn,
            addr,
            buf,
            scan_timeout: self.timeouts.scan,
        }))
    }

    fn ping(&self) -> Result<(), ScanError> {
        let reply = self.command("PING")?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(ScanError::Protocol {
                addr: self.addr.to_string(),
                detail: format!("PING answered {reply:?}, not PONG"),
            })
        }
    }

    fn version(&self) -> Result<String, ScanError> {
        let v = self.command("VERSION")?;
        if v.starts_with("ClamAV ") {
            Ok(v)
        } else {
            Err(ScanError::Protocol {
                addr: self.addr.to_string(),
                detail: format!("VERSION answered {v:?}"),
            })
        }
    }
}

/// An INSTREAM scan in progress. `buf` is the next frame: 4 bytes reserved for its length,
/// then up to [`FRAME`] bytes of content.
struct ClamdStream {
    conn: Conn,
    addr: String,
    buf: Vec<u8>,
    scan_timeout: Duration,
}

impl ClamdStream {
    /// Sends the frame in `buf` (with `tail` appended after it, e.g. the terminator).
    fn send(&mut self, tail: &[u8]) -> Result<(), ScanError> {
        let len = (self.buf.len() - 4) as u32;
        if len == 0 && tail.is_empty() {
            return Ok(());
        }
        let wire: &[u8] = if len == 0 {
            tail
        } else {
            self.buf[..4].copy_from_slice(&len.to_be_bytes());
            self.buf.extend_from_slice(tail);
            &self.buf
        };
        let sent = self.conn.write_all(wire);
        self.buf.truncate(4);
        if let Err(e) = sent {
            return Err(self.after_write_failure(e));
        }
        Ok(())
    }

    /// clamd closes the connection when it refuses the stream (its size limit), and says why
    /// first: read that answer before blaming the write.
    fn after_write_failure(&mut self, e: io::Error) -> ScanError {
        let write_error = io_failure(&self.addr, "sending content", e);
        let _ = self.conn.set_read_timeout(Duration::from_secs(2));
        match read_reply(&mut self.conn, &self.addr, "reading the answer") {
            Ok(reply) if !reply.is_empty() => match parse_scan_reply(&reply, &self.addr) {
                Err(e) => e,
                // A verdict while content was still being refused: not one to trust.
                Ok(_) => write_error,
            },
            _ => write_error,
        }
    }
}

impl ScanStream for ClamdStream {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), ScanError> {
        while !data.is_empty() {
            let room = FRAME + 4 - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == FRAME + 4 {
                self.send(&[])?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Verdict, ScanError> {
        self.send(&0u32.to_be_bytes())?;
        let _ = self.conn.set_read_timeout(self.scan_timeout);
        let reply = read_reply(&mut self.conn, &self.addr, "waiting for the verdict")?;
        let _ = self.conn.shutdown();
        parse_scan_reply(&reply, &self.addr)
    }
}

/// Reads a reply up to and including its `\0` (or to the end of the connection), at most
/// [`MAX_REPLY`] bytes.
fn read_reply(conn: &mut Conn, addr: &str, during: &str) -> Result<Vec<u8>, ScanError> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failure(addr, during, e)),
        };
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if buf[..n].contains(&0) {
            break;
        }
        if reply.len() > MAX_REPLY {
            return Err(ScanError::Protocol {
                addr: addr.to_string(),
                detail: format!("the answer is longer than {MAX_REPLY} bytes"),
            });
        }
    }
    if reply.is_empty() {
        return Err(ScanError::Protocol {
            addr: addr.to_string(),
            detail: format!("the connection closed without an answer ({during})"),
        });
    }
    Ok(reply)
}

fn io_failure(addr: &str, during: &str, e: io::Error) -> ScanError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ScanError::Timeout {
            addr: addr.to_string(),
            during: during.to_string(),
        },
        _ => ScanError::Protocol {
            addr: addr.to_string(),
            detail: format!("{during}: {e}"),
        },
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(Some(t)),
            Conn::Unix(s) => s.set_write_timeout(Some(t)),
        }
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

// ------------------------------------------------------------------------------ the put path

pub use crate::pack::manifest::ScanStamp;

/// Which categories are scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanCategories {
    All,
    Only(BTreeSet<String>),
}

impl ScanCategories {
    pub fn covers(&self, category: &str) -> bool {
        match self {
            ScanCategories::All => true,
            ScanCategories::Only(set) => set.contains(category),
        }
    }

    /// Whether a put whose decision names these categories (the file's, and the one its
    /// content alone belongs to: `validate::Decision::scan_categories`) is scanned.
    pub fn covers_any<'a>(&self, categories: impl IntoIterator<Item = &'a str>) -> bool {
        categories.into_iter().any(|c| self.covers(c))
    }
}

impl Default for ScanCategories {
    /// Every upload (SPEC §4); narrowing it is a configuration choice.
    fn default() -> Self {
        ScanCategories::All
    }
}

/// Scanning on the put path (`Config::scan`).
#[derive(Debug, Clone)]
pub struct ScanConfig {
    pub scanner: Arc<dyn Scanner>,
    /// When the scanner is unavailable: store the file marked unscanned (`true`) or refuse the
    /// put with [`Error::ScanUnavailable`] (`false`, the default).
    pub fail_open: bool,
    pub categories: ScanCategories,
    /// The longest stream the scanner takes (clamd's `StreamMaxLength` must be at least this).
    /// A scanned file over it is refused with [`Error::TooLarge`], whatever `fail_open` says.
    pub stream_max: u64,
}

impl ScanConfig {
    /// Scans every upload with `scanner`, failing closed, up to 100 MiB.
    pub fn new(scanner: Arc<dyn Scanner>) -> Self {
        ScanConfig {
            scanner,
            fail_open: false,
            categories: ScanCategories::default(),
            stream_max: DEFAULT_STREAM_MAX,
        }
    }

    fn too_large(&self, what: String) -> Error {
        Error::TooLarge {
            limit: self.stream_max,
            what,
        }
    }
}

/// Whether the scanner answers, and its version: the engine and signature versions that
/// checked the files (`stats`, `/healthz`, the admin stats endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ScannerStatus {
    Ok { version: String },
    Unavailable { error: String },
}

impl crate::store::Store {
    /// The configured scanner's status (asks it: blocking); `None` when nothing is scanned.
    pub fn scanner_status(&self) -> Option<ScannerStatus> {
        self.scan_config().map(|c| match c.scanner.version() {
            Ok(version) => ScannerStatus::Ok { version },
            Err(e) => ScannerStatus::Unavailable {
                error: e.to_string(),
            },
        })
    }
}

/// clamd's own default `StreamMaxLength`.
pub const DEFAULT_STREAM_MAX: u64 = 100 << 20;

/// What scanning decided about one put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The category is not scanned.
    NotRequired,
    Stamped(ScanStamp),
}

enum GateState {
    Off,
    Running(Box<dyn ScanStream>),
    /// Failing open: the scanner failed with this reason; the content streams on unscanned.
    Unscanned(String),
    /// The scan failed and the put with it: no verdict will come.
    Refused,
}

/// The put path's scanning reader: yields exactly the bytes of `source` and feeds each to the
/// scan as the pipeline reads it, so the content is read once. Errors travel inside the
/// `io::Error` (as with [`crate::validate::Guarded`]): [`Error::ScanUnavailable`] when failing
/// closed, [`Error::TooLarge`] past the stream limit. [`ScanGate::finish`] gives the verdict
/// once the pipeline has read to the end.
pub(crate) struct ScanGate<'c, R> {
    source: R,
    config: Option<&'c ScanConfig>,
    state: GateState,
    seen: u64,
}

impl<'c, R: Read> ScanGate<'c, R> {
    /// Starts a scan when any of `categories` (the file's, and its content's: see
    /// `validate::Decision::scan_categories`) is scanned. A declared size over the stream limit
    /// is refused here, before any content is sent; so is an unreachable scanner when failing
    /// closed.
    pub(crate) fn new(
        source: R,
        config: Option<&'c ScanConfig>,
        categories: &[&str],
        declared_size: Option<u64>,
    ) -> Result<Self> {
        let config = config.filter(|c| c.categories.covers_any(categories.iter().copied()));
        let category = categories.first().copied().unwrap_or_default();
        let mut gate = ScanGate {
            source,
            config,
            state: GateState::Off,
            seen: 0,
        };
        let Some(c) = config else {
            return Ok(gate);
        };
        if let Some(n) = declared_size
            && n > c.stream_max
        {
            return Err(c.too_large(format!(
                "a {n}-byte file in category {category:?}, which is virus-scanned: the scanner \
                 takes at most scan.stream_max"
            )));
        }
        gate.state = match c.scanner.start() {
            Ok(stream) => GateState::Running(stream),
            Err(e) => on_failure(c, e)?,
        };
        Ok(gate)
    }

    /// Ends the scan (call after the source was read to its end).
    pub(crate) fn finish(self) -> Result<Outcome> {
        Ok(match self.state {
            GateState::Off => Outcome::NotRequired,
            GateState::Refused => {
                return Err(Error::ScanUnavailable(
                    "the scan of this file failed".into(),
                ));
            }
            GateState::Unscanned(reason) => Outcome::Stamped(ScanStamp::Unscanned { reason }),
            GateState::Running(stream) => match stream.finish() {
                Ok(Verdict::Clean) => Outcome::Stamped(ScanStamp::Clean),
                Ok(Verdict::Infected(signature)) => {
                    Outcome::Stamped(ScanStamp::Infected { signature })
                }
                Err(e) => {
                    let c = self.config.expect("only a gate with a config scans");
                    match on_failure(c, e)? {
                        GateState::Unscanned(reason) => {
                            Outcome::Stamped(ScanStamp::Unscanned { reason })
                        }
                        _ => unreachable!("on_failure only continues unscanned"),
                    }
                }
            },
        })
    }
}

/// The state after the scanner failed with `e`, or the put's error.
fn on_failure(c: &ScanConfig, e: ScanError) -> Result<GateState> {
    if !e.is_unavailable() {
        return Err(c.too_large(e.to_string()));
    }
    if c.fail_open {
        tracing::warn!(error = %e, "virus scanner unavailable: storing the file unscanned");
        return Ok(GateState::Unscanned(e.summary().to_string()));
    }
    Err(Error::ScanUnavailable(e.to_string()))
}

impl<R: Read> Read for ScanGate<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if matches!(self.state, GateState::Refused) {
            return Err(io::Error::other(Error::ScanUnavailable(
                "the scan of this file already failed".into(),
            )));
        }
        let n = self.source.read(buf)?;
        let Some(c) = self.config else {
            return Ok(n);
        };
        self.seen += n as u64;
        if self.seen > c.stream_max {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                c.too_large(
                    "the file is virus-scanned and longer than the scanner takes \
                     (scan.stream_max)"
                        .into(),
                ),
            ));
        }
        if n > 0
            && let GateState::Running(stream) = &mut self.state
            && let Err(e) = stream.feed(&buf[..n])
        {
            match on_failure(c, e) {
                Ok(next) => self.state = next,
                Err(err) => {
                    self.state = GateState::Refused;
                    return Err(io::Error::other(err));
                }
            }
        }
        Ok(n)
    }
}

// ------------------------------------------------------------------------------ fake

/// What a [`FakeScanner`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeBehaviour {
    /// Every stream is clean, unless it contains `infected_marker` (then it is infected by
    /// `signature`).
    Scan {
        infected_marker: Vec<u8>,
        signature: String,
    },
    /// The scanner cannot be reached: `start` fails.
    Down,
    /// The scanner accepts content but never answers: `finish` fails with a timeout.
    Timeout,
    /// The scanner answers an error reply.
    ErrorReply(String),
    /// The scanner breaks off once it has received this many bytes (the connection drops).
    DropAfter(u64),
}

/// A scripted scanner for tests: deterministic verdicts and injected faults, and counts of
/// what it was sent.
#[derive(Debug)]
pub struct FakeScanner {
    behaviour: Mutex<FakeBehaviour>,
    scans: AtomicU64,
    bytes: Arc<AtomicU64>,
}

impl FakeScanner {
    pub fn new(behaviour: FakeBehaviour) -> Self {
        FakeScanner {
            behaviour: Mutex::new(behaviour),
            scans: AtomicU64::new(0),
            bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Infected when the content holds `marker`.
    pub fn detecting(marker: &[u8], signature: &str) -> Self {
        Self::new(FakeBehaviour::Scan {
            infected_marker: marker.to_vec(),
            signature: signature.to_string(),
        })
    }

    pub fn set(&self, behaviour: FakeBehaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Scans started (successfully or not).
    pub fn scans(&self) -> u64 {
        self.scans.load(Ordering::SeqCst)
    }

    /// Content bytes fed, over all scans.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    const ADDR: &'static str = "fake";
}

impl Scanner for FakeScanner {
    fn start(&self) -> Result<Box<dyn ScanStream>, ScanError> {
        self.scans.fetch_add(1, Ordering::SeqCst);
        let behaviour = self.behaviour.lock().unwrap().clone();
        if behaviour == FakeBehaviour::Down {
            return Err(ScanError::Unreachable {
                addr: Self::ADDR.into(),
                detail: "connection refused (injected)".into(),
            });
        }
        Ok(Box::new(FakeStream {
            behaviour,
            content: Vec::new(),
            fed: 0,
            bytes: self.bytes.clone(),
        }))
    }

    fn ping(&self) -> Result<(), ScanError> {
        match &*self.behaviour.lock().unwrap() {
            FakeBehaviour::Down => Err(ScanError::Unreachable {
                addr: Self::ADDR.into(),
                detail: "connection refused (injected)".into(),
            }),
            _ => Ok(()),
        }
    }

    fn version(&self) -> Result<String, ScanError> {
        self.ping().map(|_| "FakeScanner 1".to_string())
    }
}

struct FakeStream {
    behaviour: FakeBehaviour,
    /// Kept only while looking for a marker (tests scan small files).
    content: Vec<u8>,
    fed: u64,
    bytes: Arc<AtomicU64>,
}

impl ScanStream for FakeStream {
    fn feed(&mut self, data: &[u8]) -> Result<(), ScanError> {
        self.fed += data.len() as u64;
        self.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        match &self.behaviour {
            FakeBehaviour::DropAfter(n) if self.fed > *n => Err(ScanError::Protocol {
                addr: FakeScanner::ADDR.into(),
                detail: "connection reset by peer (injected)".into(),
            }),
            FakeBehaviour::Scan { .. } => {
                self.content.extend_from_slice(data);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn finish(self: Box<Self>) -> Result<Verdict, ScanError> {
        match self.behaviour {
            FakeBehaviour::Scan {
                infected_marker,
                signature,
            } => {
                let hit = !infected_marker.is_empty()
                    && self
                        .content
                        .windows(infected_marker.len())
                        .any(|w| w == infected_marker.as_slice());
                Ok(if hit {
                    Verdict::Infected(signature)
                } else {
                    Verdict::Clean
                })
            }
            FakeBehaviour::Timeout => Err(ScanError::Timeout {
                addr: FakeScanner::ADDR.into(),
                during: "waiting for the verdict (injected)".into(),
            }),
            FakeBehaviour::ErrorReply(reply) => {
                parse_scan_reply(format!("{reply}\0").as_bytes(), FakeScanner::ADDR)
            }
            FakeBehaviour::DropAfter(_) => Ok(Verdict::Clean),
            FakeBehaviour::Down => unreachable!("a down scanner starts no stream"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn parse(s: &[u8]) -> Result<Verdict, ScanError> {
        parse_scan_reply(s, "test")
    }

    #[test]
    fn replies_parse_exactly() {
        assert_eq!(parse(b"stream: OK\0"), Ok(Verdict::Clean));
        assert_eq!(parse(b"stream: OK\n"), Ok(Verdict::Clean));
        assert_eq!(
            parse(b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0"),
            Ok(Verdict::Infected("Eicar-Test-Signature.UNOFFICIAL".into()))
        );
        assert_eq!(
            parse(b"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0"),
            Ok(Verdict::Infected(
                "Heuristics.Limits.Exceeded.MaxFileSize".into()
            ))
        );
        assert!(matches!(
            parse(b"INSTREAM size limit exceeded. ERROR\0"),
            Err(ScanError::StreamLimit { .. })
        ));
        assert!(matches!(
            parse(b"stream: Can't allocate memory ERROR\0"),
            Err(ScanError::Failed { .. })
        ));
        // Things that contain "OK" but are not the clean answer.
        for bad in [
            &b"stream: OK"[..],             // no terminator: cut off
            b"stream: OKAY\0",              // not OK
            b"stream:OK\0",                 // no space
            b"Stream: OK\0",                // wrong case
            b" stream: OK\0",               // leading space
            b"stream: OK \0",               // trailing space
            b"stream: OK\0stream: OK\0",    // two replies
            b"stream: OK\r\n",              // CRLF
            b"OK\0",                        // bare
            b"PONG\0",                      // another command's answer
            b"stream:  FOUND\0",            // empty name
            b"stream: FOUND\0",             // no name
            b"stream: Bad\x01Name FOUND\0", // control character
            b"\0",
            b"",
            b"stream: \xff\xfe FOUND\0", // not UTF-8
        ] {
            let got = parse(bad);
            assert!(
                matches!(got, Err(ScanError::Protocol { .. })),
                "{:?} gave {got:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(
            !parse(b"INSTREAM size limit exceeded. ERROR\0")
                .unwrap_err()
                .is_unavailable()
        );
        assert!(parse(b"junk\0").unwrap_err().is_unavailable());
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "tcp://127.0.0.1:3310".parse(),
            Ok(ClamdAddress::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            "tcp://[::1]:3310".parse(),
            Ok(ClamdAddress::Tcp("[::1]:3310".into()))
        );
        assert_eq!(
            "unix:/run/clamav/clamd.ctl".parse(),
            Ok(ClamdAddress::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(
            "unix:///run/clamd.sock".parse(),
            Ok(ClamdAddress::Unix("/run/clamd.sock".into()))
        );
        for bad in [
            "127.0.0.1:3310",
            "tcp://127.0.0.1",
            "tcp://:3310",
            "tcp://h:99999",
            "unix:relative.sock",
            "http://x:1",
        ] {
            assert!(bad.parse::<ClamdAddress>().is_err(), "{bad}");
        }
        let a: ClamdAddress = "unix:/x.sock".parse().unwrap();
        assert_eq!(a.to_string(), "unix:/x.sock");
    }

    /// A one-connection fake clamd: `serve` gets the command and the framed content it received
    /// and answers.
    fn fake_clamd(
        serve: impl FnOnce(&mut TcpStream) + Send + 'static,
    ) -> (Clamd, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ClamdAddress::Tcp(l.local_addr().unwrap().to_string());
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            serve(&mut s);
        });
        let timeouts = Timeouts {
            connect: Duration::from_secs(2),
            io: Duration::from_millis(500),
            scan: Duration::from_millis(500),
        };
        (Clamd::new(addr, timeouts), h)
    }

    /// Reads `zINSTREAM\0` and the frames up to the terminator; returns the content.
    fn read_instream(s: &mut TcpStream) -> Vec<u8> {
        let mut cmd = [0u8; 10];
        s.read_exact(&mut cmd).unwrap();
        assert_eq!(&cmd, b"zINSTREAM\0");
        let mut content = Vec::new();
        loop {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                return content;
            }
            assert!(len <= FRAME, "frame of {len} bytes");
            let start = content.len();
            content.resize(start + len, 0);
            s.read_exact(&mut content[start..]).unwrap();
        }
    }

    #[test]
    fn instream_frames_the_content_and_reads_the_verdict() {
        let data: Vec<u8> = (0..(FRAME * 2 + 1234)).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let (clamd, h) = fake_clamd(move |s| {
            let got = read_instream(s);
            assert!(got == expect, "content differs");
            s.write_all(b"stream: Some.Sig FOUND\0").unwrap();
        });
        let mut scan = clamd.start().unwrap();
        // Pieces of awkward sizes.
        for piece in data.chunks(70_001) {
            scan.feed(piece).unwrap();
        }
        assert_eq!(scan.finish(), Ok(Verdict::Infected("Some.Sig".into())));
        h.join().unwrap();

        // The empty stream is just the terminator.
        let (clamd, h) = fake_clamd(|s| {
            assert!(read_instream(s).is_empty());
            s.write_all(b"stream: OK\0").unwrap();
        });
        assert_eq!(clamd.start().unwrap().finish(), Ok(Verdict::Clean));
        h.join().unwrap();
    }

    #[test]
    fn the_size_limit_answer_is_read_after_the_write_fails() {
        let (clamd, h) = fake_clamd(|s| {
            let mut cmd = [0u8; 10];
            s.read_exact(&mut cmd).unwrap();
            let mut some = vec![0u8; 100_000];
            s.read_exact(&mut some).unwrap();
            s.write_all(b"INSTREAM size limit exceeded. ERROR\0")
                .unwrap();
            // Close with unread data: the client's writes fail.
        });
        let mut scan = clamd.start().unwrap();
        let piece = vec![7u8; 1 << 20];
        let mut outcome = Ok(());
        for _ in 0..64 {
            outcome = scan.feed(&piece);
            if outcome.is_err() {
                break;
            }
        }
        h.join().unwrap();
        let err = match outcome {
            Err(e) => e,
            Ok(()) => scan.finish().unwrap_err(),
        };
        assert!(matches!(err, ScanError::StreamLimit { .. }), "{err:?}");
    }

    #[test]
    fn silence_is_a_timeout_and_a_dropped_connection_is_no_verdict() {
        let (clamd, h) = fake_clamd(|s| {
            read_instream(s);
            thread::sleep(Duration::from_millis(1500));
        });
        let mut scan = clamd.start().unwrap();
        scan.feed(b"hello").unwrap();
        let err = scan.finish().unwrap_err();
        assert!(matches!(err, ScanError::Timeout { .. }), "{err:?}");
        assert!(err.is_unavailable());
        h.join().unwrap();

        let (clamd, h) = fake_clamd(|s| {
            read_instream(s);
        });
        let mut scan = clamd.start().unwrap();
        scan.feed(b"hello").unwrap();
        let err = scan.finish().unwrap_err();
        assert!(matches!(err, ScanError::Protocol { .. }), "{err:?}");
        h.join().unwrap();
    }

    #[test]
    fn nobody_listening_is_unreachable() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let clamd = Clamd::new(ClamdAddress::Tcp(addr.to_string()), Timeouts::default());
        assert!(matches!(
            clamd.start().err(),
            Some(ScanError::Unreachable { .. })
        ));
        assert!(matches!(clamd.ping(), Err(ScanError::Unreachable { .. })));
        let clamd = Clamd::new(
            ClamdAddress::Unix("/nonexistent/clamd.sock".into()),
            Timeouts::default(),
        );
        assert!(matches!(
            clamd.version(),
            Err(ScanError::Unreachable { .. })
        ));
    }

    #[test]
    fn ping_and_version_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamd.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let h = thread::spawn(move || {
            for answer in [
                &b"PONG\0"[..],
                b"ClamAV 1.4.6/27000/Thu Nov 26 2026\0",
                b"PONGX\0",
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut cmd = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).unwrap() == 1 && b[0] != 0 {
                    cmd.push(b[0]);
                }
                assert!(cmd == b"zPING" || cmd == b"zVERSION", "{cmd:?}");
                s.write_all(answer).unwrap();
            }
        });
        let clamd = Clamd::new(ClamdAddress::Unix(path), Timeouts::default());
        clamd.ping().unwrap();
        assert_eq!(
            clamd.version().unwrap(),
            "ClamAV 1.4.6/27000/Thu Nov 26 2026"
        );
        assert!(matches!(clamd.ping(), Err(ScanError::Protocol { .. })));
        h.join().unwrap();
    }

    #[test]
    fn the_fake_scanner_injects_faults() {
        let f = FakeScanner::detecting(b"EVIL", "Fake.Evil");
        let mut s = f.start().unwrap();
        s.feed(b"xxEV").unwrap();
        s.feed(b"ILyy").unwrap();
        assert_eq!(s.finish(), Ok(Verdict::Infected("Fake.Evil".into())));
        assert_eq!((f.scans(), f.bytes()), (1, 8));
        f.set(FakeBehaviour::Down);
        assert!(f.start().is_err() && f.ping().is_err());
        f.set(FakeBehaviour::Timeout);
        assert!(matches!(
            f.start().unwrap().finish(),
            Err(ScanError::Timeout { .. })
        ));
        f.set(FakeBehaviour::ErrorReply(
            "stream: Can't allocate memory ERROR".into(),
        ));
        assert!(matches!(
            f.start().unwrap().finish(),
            Err(ScanError::Failed { .. })
        ));
        f.set(FakeBehaviour::DropAfter(3));
        assert!(f.start().unwrap().feed(b"abcd").is_err());
    }
}
