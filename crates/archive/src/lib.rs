//! Safe handling of release archives (`.tar.gz`, `.zip`), shared by the server, which inspects an
//! upload before accepting it, and the agent, which unpacks it into an install folder.
//!
//! Both walk the entries through the same checks ([`walk_tar`], [`walk_zip`]): no absolute paths,
//! no `..`, no links pointing out of the install folder, nothing but files, folders and links.
//! Unpacking additionally refuses to write through a link that would lead outside `dest`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use upkeep_domain::{link_stays_inside, normalize_archive_path};

/// More entries than this is refused: no real product needs it, and a hostile archive could.
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive is not a readable {format}: {reason}")]
    Unreadable { format: &'static str, reason: String },
    #[error("unsafe archive entry `{entry}`: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("the archive has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
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

/// Walks a `.tar.gz`, calling `visit` with each checked entry and the reader positioned on it.
pub fn walk_tar(
    path: &Path,
    mut visit: impl FnMut(
        &SafeEntry,
        &mut tar::Entry<'_, flate2::read::GzDecoder<BufReader<File>>>,
    ) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let unreadable = |e: std::io::Error| ArchiveError::Unreadable {
        format: "tar.gz",
        reason: e.to_string(),
    };
    let file = File::open(path).map_err(unreadable)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
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
    Ok(())
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

/// Checks every entry and reads the archive end to end; returns the regular files it holds.
pub fn inspect(path: &Path, format: Format) -> Result<BTreeSet<String>, ArchiveError> {
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
    match format {
        Format::TarGz => walk_tar(path, |entry, reader| note(entry, reader))?,
        Format::Zip => walk_zip(path, |entry, reader| note(entry, reader))?,
    }
    Ok(files)
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
        Format::TarGz => walk_tar(path, |entry, reader| {
            let inside = reader.unpack_in(dest).map_err(io("unpacking into", dest))?;
            if inside {
                Ok(())
            } else {
                Err(unsafe_entry(
                    entry_path(entry),
                    "it resolves outside the install folder",
                ))
            }
        }),
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
        let files = inspect(&archive, Format::TarGz).unwrap();
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
        assert_eq!(inspect(&good, Format::Zip).unwrap().len(), 1);
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
