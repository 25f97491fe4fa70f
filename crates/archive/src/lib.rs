//! Safe handling of release archives (`.tar.gz`, `.zip`), shared by the server, which inspects an
//! upload before accepting it, and the agent, which unpacks it into an install folder.
//!
//! Both walk the entries through the same checks ([`walk_tar`], [`walk_zip`]): no absolute paths,
//! no `..`, no links pointing out of the install folder, nothing but files, folders and links.
//! Unpacking additionally refuses to write through a link that would lead outside `dest`.
//!
//! A `.tar.gz` also has a *content*: its uncompressed tar stream, whose SHA-256 and length the
//! server records at upload ([`Inspection::content`]) so that a delta-rebuilt tar can be checked
//! against signed metadata; [`Format::Tar`] unpacks such a stream through the very same checks.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use upkeep_domain::{link_stays_inside, normalize_archive_path};

/// More entries than this is refused: no real product needs it, and a hostile archive could.
pub const MAX_ENTRIES: usize = 200_000;

/// Bytes allowed after a tar stream's end marker for its content to be recorded; real archives
/// carry at most a record's padding (10 KiB), and a stream of junk there is not worth diffing.
const MAX_TRAILING: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive is not a readable {format}: {reason}")]
    Unreadable { format: &'static str, reason: String },
    #[error("unsafe archive entry `{entry}`: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("the archive has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("the uncompressed archive is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TarGz,
    Zip,
    /// An uncompressed tar stream: the content of a `.tar.gz`, as rebuilt from a delta. Never an
    /// upload's format, so neither [`Format::from_filename`] nor [`Format::parse`] yields it.
    Tar,
}

impl Format {
    /// From a file name's ending.
    pub fn from_filename(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(Format::TarGz)
        } else if lower.ends_with(".zip") {
            Some(Format::Zip)
        } else {
            None
        }
    }

    /// From the name used in manifests (`tar.gz`, `zip`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "tar.gz" => Some(Format::TarGz),
            "zip" => Some(Format::Zip),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::TarGz => "tar.gz",
            Format::Zip => "zip",
            Format::Tar => "tar",
        }
    }
}

/// An entry that passed the checks, by its normalized relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SafeEntry {
    File(String),
    Directory(String),
    Symlink { path: String, target: String },
}

fn unsafe_entry(entry: &str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Unsafe {
        entry: entry.chars().take(200).collect(),
        reason: reason.into(),
    }
}

/// The one rule for every entry of either format. `Ok(None)` means "skip it" (the archive root).
fn check(
    raw: &str,
    links: &mut BTreeSet<String>,
    entry: impl FnOnce(String) -> Result<SafeEntry, ArchiveError>,
) -> Result<Option<SafeEntry>, ArchiveError> {
    let Some(name) = normalize_archive_path(raw).map_err(|e| unsafe_entry(raw, e.to_string()))? else {
        return Ok(None);
    };
    // A link checked on its own can still be a step in a chain that leads out (`x -> .`, then
    // `x/x/x/evil -> ../../..`): nothing may be written at or through a link of this archive.
    let mut prefix = String::new();
    for component in name.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(component);
        if links.contains(&prefix) {
            return Err(unsafe_entry(
                raw,
                format!("it goes through the link `{prefix}` of the same archive"),
            ));
        }
    }
    let checked = entry(name)?;
    if let SafeEntry::Symlink { path, target } = &checked {
        if !link_stays_inside(path, target) {
            return Err(unsafe_entry(
                raw,
                format!("link to `{target}` points outside the install folder"),
            ));
        }
        links.insert(path.clone());
    }
    Ok(Some(checked))
}

/// The SHA-256 (hex) and length of a `.tar.gz`'s uncompressed tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub sha256: String,
    pub size: u64,
}

/// A reader that hashes and counts what passes through it (the tar walk reads through one).
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Reads to the end (at most `trailing` more bytes) and returns the content; `None` when more
    /// than that is left.
    fn finish(mut self, trailing: u64) -> std::io::Result<Option<Content>> {
        let before = self.size;
        std::io::copy(&mut (&mut self).take(trailing + 1), &mut std::io::sink())?;
        if self.size - before > trailing {
            return Ok(None);
        }
        Ok(Some(Content {
            sha256: hex::encode(self.hasher.finalize()),
            size: self.size,
        }))
    }
}

fn gunzip(path: &Path) -> std::io::Result<flate2::read::MultiGzDecoder<BufReader<File>>> {
    // Every gzip member, as `gzip -d` reads them: the content hash covers what unpacking sees.
    Ok(flate2::read::MultiGzDecoder::new(BufReader::new(File::open(path)?)))
}

/// A tar reader positioned on one entry.
pub type TarEntry<'a, R> = tar::Entry<'a, Hashing<R>>;

/// Walks a `.tar.gz`, calling `visit` with each checked entry and the reader positioned on it;
/// returns the content of the stream (see [`Content`]).
pub fn walk_tar(
    path: &Path,
    visit: impl FnMut(
        &SafeEntry,
        &mut TarEntry<'_, flate2::read::MultiGzDecoder<BufReader<File>>>,
    ) -> Result<(), ArchiveError>,
) -> Result<Option<Content>, ArchiveError> {
    let unreadable = |e: std::io::Error| ArchiveError::Unreadable {
        format: "tar.gz",
        reason: e.to_string(),
    };
    walk_tar_stream(gunzip(path).map_err(unreadable)?, "tar.gz", visit)
}

fn walk_tar_stream<R: Read>(
    reader: R,
    format: &'static str,
    mut visit: impl FnMut(&SafeEntry, &mut TarEntry<'_, R>) -> Result<(), ArchiveError>,
) -> Result<Option<Content>, ArchiveError> {
    let unreadable = |e: std::io::Error| ArchiveError::Unreadable {
        format,
        reason: e.to_string(),
    };
    let mut archive = tar::Archive::new(Hashing::new(reader));
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    let mut links = BTreeSet::new();
    for (index, entry) in archive.entries().map_err(unreadable)?.enumerate() {
        if index >= MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries);
        }
        let mut entry = entry.map_err(unreadable)?;
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| unsafe_entry("?", "the name is not UTF-8"))?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        let link_target = entry
            .link_name_bytes()
            .map(|t| String::from_utf8_lossy(&t).into_owned());
        let checked = check(&raw, &mut links, |name| match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => Ok(SafeEntry::File(name)),
            tar::EntryType::Directory => Ok(SafeEntry::Directory(name)),
            tar::EntryType::Symlink => Ok(SafeEntry::Symlink {
                path: name,
                target: link_target.unwrap_or_default(),
            }),
            other => Err(unsafe_entry(&raw, format!("entries of type {other:?} are not allowed"))),
        })?;
        if let Some(checked) = checked {
            visit(&checked, &mut entry)?;
        }
    }
    archive.into_inner().finish(MAX_TRAILING).map_err(unreadable)
}

/// Writes the uncompressed tar stream of the `.tar.gz` at `path` into `out`, refusing to write
/// more than `limit` bytes, and returns its content digest.
pub fn decompress(path: &Path, mut out: impl Write, limit: u64) -> Result<Content, ArchiveError> {
    let unreadable = |e: std::io::Error| ArchiveError::Unreadable {
        format: "tar.gz",
        reason: e.to_string(),
    };
    let mut reader = Hashing::new(gunzip(path).map_err(unreadable)?);
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buffer).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        if reader.size > limit {
            return Err(ArchiveError::TooLarge { limit });
        }
        out.write_all(&buffer[..n]).map_err(io("writing", path))?;
    }
    out.flush().map_err(io("writing", path))?;
    Ok(Content {
        sha256: hex::encode(reader.hasher.finalize()),
        size: reader.size,
    })
}

/// Walks a `.zip` the same way.
pub fn walk_zip(
    path: &Path,
    mut visit: impl FnMut(&SafeEntry, &mut zip::read::ZipFile<'_, BufReader<File>>) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let unreadable = |reason: String| ArchiveError::Unreadable { format: "zip", reason };
    let file = File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| unreadable(e.to_string()))?;
    if archive.len() > MAX_ENTRIES {
        return Err(ArchiveError::TooManyEntries);
    }
    let mut links = BTreeSet::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| unreadable(e.to_string()))?;
        let raw = entry.name().to_owned();
        let checked = check(&raw, &mut links, |name| {
            if entry.is_dir() {
                Ok(SafeEntry::Directory(name))
            } else if entry.is_symlink() {
                let mut target = String::new();
                entry
                    .read_to_string(&mut target)
                    .map_err(|e| unreadable(e.to_string()))?;
                Ok(SafeEntry::Symlink { path: name, target })
            } else {
                Ok(SafeEntry::File(name))
            }
        })?;
        if let Some(checked) = checked {
            visit(&checked, &mut entry)?;
        }
    }
    Ok(())
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The regular files the archive holds.
    pub files: BTreeSet<String>,
    /// For a `.tar.gz`: its uncompressed tar stream (none when junk follows the tar's end).
    pub content: Option<Content>,
}

/// Checks every entry and reads the archive end to end.
pub fn inspect(path: &Path, format: Format) -> Result<Inspection, ArchiveError> {
    let mut files = BTreeSet::new();
    let mut note = |entry: &SafeEntry, reader: &mut dyn Read| {
        if let SafeEntry::File(name) = entry {
            files.insert(name.clone());
        }
        // Reading through each entry checks the compressed stream, not just the headers.
        std::io::copy(reader, &mut std::io::sink()).map_err(|e| ArchiveError::Unreadable {
            format: format.as_str(),
            reason: e.to_string(),
        })?;
        Ok(())
    };
    let content = match format {
        Format::TarGz => walk_tar(path, |entry, reader| note(entry, reader))?,
        Format::Tar => walk_tar_stream(open_tar(path)?, "tar", |entry, reader| note(entry, reader))?,
        Format::Zip => {
            walk_zip(path, |entry, reader| note(entry, reader))?;
            None
        }
    };
    Ok(Inspection { files, content })
}

fn open_tar(path: &Path) -> Result<BufReader<File>, ArchiveError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| ArchiveError::Unreadable {
            format: "tar",
            reason: e.to_string(),
        })
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let path = path.to_owned();
    move |source| ArchiveError::Io { context, path, source }
}

/// Unpacks into `dest` (which must exist), after the same checks as [`inspect`].
pub fn unpack(path: &Path, format: Format, dest: &Path) -> Result<(), ArchiveError> {
    let root = dest.canonicalize().map_err(io("resolving", dest))?;
    match format {
        // tar's `unpack_in` already refuses to write through links that lead out of `dest`.
        Format::TarGz => walk_tar(path, |entry, reader| unpack_tar_entry(entry, reader, dest)).map(drop),
        Format::Tar => walk_tar_stream(open_tar(path)?, "tar", |entry, reader| {
            unpack_tar_entry(entry, reader, dest)
        })
        .map(drop),
        Format::Zip => walk_zip(path, |entry, reader| {
            let target = dest.join(entry_path(entry));
            let parent = target.parent().unwrap_or(dest).to_owned();
            fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
            let real_parent = parent.canonicalize().map_err(io("resolving", &parent))?;
            if !real_parent.starts_with(&root) {
                return Err(unsafe_entry(
                    entry_path(entry),
                    "it resolves outside the install folder",
                ));
            }
            match entry {
                SafeEntry::Directory(_) => fs::create_dir_all(&target).map_err(io("creating", &target)),
                SafeEntry::Symlink { target: link, .. } => {
                    make_link(Path::new(link), &target).map_err(io("linking", &target))
                }
                SafeEntry::File(_) => {
                    let mut out = File::create(&target).map_err(io("writing", &target))?;
                    std::io::copy(reader, &mut out).map_err(io("writing", &target))?;
                    #[cfg(unix)]
                    if let Some(mode) = reader.unix_mode() {
                        use std::os::unix::fs::PermissionsExt;
                        // Keep the executable bits; never setuid or world-writable.
                        let _ = fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o755));
                    }
                    Ok(())
                }
            }
        }),
    }
}

fn unpack_tar_entry<R: Read>(entry: &SafeEntry, reader: &mut TarEntry<'_, R>, dest: &Path) -> Result<(), ArchiveError> {
    if reader.unpack_in(dest).map_err(io("unpacking into", dest))? {
        Ok(())
    } else {
        Err(unsafe_entry(
            entry_path(entry),
            "it resolves outside the install folder",
        ))
    }
}

fn entry_path(entry: &SafeEntry) -> &str {
    match entry {
        SafeEntry::File(p) | SafeEntry::Directory(p) | SafeEntry::Symlink { path: p, .. } => p,
    }
}

#[cfg(unix)]
fn make_link(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn make_link(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            header.set_entry_type(*kind);
            // Raw names, so hostile ones reach the archive unchanged.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if !link.is_empty() {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn inspects_and_unpacks_a_good_tar() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = write(
            tmp.path(),
            "a.tar.gz",
            &tar_gz(&[
                ("./", tar::EntryType::Directory, b"", ""),
                ("./bin/demo", tar::EntryType::Regular, b"#!/bin/sh\n", ""),
                ("./lib/current", tar::EntryType::Symlink, b"", "../bin"),
            ]),
        );
        let files = inspect(&archive, Format::TarGz).unwrap().files;
        assert_eq!(files.into_iter().collect::<Vec<_>>(), ["bin/demo"]);
        let dest = tmp.path().join("out");
        fs::create_dir(&dest).unwrap();
        unpack(&archive, Format::TarGz, &dest).unwrap();
        assert!(dest.join("bin/demo").is_file());
        assert!(dest.join("lib/current/demo").is_file());
    }

    #[test]
    fn refuses_escapes_in_tar() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, kind, link) in [
            ("../../evil", tar::EntryType::Regular, ""),
            ("/etc/evil", tar::EntryType::Regular, ""),
            ("a/../../evil", tar::EntryType::Regular, ""),
            ("link", tar::EntryType::Symlink, "/etc"),
            ("link", tar::EntryType::Symlink, "../.."),
            ("dev", tar::EntryType::Char, ""),
            ("hard", tar::EntryType::Link, "/etc/passwd"),
        ] {
            let archive = write(tmp.path(), "bad.tar.gz", &tar_gz(&[(name, kind, b"", link)]));
            let err = inspect(&archive, Format::TarGz).unwrap_err();
            assert!(matches!(err, ArchiveError::Unsafe { .. }), "{name}: {err}");
            let dest = tmp.path().join("out");
            let _ = fs::remove_dir_all(&dest);
            fs::create_dir(&dest).unwrap();
            assert!(
                matches!(unpack(&archive, Format::TarGz, &dest), Err(ArchiveError::Unsafe { .. })),
                "{name}"
            );
            assert!(!tmp.path().join("evil").exists());
        }
    }

    #[test]
    fn refuses_escapes_in_zip_and_unpacks_good_ones() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let zip_with = |name: &str| {
            let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            writer
                .start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(b"x").unwrap();
            writer.finish().unwrap().into_inner()
        };
        let bad = write(tmp.path(), "bad.zip", &zip_with("../evil"));
        assert!(matches!(inspect(&bad, Format::Zip), Err(ArchiveError::Unsafe { .. })));
        let good = write(tmp.path(), "good.zip", &zip_with("bin/demo"));
        let inspected = inspect(&good, Format::Zip).unwrap();
        assert_eq!((inspected.files.len(), inspected.content), (1, None));
        let dest = tmp.path().join("out");
        fs::create_dir(&dest).unwrap();
        unpack(&good, Format::Zip, &dest).unwrap();
        assert_eq!(fs::read(dest.join("bin/demo")).unwrap(), b"x");
    }

    #[test]
    fn link_chains_cannot_lead_out() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let tar = write(
            tmp.path(),
            "chain.tar.gz",
            &tar_gz(&[
                ("x", tar::EntryType::Symlink, b"", "."),
                ("x/x/x/x/evil", tar::EntryType::Symlink, b"", "../../../../victim"),
                ("evil", tar::EntryType::Regular, b"owned", ""),
            ]),
        );
        assert!(matches!(inspect(&tar, Format::TarGz), Err(ArchiveError::Unsafe { .. })));
        // The same chain in a zip, with links marked by their unix mode.
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let link = zip::write::SimpleFileOptions::default().unix_permissions(0o120777);
        writer.add_symlink("x", ".", link).unwrap();
        writer.add_symlink("x/x/x/x/evil", "../../../../victim", link).unwrap();
        writer
            .start_file("evil", zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(b"owned").unwrap();
        let zip_path = write(tmp.path(), "chain.zip", &writer.finish().unwrap().into_inner());
        assert!(matches!(
            inspect(&zip_path, Format::Zip),
            Err(ArchiveError::Unsafe { .. })
        ));
        let dest = tmp.path().join("a/b/c/d/out");
        fs::create_dir_all(&dest).unwrap();
        assert!(unpack(&zip_path, Format::Zip, &dest).is_err());
        assert!(!tmp.path().join("a/victim").exists() && !tmp.path().join("victim").exists());
    }

    fn gunzipped(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn the_content_is_the_uncompressed_tar_and_unpacks_through_the_same_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = tar_gz(&[
            ("bin/demo", tar::EntryType::Regular, b"#!/bin/sh\n", ""),
            ("lib/data", tar::EntryType::Regular, &[7u8; 5000], ""),
        ]);
        let archive = write(tmp.path(), "a.tar.gz", &bytes);
        let tar = gunzipped(&bytes);
        let expected = Content {
            sha256: hex::encode(Sha256::digest(&tar)),
            size: tar.len() as u64,
        };
        assert_eq!(
            inspect(&archive, Format::TarGz).unwrap().content,
            Some(expected.clone())
        );

        let mut out = Vec::new();
        assert_eq!(decompress(&archive, &mut out, tar.len() as u64).unwrap(), expected);
        assert!(out == tar);
        assert!(matches!(
            decompress(&archive, std::io::sink(), tar.len() as u64 - 1),
            Err(ArchiveError::TooLarge { .. })
        ));

        let plain = write(tmp.path(), "a.tar", &tar);
        let dest = tmp.path().join("out");
        fs::create_dir(&dest).unwrap();
        unpack(&plain, Format::Tar, &dest).unwrap();
        assert_eq!(fs::read(dest.join("lib/data")).unwrap(), [7u8; 5000]);

        for (name, kind, link) in [
            ("../../evil", tar::EntryType::Regular, ""),
            ("/etc/evil", tar::EntryType::Regular, ""),
            ("link", tar::EntryType::Symlink, "../.."),
        ] {
            let bad = write(tmp.path(), "bad.tar", &gunzipped(&tar_gz(&[(name, kind, b"", link)])));
            assert!(
                matches!(inspect(&bad, Format::Tar), Err(ArchiveError::Unsafe { .. })),
                "{name}"
            );
            assert!(
                matches!(unpack(&bad, Format::Tar, &dest), Err(ArchiveError::Unsafe { .. })),
                "{name}"
            );
        }
        assert!(!tmp.path().join("evil").exists());
    }

    #[test]
    fn unreadable_archives_say_so() {
        let tmp = tempfile::tempdir().unwrap();
        let junk = write(tmp.path(), "junk", b"not an archive");
        assert!(matches!(
            inspect(&junk, Format::TarGz),
            Err(ArchiveError::Unreadable { .. })
        ));
        assert!(matches!(
            inspect(&junk, Format::Zip),
            Err(ArchiveError::Unreadable { .. })
        ));
    }
}
