//! Artifact blobs behind `object_store`, addressed by SHA-256 (`sha256/ab/abcdef…`). A local folder
//! by default; the same code serves an S3-compatible store for scale-out.
//!
//! Invariant: a blob's key is the SHA-256 of its bytes as computed by this server at upload, so a
//! key never changes meaning and identical uploads share one blob.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("not a SHA-256 digest: {0}")]
    BadDigest(String),
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("reading upload: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// The folder of a local store: reads open the file directly, in large chunks, instead of
    /// through `object_store` (which reads 8 KiB at a time and caps downloads far below the disk).
    local_root: Option<Arc<std::path::PathBuf>>,
}

/// Chunk size of direct local reads.
const READ_CHUNK: usize = 512 * 1024;

/// Part size for streaming a file into the store.
const PART_SIZE: usize = 8 * 1024 * 1024;

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn key(sha256: &str) -> Result<Path, BlobError> {
    if !is_sha256_hex(sha256) {
        return Err(BlobError::BadDigest(sha256.chars().take(80).collect()));
    }
    Ok(Path::from(format!("sha256/{}/{}", &sha256[..2], sha256)))
}

/// A ranged read: the bytes, which range they are, and the whole blob's size.
pub struct BlobRead {
    pub range: Range<u64>,
    pub total: u64,
    pub stream: BoxStream<'static, Result<Bytes, BlobError>>,
    /// The open file of a local blob, so the bytes can go to a socket without passing through
    /// memory (see [`FileBody`]).
    pub file: Option<Arc<std::fs::File>>,
}

/// A response extension saying "the body is exactly `range` of `file`". The server's own HTTP/1.1
/// path (`crate::serve`) then sends it with `sendfile(2)` and never polls the body stream; any
/// other path streams the body as usual, so both give the same bytes.
#[derive(Clone)]
pub struct FileBody {
    pub file: Arc<std::fs::File>,
    pub range: Range<u64>,
}

impl BlobRead {
    /// The response `builder` describes, with this read as its body.
    pub fn into_response(self, builder: axum::http::response::Builder) -> axum::http::Result<axum::response::Response> {
        let file_body = self.file.map(|file| FileBody {
            file,
            range: self.range.clone(),
        });
        // Counted as it is polled: a body sent with `sendfile` never is.
        let stream = self.stream.inspect(|chunk| {
            if let Ok(chunk) = chunk {
                crate::telemetry::file_bytes_sent(crate::telemetry::Sent::Copied, chunk.len() as u64);
            }
        });
        let mut response = builder.body(axum::body::Body::from_stream(stream))?;
        if let Some(file_body) = file_body {
            response.extensions_mut().insert(file_body);
        }
        Ok(response)
    }
}

impl BlobStore {
    pub fn local(root: &FsPath) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root)?;
        let store = LocalFileSystem::new_with_prefix(root)?.with_automatic_cleanup(true);
        Ok(BlobStore {
            store: Arc::new(store),
            local_root: Some(Arc::new(root.canonicalize()?)),
        })
    }

    pub async fn exists(&self, sha256: &str) -> Result<bool, BlobError> {
        match self.store.head(&key(sha256)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies a finished local file into the store under its digest (already computed by the caller).
    pub async fn put_file(&self, sha256: &str, file: &FsPath) -> Result<(), BlobError> {
        let location = key(sha256)?;
        let upload = self.store.put_multipart(&location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut source = tokio::fs::File::open(file).await?;
        let mut buffer = vec![0u8; 1024 * 1024];
        loop {
            let n = match source.read(&mut buffer).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(4).await {
                return Err(e.into());
            }
            writer.write(&buffer[..n]);
        }
        writer.finish().await?;
        Ok(())
    }

    pub async fn delete(&self, sha256: &str) -> Result<(), BlobError> {
        match self.store.delete(&key(sha256)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the whole blob, or the part `range` asks for.
    pub async fn read(&self, sha256: &str, range: Option<GetRange>) -> Result<BlobRead, BlobError> {
        if let Some(root) = &self.local_root {
            return read_local(root, sha256, range).await;
        }
        let options = GetOptions {
            range,
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&key(sha256)?, options).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(sha256.to_owned())),
            Err(e) => return Err(e.into()),
        };
        let range = result.range.clone();
        let total = result.meta.size;
        let stream = result.into_stream().map(|chunk| chunk.map_err(BlobError::from)).boxed();
        Ok(BlobRead {
            range,
            total,
            stream,
            file: None,
        })
    }
}

async fn read_local(root: &FsPath, sha256: &str, range: Option<GetRange>) -> Result<BlobRead, BlobError> {
    // The key is built from a checked digest only, so the path cannot leave `root`.
    let path = root.join(key(sha256)?.as_ref());
    let opened = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::File, u64)> {
        let file = std::fs::File::open(&path)?;
        let total = file.metadata()?.len();
        Ok((file, total))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let (file, total) = match opened {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound(sha256.to_owned())),
        Err(e) => return Err(e.into()),
    };
    let range = match range {
        None => 0..total,
        Some(GetRange::Bounded(r)) => r.start.min(total)..r.end.min(total),
        Some(GetRange::Offset(o)) => o.min(total)..total,
        Some(GetRange::Suffix(n)) => total.saturating_sub(n)..total,
    };
    // The stream reads through its own handle (it seeks), the zero-copy path through `file` with
    // explicit offsets; a response uses one or the other.
    let reader = file.try_clone()?;
    // Each chunk is read on the blocking pool straight into the buffer that goes to the socket
    // (one copy fewer than an async file reader), and no thread waits on a slow client.
    let stream = futures::stream::try_unfold((reader, range.start, range.end), |(file, offset, end)| async move {
        if offset >= end {
            return Ok(None);
        }
        let want = usize::try_from(end - offset).unwrap_or(usize::MAX).min(READ_CHUNK);
        let (file, chunk) = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::File, Vec<u8>)> {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = file;
            file.seek(SeekFrom::Start(offset))?;
            let mut chunk = Vec::with_capacity(want);
            (&mut file).take(want as u64).read_to_end(&mut chunk)?;
            Ok((file, chunk))
        })
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))??;
        if chunk.is_empty() {
            return Err(BlobError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let next = offset + chunk.len() as u64;
        Ok(Some((Bytes::from(chunk), (file, next, end))))
    })
    .boxed();
    Ok(BlobRead {
        range,
        total,
        stream,
        file: Some(Arc::new(file)),
    })
}
