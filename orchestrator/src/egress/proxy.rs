//! The per-call egress proxy: one unix socket per call that egress is granted to, the only way
//! out of its container (which keeps `NetworkMode: none`). HTTP `CONNECT` and plain
//! absolute-form HTTP only — no raw TCP, no UDP, no DNS for the container. For each connection
//! the host and port are decided by the call's [`EgressRules`] (an `ask` goes to an
//! [`Asker`]: the user), the name is resolved here and every address checked
//! ([`EgressRules::check_address`]), and one [`EgressRecord`] reports what happened: host,
//! port, address, bytes each way, and the rule or person that decided. No TLS is intercepted:
//! past `CONNECT` the proxy copies bytes it cannot read.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rules::{normalize_host, EgressRules};
use crate::calls::Decision;

/// Largest request head read before deciding (a `CONNECT` line and its headers).
const MAX_HEAD: usize = 16 * 1024;

/// What the proxy of one call may do.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub rules: EgressRules,
    /// Connections one call may open (allowed or not).
    pub max_connections: u32,
    /// Bytes one call may move, both directions, all connections.
    pub max_bytes: u64,
    /// How long the client has to send its request head.
    pub head_timeout: Duration,
    /// Resolving the name and connecting to it.
    pub connect_timeout: Duration,
}

/// The user's answer about a host the rules say to ask about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allowed {
        by: String,
    },
    Denied {
        by: String,
    },
    /// Nobody answered in time: a denial.
    TimedOut,
}

/// Asks the call's owner whether the call may reach `host:port` (the proxy holds the
/// connection meanwhile).
pub trait Asker: Send + Sync {
    fn ask(&self, host: &str, port: u16) -> BoxFuture<'static, Answer>;
}

/// One connection's outcome, for the audit and the metrics. Never the bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRecord {
    pub host: String,
    pub port: u16,
    /// `connect` or `http`.
    pub method: &'static str,
    /// The address connected to (or refused).
    pub address: Option<IpAddr>,
    pub allowed: bool,
    /// The rule id, `user NAME`, `timeout`, or `built-in: …`.
    pub decided_by: String,
    /// Why it was refused or failed.
    pub reason: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

struct Shared {
    cfg: ProxyConfig,
    asker: Arc<dyn Asker>,
    report: mpsc::UnboundedSender<EgressRecord>,
    connections: AtomicU32,
    bytes: AtomicU64,
}

/// Serves `listener` until `stop` is cancelled; each connection in its own task (ended by
/// `stop` too).
pub async fn serve(
    listener: UnixListener,
    cfg: ProxyConfig,
    asker: Arc<dyn Asker>,
    report: mpsc::UnboundedSender<EgressRecord>,
    stop: CancellationToken,
) {
    let shared = Arc::new(Shared {
        cfg,
        asker,
        report,
        connections: AtomicU32::new(0),
        bytes: AtomicU64::new(0),
    });
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.cancelled() => return,
        };
        let Ok((stream, _)) = conn else { continue };
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = handle(stream, &shared) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The request a client sent: where to, how, and the bytes to pass on after the decision.
struct Target {
    host: String,
    port: u16,
    method: &'static str,
    /// For plain HTTP: the request head rewritten for the origin server, and what followed.
    forward: Vec<u8>,
}

async fn handle(mut client: UnixStream, sh: &Shared) {
    let n = sh.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let head = tokio::time::timeout(sh.cfg.head_timeout, read_head(&mut client)).await;
    let target = match head {
        Ok(Ok(buf)) => parse_target(&buf),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no request within the time limit".to_string()),
    };
    let target = match target {
        Ok(t) => t,
        Err(why) => {
            let _ = refuse(&mut client, 400, &why).await;
            return;
        }
    };
    let mut rec = EgressRecord {
        host: target.host.clone(),
        port: target.port,
        method: target.method,
        address: None,
        allowed: false,
        decided_by: String::new(),
        reason: None,
        bytes_up: 0,
        bytes_down: 0,
    };
    if n > sh.cfg.max_connections {
        rec.decided_by = "built-in: connection limit".into();
        let why = format!(
            "this call may open at most {} connections",
            sh.cfg.max_connections
        );
        return deny(&mut client, sh, rec, 403, why).await;
    }
    let (decision, rule) = sh.cfg.rules.decide(&target.host, target.port);
    rec.decided_by = rule.clone();
    match decision {
        Decision::Allow => {}
        Decision::Deny => {
            let why = format!("{}:{} is denied by {rule}", target.host, target.port);
            return deny(&mut client, sh, rec, 403, why).await;
        }
        Decision::Ask => match sh.asker.ask(&target.host, target.port).await {
            Answer::Allowed { by } => rec.decided_by = by,
            Answer::Denied { by } => {
                rec.decided_by = by.clone();
                let why = format!("{}:{} was denied by {by}", target.host, target.port);
                return deny(&mut client, sh, rec, 403, why).await;
            }
            Answer::TimedOut => {
                rec.decided_by = "timeout".into();
                let why = format!("nobody approved {}:{} in time", target.host, target.port);
                return deny(&mut client, sh, rec, 403, why).await;
            }
        },
    }
    let upstream = match tokio::time::timeout(sh.cfg.connect_timeout, connect(sh, &target)).await {
        Ok(Ok((s, addr))) => {
            rec.address = Some(addr.ip());
            s
        }
        Ok(Err((addr, why, status))) => {
            rec.address = addr;
            return deny(&mut client, sh, rec, status, why).await;
        }
        Err(_) => {
            let why = format!("{}:{} did not answer in time", target.host, target.port);
            return deny(&mut client, sh, rec, 504, why).await;
        }
    };
    rec.allowed = true;
    let mut upstream = upstream;
    if target.method == "connect"
        && client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
    {
        return report(sh, rec);
    }
    if !target.forward.is_empty() {
        let total = sh.bytes.load(Ordering::Relaxed) + target.forward.len() as u64;
        if total > sh.cfg.max_bytes {
            rec.reason = Some(format!(
                "the call's egress limit of {} bytes was reached",
                sh.cfg.max_bytes
            ));
            return report(sh, rec);
        }
        if upstream.write_all(&target.forward).await.is_err() {
            return report(sh, rec);
        }
        rec.bytes_up += target.forward.len() as u64;
        sh.bytes
            .fetch_add(target.forward.len() as u64, Ordering::Relaxed);
    }
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let (up, down) = tokio::join!(pump(cr, uw, sh), pump(ur, cw, sh));
    rec.bytes_up += up.0;
    rec.bytes_down += down.0;
    if up.1 || down.1 {
        rec.reason = Some(format!(
            "the call's egress limit of {} bytes was reached",
            sh.cfg.max_bytes
        ));
    }
    report(sh, rec)
}

fn report(sh: &Shared, rec: EgressRecord) {
    let _ = sh.report.send(rec);
}

async fn deny(
    client: &mut UnixStream,
    sh: &Shared,
    mut rec: EgressRecord,
    status: u16,
    why: String,
) {
    rec.allowed = false;
    rec.reason = Some(why.clone());
    let _ = refuse(client, status, &why).await;
    report(sh, rec);
}

/// A clear answer the command prints (curl, pip and git show the status line and body).
async fn refuse(client: &mut UnixStream, status: u16, why: &str) -> std::io::Result<()> {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        502 => "Bad Gateway",
        _ => "Gateway Timeout",
    };
    // One line, no control characters: it goes into a header.
    let why: String = why
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body = format!("airlock egress: {why}\n");
    let msg = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Airlock-Reason: {why}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(msg.as_bytes()).await?;
    client.shutdown().await
}

/// Reads until the end of the request head (`\r\n\r\n`), at most [`MAX_HEAD`] bytes; what
/// follows it in the buffer belongs to the body or the tunnel.
async fn read_head(client: &mut UnixStream) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the connection closed before a request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("the request head is over {MAX_HEAD} bytes"));
        }
    }
}

fn split_host_port(authority: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]:443`, `host:443`; a bare IPv6 literal has colons but no brackets.
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("`{authority}` has no valid port"))?;
            (h, port)
        }
        _ => match default_port {
            Some(p) => (authority, p),
            None => return Err(format!("`{authority}` names no port")),
        },
    };
    if port == 0 {
        return Err(format!("`{authority}` has port 0"));
    }
    let host = normalize_host(host).ok_or_else(|| format!("`{host}` is not a host name"))?;
    Ok((host, port))
}

fn parse_target(buf: &[u8]) -> Result<Target, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err("an incomplete request head".into()),
        Err(e) => return Err(format!("not an HTTP request: {e}")),
    };
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let rest = &buf[len..];
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_host_port(path, None)?;
        return Ok(Target {
            host,
            port,
            method: "connect",
            forward: rest.to_vec(),
        });
    }
    let Some(after) = path.strip_prefix("http://") else {
        return Err(if path.starts_with("https://") {
            "an https:// URL goes through CONNECT (set HTTPS_PROXY)".into()
        } else {
            "only CONNECT and absolute http:// requests go through this proxy".into()
        });
    };
    let (authority, origin) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not passed on".into());
    }
    let (host, port) = split_host_port(authority, Some(80))?;
    // The head for the origin server: origin-form target, no proxy headers, one request per
    // connection (a second request on it would skip the decision).
    let mut head = format!("{method} {origin} HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
            continue;
        }
        head.push_str(h.name);
        head.push_str(": ");
        head.push_str(&String::from_utf8_lossy(h.value));
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut forward = head.into_bytes();
    forward.extend_from_slice(rest);
    Ok(Target {
        host,
        port,
        method: "http",
        forward,
    })
}

type ConnectError = (Option<IpAddr>, String, u16);

/// Resolves the name here (the container has no resolver) and connects to the first address
/// the rules do not refuse.
async fn connect(sh: &Shared, t: &Target) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let addrs: Vec<SocketAddr> = match t.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, t.port)],
        Err(_) => tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| (None, format!("{} does not resolve: {e}", t.host), 502))?
            .collect(),
    };
    let mut refused = None;
    let mut last_err = None;
    for addr in addrs {
        if let Err(why) = sh.cfg.rules.check_address(addr.ip()) {
            refused.get_or_insert((Some(addr.ip()), why, 403));
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok((s, addr)),
            Err(e) => last_err = Some((Some(addr.ip()), format!("{addr}: {e}"), 502)),
        }
    }
    Err(last_err
        .or(refused)
        .unwrap_or((None, format!("{} has no address", t.host), 502)))
}

/// Copies until EOF or the call's byte limit; returns the bytes copied and whether the limit
/// ended it.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    sh: &Shared,
) -> (u64, bool) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut copied = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let total = sh.bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > sh.cfg.max_bytes {
            let _ = to.shutdown().await;
            return (copied, true);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        copied += n as u64;
    }
    let _ = to.shutdown().await;
    (copied, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::rules::{HostPattern, HostRule};
    use tokio::net::TcpListener;

    struct Scripted(Answer, Duration);
    impl Asker for Scripted {
        fn ask(&self, _host: &str, _port: u16) -> BoxFuture<'static, Answer> {
            let (a, d) = (self.0.clone(), self.1);
            Box::pin(async move {
                tokio::time::sleep(d).await;
                a
            })
        }
    }

    fn rules(default: Decision, hosts: &[(&str, Decision)]) -> EgressRules {
        EgressRules {
            hosts: hosts
                .iter()
                .enumerate()
                .map(|(i, (h, d))| HostRule {
                    pattern: HostPattern::parse(h).unwrap(),
                    ports: None,
                    decision: *d,
                    id: format!("hosts[{i}]"),
                })
                .collect(),
            default,
            default_id: "network.default".into(),
            allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        sock: std::path::PathBuf,
        records: mpsc::UnboundedReceiver<EgressRecord>,
        stop: CancellationToken,
    }

    async fn rig(rules: EgressRules, asker: Scripted, max_bytes: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("egress.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let cfg = ProxyConfig {
            rules,
            max_connections: 8,
            max_bytes,
            head_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        };
        tokio::spawn(serve(listener, cfg, Arc::new(asker), tx, stop.clone()));
        Rig {
            _dir: dir,
            sock,
            records: rx,
            stop,
        }
    }

    /// An origin that answers every connection with a fixed HTTP response and echoes what
    /// it read first into the body.
    async fn origin() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let body = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        port
    }

    async fn exchange(sock: &std::path::Path, send: &[u8]) -> String {
        let mut c = UnixStream::connect(sock).await.unwrap();
        c.write_all(send).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn an_allowed_host_is_proxied_for_http_and_connect_and_reported() {
        let port = origin().await;
        let mut r = rig(
            rules(Decision::Deny, &[("localhost", Decision::Allow)]),
            Scripted(Answer::TimedOut, Duration::ZERO),
            1 << 20,
        )
        .await;
        let got = exchange(
            &r.sock,
            format!("GET http://localhost:{port}/simple/pkg/ HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: secret\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        assert!(
            got.contains("GET /simple/pkg/ HTTP/1.1"),
            "origin-form: {got}"
        );
        assert!(
            !got.contains("secret"),
            "proxy headers are not passed on: {got}"
        );
        assert!(got.contains("Connection: close"), "{got}");
        let rec = r.records.recv().await.unwrap();
        assert!(rec.allowed, "{rec:?}");
        assert_eq!(
            (rec.host.as_str(), rec.port, rec.method),
            ("localhost", port, "http")
        );
        assert_eq!(rec.decided_by, "hosts[0]");
        assert_eq!(rec.address, Some("127.0.0.1".parse().unwrap()));
        assert!(rec.bytes_up > 0 && rec.bytes_down > 0, "{rec:?}");

        let got = exchange(
            &r.sock,
            format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\nTUNNELLED")
                .as_bytes(),
        )
        .await;
        assert!(
            got.starts_with("HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 200 OK"),
            "{got}"
        );
        assert!(got.ends_with("TUNNELLED"), "{got}");
        assert_eq!(r.records.recv().await.unwrap().method, "connect");
        r.stop.cancel();
    }

    #[tokio::test]
    async fn denied_unlisted_private_and_malformed_requests_get_a_clear_403_or_400() {
        let port = origin().await;
        let mut r = rig(
            EgressRules {
                allowed_cidrs: vec![],
                ..rules(
                    Decision::Deny,
                    &[
                        ("localhost", Decision::Allow),
                        ("blocked.test", Decision::Deny),
                    ],
                )
            },
            Scripted(Answer::TimedOut, Duration::ZERO),
            1 << 20,
        )
        .await;
        let cases = [
            (
                "CONNECT blocked.test:443 HTTP/1.1\r\n\r\n".to_string(),
                "403",
                "denied by hosts[1]",
            ),
            (
                "CONNECT unlisted.test:443 HTTP/1.1\r\n\r\n".to_string(),
                "403",
                "denied by network.default",
            ),
            // Allowed by name, but loopback is not listed in allowed_cidrs here.
            (
                format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n"),
                "403",
                "loopback",
            ),
            (
                "GET https://x.test/ HTTP/1.1\r\n\r\n".to_string(),
                "400",
                "CONNECT",
            ),
            ("hello\r\n\r\n".to_string(), "400", "not an HTTP request"),
            (
                "GET http://user:pw@localhost/ HTTP/1.1\r\n\r\n".to_string(),
                "400",
                "credentials",
            ),
        ];
        for (req, status, why) in cases {
            let got = exchange(&r.sock, req.as_bytes()).await;
            assert!(
                got.starts_with(&format!("HTTP/1.1 {status}")),
                "{req:?} → {got}"
            );
            assert!(got.contains(why), "{req:?} → {got}");
            assert!(got.contains("X-Airlock-Reason: "), "{got}");
        }
        let rec = r.records.recv().await.unwrap();
        assert!(!rec.allowed && rec.decided_by == "hosts[1]", "{rec:?}");
        assert_eq!(
            r.records.recv().await.unwrap().decided_by,
            "network.default"
        );
        let rec = r.records.recv().await.unwrap();
        assert!(rec.address.is_some_and(|a| a.is_loopback()), "{rec:?}");
        r.stop.cancel();
    }

    #[tokio::test]
    async fn an_ask_waits_for_the_answer_and_a_timeout_is_a_denial() {
        let port = origin().await;
        for (answer, ok, by) in [
            (
                Answer::Allowed {
                    by: "user alice".into(),
                },
                true,
                "user alice",
            ),
            (
                Answer::Denied {
                    by: "user alice".into(),
                },
                false,
                "user alice",
            ),
            (Answer::TimedOut, false, "timeout"),
        ] {
            let mut r = rig(
                rules(Decision::Ask, &[]),
                Scripted(answer, Duration::from_millis(200)),
                1 << 20,
            )
            .await;
            let got = exchange(
                &r.sock,
                format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nping").as_bytes(),
            )
            .await;
            assert_eq!(got.starts_with("HTTP/1.1 200"), ok, "{got}");
            let rec = r.records.recv().await.unwrap();
            assert_eq!((rec.allowed, rec.decided_by.as_str()), (ok, by), "{rec:?}");
            r.stop.cancel();
        }
    }

    #[tokio::test]
    async fn the_byte_limit_ends_a_transfer_and_the_connection_limit_refuses() {
        let port = origin().await;
        let mut r = rig(
            rules(Decision::Allow, &[]),
            Scripted(Answer::TimedOut, Duration::ZERO),
            64,
        )
        .await;
        let big = "x".repeat(1000);
        let got = exchange(
            &r.sock,
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n{big}").as_bytes(),
        )
        .await;
        assert!(
            !got.contains(&big),
            "over the limit nothing more passes: {got}"
        );
        let rec = r.records.recv().await.unwrap();
        assert!(
            rec.reason.as_deref().unwrap_or("").contains("limit"),
            "{rec:?}"
        );
        r.stop.cancel();

        let mut r = rig(
            rules(Decision::Allow, &[]),
            Scripted(Answer::TimedOut, Duration::ZERO),
            1 << 20,
        )
        .await;
        for i in 0..9 {
            let got = exchange(
                &r.sock,
                format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nping").as_bytes(),
            )
            .await;
            assert_eq!(
                got.starts_with("HTTP/1.1 200"),
                i < 8,
                "connection {i}: {got}"
            );
            r.records.recv().await.unwrap();
        }
        r.stop.cancel();
    }
}
