//! Streaming a release artifact to the server: the file is read once, in chunks, and hashed as
//! it goes out, so a multi-gigabyte archive never sits in memory and is not read twice.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use anyhow::bail;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::io::ReaderStream;

/// Chunk size for reading the artifact: large enough to keep syscalls and hashing calls few.
const CHUNK: usize = 256 * 1024;

/// A local file checked to be worth uploading.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    /// The file name the server records (and derives the archive format from).
    pub name: String,
    pub size: u64,
}

/// Checks, before anything is sent, that `path` is a non-empty regular file with a UTF-8 name.
pub fn check(path: &Path) -> anyhow::Result<Artifact> {
    let shown = path.display();
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("{shown} does not exist"),
        Err(e) => bail!("cannot read {shown}: {e}"),
    };
    if metadata.is_dir() {
        bail!("{shown} is a folder; upload the release's .tar.gz or .zip archive");
    }
    if !metadata.is_file() {
        bail!("{shown} is not a regular file");
    }
    if metadata.len() == 0 {
        bail!("{shown} is empty");
    }
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        bail!("the file name of {shown} is not valid UTF-8; rename it");
    };
    Ok(Artifact {
        path: path.to_owned(),
        name: name.to_owned(),
        size: metadata.len(),
    })
}

/// A failure reading the local file during the upload; the client reports it as such rather
/// than as a network problem.
#[derive(Debug)]
pub struct ReadError(String);

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadError {}

/// What went out so far: the running digest, the byte count, and the progress line.
#[derive(Debug)]
pub struct Tally {
    hasher: Sha256,
    sent: u64,
    progress: Option<Progress>,
}

/// The upload's outcome on this side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub sha256: String,
    pub bytes: u64,
}

/// A one-line percentage on stderr, redrawn in place when the whole percent changes.
#[derive(Debug)]
struct Progress {
    label: String,
    total: u64,
    shown: Option<u64>,
    open_line: bool,
}

impl Progress {
    fn update(&mut self, sent: u64) {
        let percent = sent.saturating_mul(100).checked_div(self.total).unwrap_or(100);
        if self.shown == Some(percent) {
            return;
        }
        self.shown = Some(percent);
        // Progress is decoration: a failing stderr must not fail the upload.
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r{}: {percent:>3}%", self.label);
        self.open_line = true;
        if sent >= self.total {
            let _ = writeln!(err, ", waiting for the server to check it");
            self.open_line = false;
        }
        let _ = err.flush();
    }

    /// Ends a line left open by an upload that stopped early, so errors start on their own line.
    fn close(&mut self) {
        if std::mem::take(&mut self.open_line) {
            let _ = writeln!(io::stderr());
        }
    }
}

/// Opens `artifact` as a request body that hashes what it sends, with a progress line on stderr
/// when `progress` is set. Read the result with [`finish`] once the request is over.
pub async fn open(artifact: &Artifact, progress: bool) -> anyhow::Result<(reqwest::Body, Arc<Mutex<Tally>>)> {
    let file = tokio::fs::File::open(&artifact.path)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", artifact.path.display()))?;
    let tally = Arc::new(Mutex::new(Tally {
        hasher: Sha256::new(),
        sent: 0,
        progress: progress.then(|| Progress {
            label: format!("Uploading {}", artifact.name),
            total: artifact.size,
            shown: None,
            open_line: false,
        }),
    }));
    let reader = Hashing {
        // The size was announced in the request; never send more than that, even if the file grew.
        inner: file.take(artifact.size),
        expected: artifact.size,
        path: artifact.path.clone(),
        tally: Arc::clone(&tally),
    };
    let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(reader, CHUNK));
    Ok((body, tally))
}

/// The digest and byte count of what was sent; also closes the progress line.
pub fn finish(tally: &Mutex<Tally>) -> Sent {
    let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(progress) = &mut tally.progress {
        progress.close();
    }
    Sent {
        sha256: hex::encode(tally.hasher.clone().finalize()),
        bytes: tally.sent,
    }
}

/// An `AsyncRead` that feeds every byte it passes on into the tally.
struct Hashing<R> {
    inner: R,
    expected: u64,
    path: PathBuf,
    tally: Arc<Mutex<Tally>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        if let Err(e) = ready!(Pin::new(&mut this.inner).poll_read(cx, buf)) {
            return Poll::Ready(Err(io::Error::other(ReadError(format!(
                "reading {}: {e}",
                this.path.display()
            )))));
        }
        let chunk = &buf.filled()[before..];
        let mut tally = this.tally.lock().unwrap_or_else(PoisonError::into_inner);
        if chunk.is_empty() && asked && tally.sent < this.expected {
            // End of file before the announced size: the request body would be cut short.
            return Poll::Ready(Err(io::Error::other(ReadError(format!(
                "{} got shorter while it was being uploaded",
                this.path.display()
            )))));
        }
        tally.hasher.update(chunk);
        tally.sent += chunk.len() as u64;
        let sent = tally.sent;
        if let Some(progress) = &mut tally.progress {
            progress.update(sent);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_what_cannot_be_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let missing = check(&dir.path().join("nope.tar.gz")).unwrap_err();
        assert!(missing.to_string().ends_with("does not exist"), "{missing}");
        let folder = check(dir.path()).unwrap_err();
        assert!(folder.to_string().contains("is a folder"), "{folder}");
        let empty = dir.path().join("empty.tar.gz");
        std::fs::write(&empty, b"").unwrap();
        assert!(check(&empty).unwrap_err().to_string().ends_with("is empty"));
        let good = dir.path().join("x.tar.gz");
        std::fs::write(&good, b"abc").unwrap();
        let artifact = check(&good).unwrap();
        assert_eq!((artifact.name.as_str(), artifact.size), ("x.tar.gz", 3));
    }

    #[tokio::test]
    async fn the_reader_hashes_what_it_passes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.zip");
        let data = vec![7u8; 3 * CHUNK + 11];
        std::fs::write(&path, &data).unwrap();
        let artifact = check(&path).unwrap();
        let tally = Arc::new(Mutex::new(Tally {
            hasher: Sha256::new(),
            sent: 0,
            progress: None,
        }));
        let file = tokio::fs::File::open(&path).await.unwrap();
        let mut reader = Hashing {
            inner: file.take(artifact.size),
            expected: artifact.size,
            path,
            tally: Arc::clone(&tally),
        };
        let mut copy = Vec::new();
        reader.read_to_end(&mut copy).await.unwrap();
        assert_eq!(copy, data);
        assert_eq!(
            finish(&tally),
            Sent {
                sha256: hex::encode(Sha256::digest(&data)),
                bytes: data.len() as u64
            }
        );
    }

    #[tokio::test]
    async fn a_file_that_shrinks_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.zip");
        std::fs::write(&path, b"abc").unwrap();
        let tally = Arc::new(Mutex::new(Tally {
            hasher: Sha256::new(),
            sent: 0,
            progress: None,
        }));
        let file = tokio::fs::File::open(&path).await.unwrap();
        let mut reader = Hashing {
            inner: file.take(10),
            expected: 10,
            path,
            tally,
        };
        let err = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<ReadError>()), "{err}");
    }
}
