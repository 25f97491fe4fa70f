//! The server's HTTP/1.1 framing, driven over raw sockets: file downloads leave through
//! `sendfile` whatever came before them on the connection, and every request the server's own
//! path does not read (chunked bodies, `HEAD`, HTTP/1.0, ambiguous framing) is still answered, or
//! refused, by hyper on the same connection.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use upkeep_test_support::{HttpAnswer, HttpConnection, demo_archive, http_get};

use crate::harness::{World, device_token, wait_for};
use crate::on_each_backend;

/// An [`HttpConnection`] whose failures fail the test.
struct Connection(HttpConnection);

impl Connection {
    fn open(addr: SocketAddr) -> Connection {
        Connection(HttpConnection::open(addr, Duration::from_secs(20)).expect("connect"))
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.send(bytes).expect("send");
    }

    /// Every answer on a kept-alive connection must say where its body ends.
    fn answer_to(&mut self, head_request: bool) -> HttpAnswer {
        let answer = self.0.answer(head_request).expect("an answer");
        let framed = answer.header("content-length").is_some()
            || answer
                .header("transfer-encoding")
                .is_some_and(|v| v.contains("chunked"));
        assert!(head_request || framed, "no length in {}", answer.head);
        answer
    }

    fn answer(&mut self) -> HttpAnswer {
        self.answer_to(false)
    }

    fn closed(&mut self) -> bool {
        self.0.closed().expect("read")
    }
}

/// A check-in body with nothing installed.
const CHECKIN: &str = r#"{"hostname":"ws","os":"linux","arch":"x86_64","agent_version":"0.1.0","installed":[]}"#;

/// A raw check-in request with `body`, as `token`'s workstation.
fn checkin_request(host: SocketAddr, token: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /api/v1/device/checkin HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The server's `/metrics` text.
fn metrics(world: &World) -> String {
    let (status, text) = http_get(world.server.addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of one series (`name` or `name{labels}`) in `/metrics` text; 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse::<f64>().expect("metric value"))
}

/// Bytes of stored files the server has sent so far with `sendfile` and by copying.
fn file_bytes_sent(world: &World) -> (u64, u64) {
    let text = metrics(world);
    let counter = |how: &str| series(&text, &format!("upkeep_file_bytes_sent_total{{how=\"{how}\"}}")) as u64;
    (counter("sendfile"), counter("copied"))
}

/// Publishes demo 1.0.0 (about 2 MB) to everyone and enrolls an agent; returns the archive,
/// its digest and the agent's state folder.
fn published(world: &World) -> (Vec<u8>, String, std::path::PathBuf) {
    world.upkeep_ok(&["product", "create", "demo"]);
    let archive = demo_archive("1.0.0", 2 * 1024 * 1024);
    let sha = hex::encode(Sha256::digest(&archive));
    world.publish("demo", "1.0.0", &archive);
    world.upkeep_ok(&["release", "approve", "demo", "1.0.0"]);
    world.upkeep_ok(&["rollout", "create", "demo", "1.0.0", "--all"]);
    let agent = world.enroll_agent("ws", &world.server.url);
    (archive, sha, agent)
}

fn agent_update_downloads_without_copies(world: &World) {
    let (archive, _, agent) = published(world);
    let (sendfile_before, copied_before) = file_bytes_sent(world);
    // The agent checks in and downloads over one kept-alive connection.
    world.agent_ok(&agent, &["update"]);
    assert_eq!(world.agent_ok(&agent, &["launch", "demo"]).trim(), "demo 1.0.0");
    let (sendfile, copied) = file_bytes_sent(world);
    assert!(
        sendfile - sendfile_before >= archive.len() as u64,
        "sendfile sent {} of the {} byte artifact",
        sendfile - sendfile_before,
        archive.len()
    );
    assert_eq!(copied, copied_before, "no file bytes were copied through memory");
}
on_each_backend!(agent_update_downloads_without_copies);

/// `/metrics` counts check-ins answered and refused, the offers made, how long answers took, and
/// what the check-in cache holds.
fn metrics_count_check_ins(world: &World) {
    let (_, _, agent) = published(world);
    world.agent_ok(&agent, &["update"]);
    let token = device_token(&agent);
    let host = world.server.addr;
    let mut conn = Connection::open(host);
    let refused = r#"{"hostname":"","os":"linux","arch":"x86_64","agent_version":"0.1.0","installed":[]}"#;
    for (body, status) in [(CHECKIN, 200), (refused, 400)] {
        conn.send(&checkin_request(host, &token, body));
        assert_eq!(conn.answer().status, status, "{body}");
    }
    let text = wait_for("the check-in cache gauges", 10, || {
        let text = metrics(world);
        (series(&text, "upkeep_cached_workstations") >= 1.0).then_some(text)
    });
    let answered = series(&text, "upkeep_checkins_total{outcome=\"answered\"}");
    let refused = series(&text, "upkeep_checkins_total{outcome=\"refused\"}");
    assert!(answered >= 2.0, "the agent's check-in and the raw one: {text}");
    assert_eq!(refused, 1.0, "the check-in with an empty hostname: {text}");
    assert!(
        series(&text, "upkeep_update_offers_total") >= 1.0,
        "demo 1.0.0 was offered: {text}"
    );
    let timed = series(&text, "upkeep_checkin_duration_seconds_count");
    assert_eq!(timed, answered + refused, "every check-in is timed: {text}");
    let within_a_second = series(&text, "upkeep_checkin_duration_seconds_bucket{le=\"1\"}");
    assert_eq!(within_a_second, timed, "bucketed, each under a second here: {text}");
}
on_each_backend!(metrics_count_check_ins);

fn one_connection_carries_check_ins_ranges_and_pipelined_downloads(world: &World) {
    let (archive, sha, agent) = published(world);
    let token = device_token(&agent);
    let host = world.server.addr;
    let artifact = format!("/api/v1/device/artifacts/{sha}");
    let mut conn = Connection::open(host);

    // A check-in with a JSON body, read by the server's own path.
    conn.send(&checkin_request(host, &token, CHECKIN));
    let checkin = conn.answer();
    assert_eq!(checkin.status, 200, "{}", String::from_utf8_lossy(&checkin.body));
    let instructions: serde_json::Value = serde_json::from_slice(&checkin.body).expect("check-in JSON");
    assert!(
        instructions.to_string().contains(&sha),
        "the check-in offers the artifact: {instructions}"
    );

    // A range of the artifact on the same connection.
    conn.send(
        format!(
            "GET {artifact} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nRange: bytes=100-1099\r\n\r\n"
        )
        .as_bytes(),
    );
    let part = conn.answer();
    assert_eq!(part.status, 206, "{}", part.head);
    assert_eq!(
        part.header("content-range").as_deref(),
        Some(&*format!("bytes 100-1099/{}", archive.len()))
    );
    assert_eq!(part.body, archive[100..1100]);

    // Two requests in one write: answered in order, each whole.
    let (sendfile_before, _) = file_bytes_sent(world);
    conn.send(
        format!(
            "GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n\
             GET {artifact} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    );
    let health = conn.answer();
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok\n"[..]));
    let whole = conn.answer();
    assert_eq!(whole.status, 200, "{}", whole.head);
    assert_eq!(hex::encode(Sha256::digest(&whole.body)), sha);
    let (sendfile, _) = file_bytes_sent(world);
    assert!(
        sendfile - sendfile_before >= archive.len() as u64,
        "the whole artifact went out with sendfile"
    );

    // A refusal on this path is the API's error, and the connection stays usable.
    conn.send(format!("GET {artifact} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer nope\r\n\r\n").as_bytes());
    let refused = conn.answer();
    assert_eq!(refused.status, 401, "{}", refused.head);
    assert!(
        String::from_utf8_lossy(&refused.body).contains("\"code\""),
        "an error body with a code"
    );

    // `Connection: close` is honoured once the answer is out.
    conn.send(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    let last = conn.answer();
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection").as_deref(), Some("close"));
    assert!(conn.closed(), "the server closes after `Connection: close`");
}
on_each_backend!(one_connection_carries_check_ins_ranges_and_pipelined_downloads);

fn requests_this_path_does_not_read_go_to_hyper(world: &World) {
    let (archive, sha, agent) = published(world);
    let token = device_token(&agent);
    let host = world.server.addr;
    let artifact = format!("/api/v1/device/artifacts/{sha}");

    // HEAD: the length, no body; the connection goes on.
    let mut conn = Connection::open(host);
    conn.send(format!("HEAD {artifact} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes());
    let head = conn.answer_to(true);
    assert_eq!(head.status, 200, "{}", head.head);
    assert_eq!(head.header("content-length"), Some(archive.len().to_string()));
    conn.send(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    assert_eq!(
        conn.answer().body,
        b"ok\n",
        "the next request is answered, so HEAD sent no body"
    );

    // A chunked check-in, then a download on the same connection: hyper reads both, and the
    // artifact is copied through memory but arrives whole.
    let (_, copied_before) = file_bytes_sent(world);
    let mut conn = Connection::open(host);
    let body = CHECKIN;
    conn.send(
        format!(
            "POST /api/v1/device/checkin HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let checkin = conn.answer();
    assert_eq!(checkin.status, 200, "{}", String::from_utf8_lossy(&checkin.body));
    conn.send(format!("GET {artifact} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes());
    let whole = conn.answer();
    assert_eq!(whole.status, 200);
    assert_eq!(hex::encode(Sha256::digest(&whole.body)), sha);
    let (_, copied) = file_bytes_sent(world);
    assert!(
        copied - copied_before >= archive.len() as u64,
        "hyper's answer is counted as copied"
    );

    // HTTP/1.0 is answered.
    let mut conn = Connection::open(host);
    conn.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let old = conn.answer();
    assert_eq!((old.status, old.body.as_slice()), (200, &b"ok\n"[..]));

    // Both framings: chunked wins, as HTTP/1.1 says, and the connection is closed after the answer
    // so nothing smuggled behind the body is read as a request.
    let mut conn = Connection::open(host);
    conn.send(
        format!(
            "POST /api/v1/device/checkin HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )
        .as_bytes(),
    );
    let answered = conn.answer();
    assert_eq!(
        answered.status, 401,
        "the check-in without a token is refused: {}",
        answered.head
    );
    assert_eq!(answered.header("connection").as_deref(), Some("close"));
    assert!(conn.closed(), "the request behind it is not answered");

    // A malformed head and conflicting lengths are refused, not guessed at.
    for request in [
        format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nNo colon here\r\n\r\n"),
        format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
    ] {
        let mut conn = Connection::open(host);
        conn.send(request.as_bytes());
        let refused = conn.answer();
        assert_eq!(refused.status, 400, "{request:?} got {}", refused.head);
    }
}
on_each_backend!(requests_this_path_does_not_read_go_to_hyper);

/// A client that stops sending partway through a request is cut off after the read timeout on
/// either path (and while the server waits to tell HTTP/1 from HTTP/2), and an upload that stops
/// midway is refused; a kept-alive connection that is merely idle is not cut off, and a request
/// that arrives in pieces within the timeout is answered.
#[test]
fn stalled_clients_are_cut_off() {
    let world = World::start(upkeep_test_support::Backend::Sqlite, &["--request-read-timeout", "1s"])
        .expect("SQLite is always available");
    let host = world.server.addr;
    let stalled = [
        // This path's reads: a head without its end, and a body shorter than its length.
        format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nAccept:"),
        format!("POST /api/v1/device/checkin HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\n{{"),
        // hyper's: a HEAD request's head without its end, and the start of an HTTP/2 preface.
        format!("HEAD /healthz HTTP/1.1\r\nHost: {host}\r\n"),
        "PRI * HTTP/2.0\r\n".to_owned(),
    ];
    for request in &stalled {
        let mut conn = Connection::open(host);
        conn.send(request.as_bytes());
        let sent = std::time::Instant::now();
        let closed = conn.0.closed();
        assert!(matches!(closed, Ok(true)), "{request:?} is cut off, not {closed:?}");
        let after = sent.elapsed();
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(8),
            "{request:?} was cut off after {after:?}, not after about the 1 s read timeout"
        );
    }

    // Idle longer than the read timeout between requests, and a request in two pieces.
    let mut conn = Connection::open(host);
    conn.send(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    assert_eq!(conn.answer().status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    conn.send(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    conn.send(b"\r\n");
    let answer = conn.answer();
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"ok\n"[..]));

    // An upload (hyper's: its body is large) that stops sending midway is answered 408 after
    // the timeout of silence, and leaves no release and no staged file.
    world.upkeep_ok(&["product", "create", "demo"]);
    let token = crate::api::Api::login(&world).token;
    let meta = r#"{"version":"1.0.0","platform":"linux-x86_64"}"#;
    let head = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n\
         {meta}\r\n--b0undary\r\nContent-Disposition: form-data; name=\"artifact\"; filename=\"demo.tar.gz\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let mut conn = Connection::open(host);
    conn.send(
        format!(
            "POST /api/v1/products/demo/releases HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: 4000000\r\n\r\n{head}"
        )
        .as_bytes(),
    );
    conn.send(&vec![0x55; 300 * 1024]);
    let sent = std::time::Instant::now();
    let refused = conn.answer();
    let after = sent.elapsed();
    assert_eq!(refused.status, 408, "{}", refused.head);
    assert!(after >= Duration::from_millis(900), "answered after {after:?}");
    let body: serde_json::Value = serde_json::from_slice(&refused.body).expect("JSON error");
    assert_eq!(body["code"], "invalid_upload", "{body}");
    let releases = world.upkeep_json(&["release", "list", "demo", "--json"]);
    assert_eq!(releases.as_array().map(Vec::len), Some(0), "{releases}");
    let staged = crate::harness::files_below(&world.server.data_dir.join("tmp"));
    assert!(staged.is_empty(), "staged uploads left behind: {staged:?}");
}

#[test]
fn a_zero_read_timeout_is_refused() {
    let data = tempfile::tempdir().expect("temp dir");
    for zero in ["0s", "0ms"] {
        let out = std::process::Command::new(crate::harness::SERVER)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--request-read-timeout",
                zero,
                "--data",
            ])
            .arg(data.path())
            .output()
            .expect("run upkeep-server");
        assert!(!out.status.success(), "{zero} is refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--request-read-timeout"), "{zero}: {stderr}");
    }
}
