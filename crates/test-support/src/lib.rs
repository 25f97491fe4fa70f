//! Test helpers shared by upkeep's integration tests: start the real `upkeep-server` binary on
//! an ephemeral port with a fresh data folder and database (SQLite, or a throwaway PostgreSQL
//! database when `UPKEEP_TEST_DATABASE_URL` is set), build fixture archives, and put a byte-counting
//! TCP proxy in front of the server to cut and resume downloads, and HTTP servers that play
//! artifact mirrors (a faithful copy of a folder, and a hostile one).
//!
//! Nothing here is a mock: every helper starts or talks to a real process or socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

/// The environment variable naming a PostgreSQL server for the PostgreSQL variants of tests.
pub const DATABASE_URL_ENV: &str = "UPKEEP_TEST_DATABASE_URL";

/// The administrator password every test server starts with.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test. PostgreSQL databases get a random name and are dropped afterwards,
/// so tests run in parallel without seeing each other's rows.
pub struct TestDatabase {
    /// `None` means the server's default SQLite file in its data folder.
    pub url: Option<String>,
    admin_url: Option<String>,
    name: Option<String>,
}

impl TestDatabase {
    /// `None` when the backend is PostgreSQL and no server is configured.
    pub fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(TestDatabase {
                url: None,
                admin_url: None,
                name: None,
            }),
            Backend::Postgres => {
                let admin_url = std::env::var(DATABASE_URL_ENV).ok().filter(|u| !u.is_empty())?;
                let name = format!("upkeep_test_{:016x}", rand::thread_rng().r#gen::<u64>());
                run_sql(&admin_url, &format!("CREATE DATABASE {name}"));
                let url = replace_database(&admin_url, &name);
                Some(TestDatabase {
                    url: Some(url),
                    admin_url: Some(admin_url),
                    name: Some(name),
                })
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let (Some(admin), Some(name)) = (&self.admin_url, &self.name) {
            run_sql(admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// Runs SQL statements on a database (tests use it to play a compromised server).
pub fn run_sql(url: &str, sql: &str) {
    let (url, statement) = (url.to_owned(), sql.to_owned());
    // Its own thread and runtime, so this works from sync tests, async tests and Drop alike.
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            use sqlx::Connection;
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&url).await.map_err(|e| e.to_string())?;
            // The statements are built here from a random hex name, never from outside input.
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            conn.close().await.map_err(|e| e.to_string())
        })
    })
    .join();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("PostgreSQL `{sql}` failed: {e}"),
        Err(_) => panic!("PostgreSQL helper thread panicked"),
    }
}

/// `postgres://user@host:port/db?x` with `db` replaced by `name`.
pub fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let replaced = match base[scheme_end..].find('/') {
        Some(slash) => format!("{}/{name}", &base[..scheme_end + slash]),
        None => format!("{base}/{name}"),
    };
    match query {
        Some(q) => format!("{replaced}?{q}"),
        None => replaced,
    }
}

/// A running `upkeep-server`, stopped when dropped.
pub struct Server {
    child: std::sync::Mutex<Child>,
    pub url: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// What the server printed on stdout before it was ready.
    pub banner: Vec<String>,
    pub database: Arc<TestDatabase>,
}

impl Server {
    /// Starts `binary serve` on 127.0.0.1:0 with `data_dir`, waits until `/healthz` answers.
    pub fn start(binary: &Path, data_dir: &Path, database: Arc<TestDatabase>, extra_args: &[&str]) -> Server {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data_dir)
            .args(extra_args)
            .env("UPKEEP_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("UPKEEP_LOG", "warn")
            .env_remove("UPKEEP_DATABASE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = &database.url {
            command.arg("--database").arg(url);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("upkeep-server listening on ") {
                        break url.trim().to_owned();
                    }
                    banner.push(line);
                }
                _ => {
                    let status = child.wait().ok();
                    panic!("upkeep-server exited before listening ({status:?}); it printed {banner:?}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let addr: SocketAddr = url.trim_start_matches("http://").parse().expect("listen address");
        let server = Server {
            child: std::sync::Mutex::new(child),
            url,
            addr,
            data_dir: data_dir.to_owned(),
            banner,
            database,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some((status, _)) = http_get(self.addr, "/healthz")
                && status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("upkeep-server at {} never became healthy", self.url);
    }

    /// Stops the server (SIGKILL) and waits for it.
    /// The database URL this server runs on.
    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("upkeep.db").display()))
    }

    pub fn stop(&self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.1 GET for health checks: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A minimal HTTP/1.1 GET that keeps the body as bytes: (status, body). Understands bodies sent
/// with `Content-Length`, chunked, or until the connection closes.
pub fn http_get_bytes(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut conn = HttpConnection::open(addr, Duration::from_secs(30)).ok()?;
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let answer = conn.answer(false).ok()?;
    Some((answer.status, answer.body))
}

/// One HTTP/1.1 client connection, read by hand so a test sees exactly how the server framed
/// each answer (kept-alive, pipelined, closed).
pub struct HttpConnection {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One answer read from an [`HttpConnection`].
pub struct HttpAnswer {
    pub status: u16,
    /// The status line and header lines, one per line.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

fn short(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("connection ended {what}"))
}

impl HttpConnection {
    pub fn open(addr: SocketAddr, read_timeout: Duration) -> std::io::Result<HttpConnection> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(read_timeout))?;
        Ok(HttpConnection {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more into the buffer; false at the end of the stream.
    fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(short(&format!("{} bytes short", n - self.buf.len())));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(end + 2)?;
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if !self.fill()? {
                return Err(short("inside a line"));
            }
        }
    }

    /// Reads one answer; `to_head` says it answers a `HEAD`, so no body follows whatever the
    /// head says. A body with neither length nor chunks runs to the end of the connection.
    pub fn answer(&mut self, to_head: bool) -> std::io::Result<HttpAnswer> {
        let mut head = String::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            head.push_str(&line);
            head.push('\n');
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
        let mut answer = HttpAnswer {
            status,
            head,
            body: Vec::new(),
        };
        if to_head {
            return Ok(answer);
        }
        if answer
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| std::io::Error::other(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    if !self.line()?.is_empty() {
                        return Err(std::io::Error::other("something after the last chunk"));
                    }
                    break;
                }
                let chunk = self.take(size)?;
                answer.body.extend_from_slice(&chunk);
                if !self.line()?.is_empty() {
                    return Err(std::io::Error::other("a chunk does not end where its size says"));
                }
            }
        } else if let Some(length) = answer.header("content-length") {
            let length = length
                .parse()
                .map_err(|_| std::io::Error::other(format!("bad length {length:?}")))?;
            answer.body = self.take(length)?;
        } else {
            while self.fill()? {}
            answer.body = std::mem::take(&mut self.buf);
        }
        Ok(answer)
    }

    /// Whether the server closed the connection (after everything read so far).
    pub fn closed(&mut self) -> std::io::Result<bool> {
        Ok(self.buf.is_empty() && !self.fill()?)
    }
}

/// Builds a `.tar.gz` in memory from (path, contents, mode) entries.
pub fn tar_gz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, data, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        // Set the raw name so that hostile names (`../x`) reach the archive unchanged.
        let bytes = path.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_cksum();
        builder.append(&header, *data).expect("append to tar");
    }
    builder.into_inner().expect("finish tar").finish().expect("finish gzip")
}

/// A product archive whose `bin/demo` prints `demo VERSION` and its arguments, plus `padding`
/// bytes of random (incompressible) data to make the download as large as a test needs.
pub fn demo_archive(version: &str, padding: usize) -> Vec<u8> {
    let script = format!("#!/bin/sh\necho \"demo {version} $*\"\n");
    let mut noise = vec![0u8; padding];
    rand::thread_rng().fill(&mut noise[..]);
    let mut entries: Vec<(&str, &[u8], u32)> = vec![
        ("bin/demo", script.as_bytes(), 0o755),
        ("README.txt", b"demo product\n", 0o644),
    ];
    if padding > 0 {
        entries.push(("data/blob.bin", &noise, 0o644));
    }
    tar_gz(&entries)
}

/// A TCP proxy that counts the bytes it forwards from the server and can cut connections after
/// a number of them, to interrupt a download the way a dropped network would.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    /// When non-zero, a connection is closed once it has carried this many bytes downstream.
    pub cut_after: Arc<AtomicU64>,
    /// Bytes forwarded from the server to clients since the last reset.
    pub bytes_down: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    pub fn start(upstream: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut_after = Arc::new(AtomicU64::new(0));
        let bytes_down = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut, down, halt) = (cut_after.clone(), bytes_down.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (cut, down) = (cut.clone(), down.clone());
                std::thread::spawn(move || relay(client, server, &cut, &down));
            }
        });
        CuttingProxy {
            addr,
            cut_after,
            bytes_down,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn relay(client: TcpStream, server: TcpStream, cut_after: &AtomicU64, bytes_down: &AtomicU64) {
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    let mut buffer = [0u8; 16 * 1024];
    let mut carried = 0u64;
    loop {
        let n = match server_read.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let limit = cut_after.load(Ordering::Relaxed);
        let n = if limit > 0 && carried + n as u64 > limit {
            (limit - carried) as usize
        } else {
            n
        };
        if client_write.write_all(&buffer[..n]).is_err() {
            break;
        }
        carried += n as u64;
        bytes_down.fetch_add(n as u64, Ordering::Relaxed);
        if limit > 0 && carried >= limit {
            break;
        }
    }
    let _ = client_write.shutdown(Shutdown::Both);
    let _ = server_read.shutdown(Shutdown::Both);
    let _ = upstream.join();
}

/// A real SMTP server (Python's `aiosmtpd`, Maildir handler) on a free port; stopped when dropped.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    /// Starts `python3 -m aiosmtpd`, keeping mail in a Maildir below `dir`; panics with a hint
    /// when it is not installed.
    pub fn start(dir: &Path) -> SmtpServer {
        // The Maildir handler creates its folder layout only for a folder that does not exist yet.
        let maildir = dir.join("maildir");
        let maildir = maildir.as_path();
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting python3 -m aiosmtpd ({e}); install it with `pip install aiosmtpd`"));
        let server = SmtpServer {
            child,
            port,
            maildir: maildir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not start on port {port} (is it installed? pip install aiosmtpd)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, as raw text.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.maildir.join("new"))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        // Maildir names start `SECONDS.M<MICROSECONDS>P…`: order by those numbers, as received.
        let key = |p: &PathBuf| -> (u64, u64) {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut parts = name.split('.');
            let seconds = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let micros = parts
                .next()
                .and_then(|s| s.strip_prefix('M'))
                .map(|s| s.chars().take_while(char::is_ascii_digit).collect::<String>())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (seconds, micros)
        };
        files.sort_by_key(key);
        files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP request received by [`WebhookListener`] or a mirror.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    /// The request target, e.g. `/default/targets/<sha256>.demo_1.0.0_linux-x86_64.tar.gz`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP listener that records every request and answers 200.
pub struct WebhookListener {
    pub url: String,
    pub received: Arc<std::sync::Mutex<Vec<ReceivedRequest>>>,
}

impl WebhookListener {
    pub fn start() -> WebhookListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook listener");
        let url = format!("http://{}/hooks/upkeep", listener.local_addr().expect("address"));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(request) = read_request(&stream)
                    && let Ok(mut all) = store.lock()
                {
                    all.push(request);
                }
                let mut stream = stream;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        WebhookListener { url, received }
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn read_request(stream: &TcpStream) -> Option<ReceivedRequest> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(ReceivedRequest {
        method,
        path,
        headers,
        body,
    })
}

/// What a [`HostileMirror`] answers to every GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostility {
    /// `length` bytes that are not the artifact (right size, wrong SHA-256), with a
    /// `Content-Length`.
    WrongBytes,
    /// Bytes without a `Content-Length` and without end (until the client hangs up, or
    /// [`HostileMirror::ENDLESS_CAP`] bytes, so a client that never stops reading cannot hang
    /// a test).
    Endless,
}

/// A real HTTP server playing a compromised mirror: whatever is asked, it answers 200 with bytes
/// that are not the artifact. It records every request and counts the body bytes it sent.
pub struct HostileMirror {
    pub url: String,
    /// How many bytes [`Hostility::WrongBytes`] answers with; set it to the artifact's size once
    /// that is known (the mirror has to be started before the server that lists it).
    pub length: Arc<AtomicU64>,
    /// Body bytes written to clients.
    pub bytes_sent: Arc<AtomicU64>,
    received: Arc<std::sync::Mutex<Vec<ReceivedRequest>>>,
}

impl HostileMirror {
    /// Where an endless answer stops by itself.
    pub const ENDLESS_CAP: u64 = 512 * 1024 * 1024;

    pub fn start(hostility: Hostility) -> HostileMirror {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind hostile mirror");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let length = Arc::new(AtomicU64::new(0));
        let bytes_sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (len, sent, store) = (length.clone(), bytes_sent.clone(), received.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (len, sent, store) = (len.clone(), sent.clone(), store.clone());
                std::thread::spawn(move || {
                    let Some(request) = read_request(&stream) else { return };
                    if let Ok(mut all) = store.lock() {
                        all.push(request);
                    }
                    let mut stream = stream;
                    let _ = answer_hostile(&mut stream, hostility, len.load(Ordering::Relaxed), &sent);
                    let _ = stream.shutdown(Shutdown::Both);
                });
            }
        });
        HostileMirror {
            url,
            length,
            bytes_sent,
            received,
        }
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn answer_hostile(stream: &mut TcpStream, hostility: Hostility, length: u64, sent: &AtomicU64) -> std::io::Result<()> {
    // Not the artifact: a repeated pattern (an archive is compressed, never like this).
    let block = [0x5au8; 64 * 1024];
    let total = match hostility {
        Hostility::WrongBytes => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
            )?;
            length
        }
        Hostility::Endless => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n"
            )?;
            HostileMirror::ENDLESS_CAP
        }
    };
    let mut left = total;
    while left > 0 {
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        stream.write_all(&block[..n])?;
        sent.fetch_add(n as u64, Ordering::Relaxed);
        left -= n as u64;
    }
    stream.flush()
}

/// A real HTTP server that serves the files below a folder as they are (GET only, 404 for
/// anything missing), like a plain web server or CDN in front of a copy of the TUF targets tree.
/// It records every request and counts the body bytes it sent.
pub struct StaticMirror {
    pub url: String,
    pub root: PathBuf,
    /// Body bytes written to clients.
    pub bytes_sent: Arc<AtomicU64>,
    received: Arc<std::sync::Mutex<Vec<ReceivedRequest>>>,
}

impl StaticMirror {
    /// Serves `root`, which may be filled after the start.
    pub fn start(root: &Path) -> StaticMirror {
        std::fs::create_dir_all(root).expect("mirror folder");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind static mirror");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let bytes_sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (dir, sent, store) = (root.to_owned(), bytes_sent.clone(), received.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dir, sent, store) = (dir.clone(), sent.clone(), store.clone());
                std::thread::spawn(move || {
                    let Some(request) = read_request(&stream) else { return };
                    let file = request
                        .path
                        .split('?')
                        .next()
                        .filter(|p| !p.split('/').any(|part| part == ".."))
                        .map(|p| dir.join(p.trim_start_matches('/')))
                        .filter(|f| request.method == "GET" && f.is_file());
                    if let Ok(mut all) = store.lock() {
                        all.push(request);
                    }
                    let mut stream = stream;
                    let _ = match file.and_then(|f| std::fs::read(f).ok()) {
                        Some(body) => write!(
                            stream,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .and_then(|()| stream.write_all(&body))
                        .map(|()| {
                            sent.fetch_add(body.len() as u64, Ordering::Relaxed);
                        }),
                        None => stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
                    };
                    let _ = stream.shutdown(Shutdown::Both);
                });
            }
        });
        StaticMirror {
            url,
            root: root.to_owned(),
            bytes_sent,
            received,
        }
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// An HTTP proxy in front of the server that keeps the first answer to a given path and, once
/// told to, answers every later request to that path with it: a network attacker replaying an
/// old answer. Other requests are forwarded unchanged, one connection each.
pub struct ReplayProxy {
    pub url: String,
    /// While set, requests to the recorded path get the recorded answer.
    pub replay: Arc<AtomicBool>,
    recorded: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl ReplayProxy {
    /// Records the first answer to `path` that contains `marker`.
    pub fn start(upstream: SocketAddr, path: &'static str, marker: &'static str) -> ReplayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind replay proxy");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let replay = Arc::new(AtomicBool::new(false));
        let recorded: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
        let (replaying, kept) = (replay.clone(), recorded.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (replaying, kept) = (replaying.clone(), kept.clone());
                std::thread::spawn(move || {
                    let Some(request) = read_request(&stream) else { return };
                    let mut stream = stream;
                    if request.path == path && replaying.load(Ordering::SeqCst) {
                        let answer = kept.lock().ok().and_then(|k| k.clone());
                        if let Some(answer) = answer {
                            let _ = stream.write_all(&answer);
                            return;
                        }
                    }
                    let Some(answer) = forward(upstream, &request) else {
                        return;
                    };
                    if request.path == path
                        && String::from_utf8_lossy(&answer).contains(marker)
                        && let Ok(mut k) = kept.lock()
                        && k.is_none()
                    {
                        *k = Some(answer.clone());
                    }
                    let _ = stream.write_all(&answer);
                });
            }
        });
        ReplayProxy { url, replay, recorded }
    }

    pub fn has_recorded(&self) -> bool {
        self.recorded.lock().map(|k| k.is_some()).unwrap_or(false)
    }
}

/// Sends one request upstream on its own connection and reads the whole answer.
fn forward(upstream: SocketAddr, request: &ReceivedRequest) -> Option<Vec<u8>> {
    let mut server = TcpStream::connect(upstream).ok()?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {upstream}\r\nconnection: close\r\n",
        request.method, request.path
    );
    for (name, value) in &request.headers {
        if !["host", "connection", "content-length"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", request.body.len()));
    server.write_all(head.as_bytes()).ok()?;
    server.write_all(&request.body).ok()?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).ok()?;
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h:5432", "x"), "postgres://h:5432/x");
    }
}
