//! The listener loop. Connections are answered with hyper (HTTP/1.1 and HTTP/2), except that on
//! Linux plain HTTP/1.1 requests are read here, so that a file download can be answered with
//! `sendfile(2)`: hyper writes bodies only from memory, which costs a read of every chunk into a
//! buffer and a copy of it into the socket. The router's answer to a download carries the open
//! file ([`crate::blobs::FileBody`]) and its bytes go from the page cache to the socket, as
//! static-file servers send them.
//!
//! Invariants:
//! - Every request, whichever path reads it, is answered by the same router (route guard, limits,
//!   handlers); this module only frames requests and answers on the wire.
//! - This path reads only what it can read unambiguously: HTTP/1.1 `GET`/`POST`/`PUT`/`PATCH`/
//!   `DELETE` with no body or a small `Content-Length` one. The first request that is anything else
//!   (chunked or large uploads, `HEAD`, upgrades, `Expect`, HTTP/1.0, HTTP/2, malformed heads) hands
//!   the connection, with every byte already read, to hyper for the rest of its life.
//! - No connection waits on a client without a clock: the read timeout bounds every request
//!   head on both paths (and on this one a small body too), and idle connections are closed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::{Buf, Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Serves `app` on `listener` until `shutdown` resolves, then lets the requests in flight finish.
pub async fn run(
    listener: TcpListener,
    app: Router,
    read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Connections watch `signal` to stop; the loop waits for every `done` receiver to go.
    let (signal, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (done, done_rx) = watch::channel(());
    let service = TowerToHyperService::new(app);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = signal.closed() => break,
        };
        let service = service.clone();
        let signal = signal.clone();
        let done_rx = done_rx.clone();
        tokio::spawn(async move {
            connection(stream, service, signal, read_timeout).await;
            drop(done_rx);
        });
    }
    drop(done_rx);
    drop(listener);
    done.closed().await;
    Ok(())
}

type Service = TowerToHyperService<Router>;

/// The first bytes of every HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn connection(mut stream: TcpStream, service: Service, signal: watch::Sender<()>, read_timeout: Duration) {
    let mut read_ahead = bytes::BytesMut::new();
    #[cfg(target_os = "linux")]
    match http1::serve(&mut stream, &mut read_ahead, &service, &signal, read_timeout).await {
        http1::Next::Hyper => {}
        http1::Next::Close => return,
    }
    // hyper-util tells HTTP/1 from HTTP/2 by the first bytes with no clock of its own: a client
    // that stopped partway through the HTTP/2 preface would hold the connection for good.
    match tokio::time::timeout(read_timeout, until_version_known(&mut stream, &mut read_ahead)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => return,
    }
    let read_ahead = read_ahead.freeze();

    let io = TokioIo::new(Rewind { read_ahead, stream });
    let mut builder = Builder::new(TokioExecutor::new());
    // With a timer, hyper bounds each HTTP/1 request head (and the wait for the next one).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let stop = signal.closed();
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = &mut stop, if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Reads until `buf` is no longer a beginning of the HTTP/2 preface, or holds all of it.
async fn until_version_known(stream: &mut TcpStream, buf: &mut bytes::BytesMut) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt as _;
    while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// A socket that first gives back the bytes already read from it.
struct Rewind {
    read_ahead: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.remaining());
            buf.put_slice(&self.read_ahead[..n]);
            self.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(target_os = "linux")]
mod http1 {
    use std::cell::RefCell;
    use std::io::Write as _;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
    use axum::response::Response;
    use bytes::{Buf, BytesMut};
    use futures::FutureExt as _;
    use http_body_util::BodyExt;
    use hyper::service::Service as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
    use tokio::net::TcpStream;
    use tokio::sync::watch;

    use super::Service;
    use crate::blobs::FileBody;

    /// A request head longer than this goes to hyper, which has its own limit.
    const MAX_HEAD: usize = 16 * 1024;
    const MAX_HEADERS: usize = 64;
    /// Request bodies up to this size are read here (check-ins, reports, admin JSON); a larger
    /// one (an upload) goes to hyper, which streams it to the handler.
    const MAX_INLINE_BODY: usize = 256 * 1024;
    /// How long a kept-alive connection may sit without starting a request.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
    /// Bytes per `sendfile` call. After each call the task yields, so the other connections on
    /// this worker (and the wake-ups that would move them to another) get their turn: one long
    /// call per free socket buffer held a worker for the whole file, and two downloads on one
    /// worker went at the pace of one. Measured on loopback with two concurrent downloads, 128–256 KiB
    /// steps with a yield sent 1.6× as fast as 1 GiB steps (and 64 KiB steps were slower again).
    const SENDFILE_STEP: usize = 256 * 1024;
    /// A streamed body is written once this much is pending, or when its next piece is not ready.
    const WRITE_BATCH: usize = 64 * 1024;
    /// The request lines this path reads; anything else is known to be hyper's from its first bytes.
    const PLAIN_STARTS: [&[u8]; 5] = [b"GET /", b"POST /", b"PUT /", b"PATCH /", b"DELETE /"];

    pub(super) enum Next {
        /// Give the connection to hyper; the bytes read so far are its first.
        Hyper,
        Close,
    }

    /// Answers requests until the connection ends or sends one that hyper must read.
    pub(super) async fn serve(
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        service: &Service,
        signal: &watch::Sender<()>,
        read_timeout: Duration,
    ) -> Next {
        loop {
            let (request, mut close) = match read_request(stream, buf, signal, read_timeout).await {
                Ok(read) => read,
                Err(Stop::Other) => return Next::Hyper,
                Err(Stop::Closed) => return Next::Close,
            };
            let Ok(response) = service.call(request).await;
            close |= wants_close(response.headers());
            if let Err(e) = write_response(stream, response, close).await {
                tracing::debug!(error = %e, "connection ended while answering");
                return Next::Close;
            }
            if close || signal.is_closed() {
                return Next::Close;
            }
        }
    }

    /// A request read, and whether the client asked to close after its answer.
    type Read = Result<(Request<Body>, bool), Stop>;

    enum Stop {
        /// Not a request this path reads; `buf` holds what arrived of it.
        Other,
        Closed,
    }

    /// Reads the next request; from its first byte to its last the client has `read_timeout`.
    async fn read_request(
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        signal: &watch::Sender<()>,
        read_timeout: Duration,
    ) -> Read {
        if buf.is_empty() {
            // Idle between requests: a shutdown or a quiet client ends the connection here.
            let first = tokio::select! {
                read = tokio::time::timeout(IDLE_TIMEOUT, read_more(stream, buf)) => read,
                _ = signal.closed() => return Err(Stop::Closed),
            };
            if !matches!(first, Ok(Ok(n)) if n > 0) {
                return Err(Stop::Closed);
            }
        }
        // Nearly always the whole request came with its first bytes: no timer is needed then.
        match take_request(buf) {
            Some(read) => read,
            None => tokio::time::timeout(read_timeout, read_rest(stream, buf))
                .await
                .unwrap_or(Err(Stop::Closed)),
        }
    }

    async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
        buf.reserve(4096);
        stream.read_buf(buf).await
    }

    /// Reads until `buf` holds a whole request (or shows it is not one for this path).
    async fn read_rest(stream: &mut TcpStream, buf: &mut BytesMut) -> Read {
        loop {
            if !matches!(read_more(stream, buf).await, Ok(n) if n > 0) {
                return Err(Stop::Closed);
            }
            if let Some(read) = take_request(buf) {
                return read;
            }
        }
    }

    /// Takes a whole request off the front of `buf`; `None` while more bytes are needed.
    fn take_request(buf: &mut BytesMut) -> Option<Read> {
        let head = match parse(buf) {
            Err(Unparsed::Incomplete) if buf.len() >= MAX_HEAD => return Some(Err(Stop::Other)),
            Err(Unparsed::Incomplete) => return None,
            Err(Unparsed::Other) => return Some(Err(Stop::Other)),
            Ok(head) => head,
        };
        if buf.len() < head.length + head.body {
            return None;
        }
        buf.advance(head.length);
        let body = buf.split_to(head.body).freeze();
        let body = if body.is_empty() {
            Body::empty()
        } else {
            Body::from(body)
        };
        // The head was checked when parsed; a request that still fails to build is hyper's to refuse.
        Some(
            head.request
                .body(body)
                .map(|request| (request, head.close))
                .map_err(|_| Stop::Other),
        )
    }

    struct Head {
        request: axum::http::request::Builder,
        /// Bytes of the head, up to and including the blank line.
        length: usize,
        /// Bytes of the body that follows.
        body: usize,
        close: bool,
    }

    enum Unparsed {
        Incomplete,
        Other,
    }

    /// Reads a request head this path answers: HTTP/1.1, origin-form target, no body or a
    /// `Content-Length` one of at most [`MAX_INLINE_BODY`], no upgrade, no `Expect`. Anything
    /// unusual (chunked or ambiguous framing, `HEAD`, HTTP/1.0, HTTP/2, a malformed head) is
    /// `Other`, so hyper answers or refuses it exactly as it would on its own.
    fn parse(buf: &[u8]) -> Result<Head, Unparsed> {
        let could_be_plain = PLAIN_STARTS.iter().any(|start| {
            let n = buf.len().min(start.len());
            buf[..n] == start[..n]
        });
        if !could_be_plain {
            return Err(Unparsed::Other);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let length = match parsed.parse(buf) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Err(Unparsed::Incomplete),
            Err(_) => return Err(Unparsed::Other),
        };
        let (Some(method), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
            return Err(Unparsed::Other);
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Err(Unparsed::Other);
        };
        let mut request = Request::builder().method(method).uri(target).version(Version::HTTP_11);
        let mut body = None;
        let mut close = false;
        for h in parsed.headers.iter() {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) else {
                return Err(Unparsed::Other);
            };
            if name == header::CONTENT_LENGTH {
                let digits = value.as_bytes();
                let Some(n) = (body.is_none() && !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(digits).ok()?.parse::<usize>().ok())
                    .flatten()
                    .filter(|&n| n <= MAX_INLINE_BODY)
                else {
                    return Err(Unparsed::Other);
                };
                body = Some(n);
            } else if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
                return Err(Unparsed::Other);
            } else if name == header::CONNECTION {
                if tokens(&value).any(|t| t.eq_ignore_ascii_case(b"upgrade")) {
                    return Err(Unparsed::Other);
                }
                close |= tokens(&value).any(|t| t.eq_ignore_ascii_case(b"close"));
            }
            if let Some(headers) = request.headers_mut() {
                headers.append(name, value);
            }
        }
        Ok(Head {
            request,
            length,
            body: body.unwrap_or(0),
            close,
        })
    }

    fn tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
        value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii)
    }

    fn wants_close(headers: &axum::http::HeaderMap) -> bool {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(b"close")))
    }

    /// Writes an HTTP/1.1 response: a [`FileBody`] with `sendfile`, any other body from memory.
    async fn write_response(stream: &mut TcpStream, response: Response, close: bool) -> std::io::Result<()> {
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let bodiless =
            status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let file = parts.extensions.get::<FileBody>().filter(|_| !bodiless).cloned();
        // As hyper does: a length the handler states wins, then the body's own exact size.
        let stated = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let length = match &file {
            Some(file) => Some(file.range.end - file.range.start),
            None => stated.or_else(|| axum::body::HttpBody::size_hint(&body).exact()),
        };
        let chunked = !bodiless && length.is_none();

        let mut head = Vec::with_capacity(512);
        write!(
            head,
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )?;
        for (name, value) in &parts.headers {
            // Framing is this writer's to state.
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if !parts.headers.contains_key(header::DATE) {
            head.extend_from_slice(b"date: ");
            http_date(&mut head)?;
            head.extend_from_slice(b"\r\n");
        }
        if chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if let (false, Some(length)) = (bodiless, length) {
            write!(head, "content-length: {length}\r\n")?;
        }
        if close {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");

        if let Some(file) = file.filter(|f| !f.range.is_empty()) {
            send_head(stream, &head).await?;
            let sent = send_file(stream, &file).await;
            crate::telemetry::file_bytes_sent(crate::telemetry::Sent::Sendfile, sent.bytes);
            return sent.result;
        }
        if bodiless || length == Some(0) {
            return stream.write_all(&head).await;
        }
        let mut out = head;
        let mut sent: u64 = 0;
        let mut body = std::pin::pin!(body);
        loop {
            // Write what is pending before waiting on a body that is not ready (a slow store, a
            // long poll), so the client is never kept waiting on bytes the server has.
            let next = match body.frame().now_or_never() {
                Some(next) => next,
                None => {
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                        out.clear();
                    }
                    body.frame().await
                }
            };
            let Some(frame) = next else { break };
            let frame = frame.map_err(std::io::Error::other)?;
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if length.is_some_and(|length| sent > length) {
                return Err(std::io::Error::other("response body is longer than its stated length"));
            }
            if chunked {
                write!(out, "{:x}\r\n", data.len())?;
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&data);
            }
            if out.len() >= WRITE_BATCH {
                stream.write_all(&out).await?;
                out.clear();
            }
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        } else if length != Some(sent) {
            // The head promised another length: the client must see the connection end.
            stream.write_all(&out).await?;
            return Err(std::io::Error::other("response body is shorter than its stated length"));
        }
        stream.write_all(&out).await
    }

    /// Appends the current time as an HTTP date, formatted once a second per thread.
    fn http_date(out: &mut Vec<u8>) -> std::io::Result<()> {
        thread_local! {
            static CACHED: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
        }
        let now = jiff::Timestamp::now();
        CACHED.with_borrow_mut(|(second, text)| {
            if *second != now.as_second() {
                *text = jiff::fmt::rfc2822::DateTimePrinter::new()
                    .timestamp_to_rfc9110_string(&now)
                    .map_err(std::io::Error::other)?;
                *second = now.as_second();
            }
            out.extend_from_slice(text.as_bytes());
            Ok(())
        })
    }

    /// Sends the response head with `MSG_MORE`, so it leaves in the same packet as the file's
    /// first bytes.
    async fn send_head(stream: &TcpStream, mut head: &[u8]) -> std::io::Result<()> {
        while !head.is_empty() {
            let sent = stream.try_io(Interest::WRITABLE, || {
                rustix::net::send(
                    stream,
                    head,
                    rustix::net::SendFlags::MORE | rustix::net::SendFlags::NOSIGNAL,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(n) => head = &head[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    struct FileSent {
        bytes: u64,
        result: std::io::Result<()>,
    }

    /// Sends `body.range` of the file from the page cache to the socket, without user-space copies.
    async fn send_file(stream: &TcpStream, body: &FileBody) -> FileSent {
        let mut offset = body.range.start;
        let result = async {
            while offset < body.range.end {
                let count = usize::try_from(body.range.end - offset).map_or(SENDFILE_STEP, |n| n.min(SENDFILE_STEP));
                let sent = stream.try_io(Interest::WRITABLE, || {
                    rustix::fs::sendfile(stream, &*body.file, Some(&mut offset), count).map_err(std::io::Error::from)
                });
                match sent {
                    // The file is shorter than when it was opened: end the connection mid-body.
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => tokio::task::yield_now().await,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        .await;
        FileSent {
            bytes: offset - body.range.start,
            result,
        }
    }
}
