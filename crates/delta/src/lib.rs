//! Binary patches from one release's uncompressed payload (the tar stream inside a `.tar.gz`) to
//! the next one's, shared by the server, which builds them, and the agent, which applies them.
//!
//! Two methods, named in every stored patch row so a later change of default stays readable:
//! - [`Method::Zstd`]: zstd with the old payload as a reference prefix and long-distance matching,
//!   the window large enough to reach back over the whole reference.
//! - [`Method::Bsdiff`]: bsdiff 4.x (qbsdiff), which finds near matches that a plain match finder
//!   misses in recompiled code, at a higher build cost in time and memory.
//!
//! Applying never writes more than the caller's bound, so a corrupt or hostile patch cannot fill
//! the disk; the caller still checks the result's SHA-256 against signed metadata before use.

use std::io::{self, Write};

/// Inputs larger than this are not diffed (both payloads are held in memory while building).
pub const MAX_INPUT: u64 = 2 * 1024 * 1024 * 1024;

/// Above this, patches are built with zstd rather than bsdiff: building with bsdiff took about six
/// times the old payload in memory (its suffix array), zstd about three times the two payloads.
pub const BSDIFF_MAX_INPUT: u64 = 256 * 1024 * 1024;

/// The largest window zstd allows on 64-bit targets (2 GiB).
const MAX_WINDOW_LOG: u32 = 31;

/// zstd level for patches: builds happen once per release pair, off the request path.
const ZSTD_LEVEL: i32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("unknown delta method `{0}`")]
    UnknownMethod(String),
    #[error("{what} is {size} bytes, above the delta limit of {MAX_INPUT}")]
    TooLarge { what: &'static str, size: u64 },
    #[error("the patch would produce more than {limit} bytes")]
    OutputTooLarge { limit: u64 },
    #[error("the patch is not usable: {0}")]
    Corrupt(String),
    #[error("delta I/O: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Zstd,
    Bsdiff,
}

impl Method {
    pub const ALL: [Method; 2] = [Method::Zstd, Method::Bsdiff];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Zstd => "zstd",
            Method::Bsdiff => "bsdiff",
        }
    }

    /// The method new patches between payloads of these sizes are built with. On real release
    /// pairs (BENCHMARKS.md, "Delta updates") bsdiff's patches were as small as zstd's for native
    /// executables (within 2%) and 40–70% smaller for archives of mostly unchanged files, and built
    /// three to six times faster; zstd takes over where bsdiff's memory would be too much.
    pub fn for_sizes(old: u64, new: u64) -> Self {
        if old.max(new) <= BSDIFF_MAX_INPUT {
            Method::Bsdiff
        } else {
            Method::Zstd
        }
    }

    pub fn parse(name: &str) -> Result<Self, DeltaError> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| DeltaError::UnknownMethod(name.chars().take(40).collect()))
    }
}

fn check_size(what: &'static str, bytes: &[u8]) -> Result<(), DeltaError> {
    let size = bytes.len() as u64;
    if size > MAX_INPUT {
        return Err(DeltaError::TooLarge { what, size });
    }
    Ok(())
}

/// The smallest window log that covers `bytes` (zstd's limits applied).
fn window_log(bytes: u64) -> u32 {
    let needed = 64 - bytes.max(1).saturating_sub(1).leading_zeros();
    needed.clamp(10, MAX_WINDOW_LOG)
}

/// A patch that turns `old` into `new`.
pub fn build(method: Method, old: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    check_size("the old payload", old)?;
    check_size("the new payload", new)?;
    match method {
        Method::Zstd => {
            let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), ZSTD_LEVEL, old)?;
            // Matches may reach back over the whole reference and everything written so far.
            encoder.window_log(window_log(old.len() as u64 + new.len() as u64))?;
            encoder.long_distance_matching(true)?;
            encoder.set_pledged_src_size(Some(new.len() as u64))?;
            encoder.write_all(new)?;
            Ok(encoder.finish()?)
        }
        Method::Bsdiff => {
            let mut patch = Vec::new();
            qbsdiff::Bsdiff::new(old, new)
                .compression_level(9)
                .compare(io::Cursor::new(&mut patch))?;
            Ok(patch)
        }
    }
}

/// Writes what `patch` makes of `old` into `out`, failing as soon as more than `limit` bytes
/// would be written. Returns the number of bytes written.
pub fn apply(method: Method, old: &[u8], patch: &[u8], out: impl Write, limit: u64) -> Result<u64, DeltaError> {
    check_size("the old payload", old)?;
    let mut out = Bounded {
        inner: out,
        left: limit,
        failed: false,
    };
    let result = match method {
        Method::Zstd => zstd::stream::read::Decoder::with_ref_prefix(patch, old).and_then(|mut decoder| {
            decoder.window_log_max(MAX_WINDOW_LOG)?;
            io::copy(&mut decoder, &mut out)
        }),
        Method::Bsdiff => {
            let patcher = qbsdiff::Bspatch::new(patch).map_err(|e| DeltaError::Corrupt(e.to_string()))?;
            if patcher.hint_target_size() > limit {
                return Err(DeltaError::OutputTooLarge { limit });
            }
            patcher.apply(old, &mut out)
        }
    };
    // Both inputs are in memory, so an error is the output's (the bound, or the writer itself)
    // or else the patch's.
    let written = result.map_err(|e| {
        if e.get_ref().is_some_and(|inner| inner.is::<OverLimit>()) {
            DeltaError::OutputTooLarge { limit }
        } else if out.failed {
            DeltaError::Io(e)
        } else {
            DeltaError::Corrupt(e.to_string())
        }
    })?;
    out.inner.flush()?;
    Ok(written)
}

#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("output limit reached")
    }
}

impl std::error::Error for OverLimit {}

/// A writer that refuses to go past a byte budget, and remembers whether the writer under it
/// failed.
struct Bounded<W> {
    inner: W,
    left: u64,
    failed: bool,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(OverLimit));
        }
        let n = self.inner.write(buf).inspect_err(|_| self.failed = true)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random bytes from a fixed seed (xorshift), so the tests need no RNG crate.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// `old` with a few scattered edits and an insertion: the shape of a small release change.
    fn pair() -> (Vec<u8>, Vec<u8>) {
        let old = noise(1 << 20, 7);
        let mut new = old.clone();
        for i in (0..new.len()).step_by(65_536) {
            new[i] ^= 0x5a;
        }
        new.splice(300_000..300_000, noise(4096, 9));
        (old, new)
    }

    #[test]
    fn both_methods_round_trip_and_are_small() {
        let (old, new) = pair();
        for method in Method::ALL {
            let patch = build(method, &old, &new).unwrap();
            assert!(
                patch.len() < new.len() / 20,
                "{}: {} bytes",
                method.as_str(),
                patch.len()
            );
            let mut out = Vec::new();
            let written = apply(method, &old, &patch, &mut out, new.len() as u64).unwrap();
            assert_eq!(written, new.len() as u64);
            assert!(out == new, "{} rebuilt other bytes", method.as_str());
        }
    }

    #[test]
    fn output_is_bounded() {
        let (old, new) = pair();
        for method in Method::ALL {
            let patch = build(method, &old, &new).unwrap();
            let mut out = Vec::new();
            let err = apply(method, &old, &patch, &mut out, new.len() as u64 - 1).unwrap_err();
            assert!(
                matches!(err, DeltaError::OutputTooLarge { .. }),
                "{}: {err}",
                method.as_str()
            );
            assert!(out.len() < new.len());
        }
    }

    #[test]
    fn damaged_patches_are_refused_or_rebuild_other_bytes() {
        let (old, new) = pair();
        for method in Method::ALL {
            let mut patch = build(method, &old, &new).unwrap();
            let middle = patch.len() / 2;
            patch[middle] ^= 0xff;
            patch.truncate(patch.len() - 7);
            let mut out = Vec::new();
            match apply(method, &old, &patch, &mut out, new.len() as u64) {
                Err(DeltaError::Corrupt(_)) => {}
                // Whatever comes out must differ, which the caller's SHA-256 check catches.
                Ok(_) => assert!(out != new, "{}", method.as_str()),
                Err(other) => panic!("{}: {other}", method.as_str()),
            }
        }
        assert!(matches!(
            apply(Method::Bsdiff, &old, b"junk", Vec::new(), 10),
            Err(DeltaError::Corrupt(_))
        ));
        assert!(matches!(
            apply(Method::Zstd, &old, b"junk", Vec::new(), 10),
            Err(DeltaError::Corrupt(_))
        ));
    }

    #[test]
    fn a_patch_needs_its_own_base() {
        let (old, new) = pair();
        let patch = build(Method::Zstd, &old, &new).unwrap();
        let other = noise(old.len(), 11);
        let mut out = Vec::new();
        let result = apply(Method::Zstd, &other, &patch, &mut out, new.len() as u64);
        assert!(result.is_err() || out != new);
    }

    #[test]
    fn methods_parse_by_name() {
        for method in Method::ALL {
            assert_eq!(Method::parse(method.as_str()).unwrap(), method);
        }
        assert!(matches!(Method::parse("xdelta"), Err(DeltaError::UnknownMethod(_))));
        assert_eq!(Method::for_sizes(30 << 20, 31 << 20), Method::Bsdiff);
        assert_eq!(Method::for_sizes(BSDIFF_MAX_INPUT, 1), Method::Bsdiff);
        assert_eq!(Method::for_sizes(1, BSDIFF_MAX_INPUT + 1), Method::Zstd);
        assert_eq!(window_log(1), 10);
        assert_eq!(window_log(1 << 20), 20);
        assert_eq!(window_log((1 << 20) + 1), 21);
        assert_eq!(window_log(u64::MAX), MAX_WINDOW_LOG);
    }
}
