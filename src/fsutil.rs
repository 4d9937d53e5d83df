//! Atomic outputs: everything awqc writes goes to a staging directory next to the destination and
//! is renamed into place only when complete, so an error or a kill never leaves a half-written
//! output under the final name.

use crate::error::{Error, ErrorKind, IoContext, Result};
use std::path::{Path, PathBuf};

/// A directory being written. Dropped without [`StagedDir::commit`], it is removed.
pub struct StagedDir {
    final_path: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Start writing `final_path`. Fails if it exists (unless `force`), or if its parent is not
    /// writable (checked by creating the staging directory right away, before any work is done).
    pub fn create(final_path: &Path, force: bool) -> Result<Self> {
        check_output_path(final_path, force)?;
        let parent = parent_of(final_path);
        if !parent.exists() {
            std::fs::create_dir_all(&parent).at(parent.display())?;
        }
        let name = final_path
            .file_name()
            .ok_or_else(|| Error::usage(format!("{}: not a valid output path", final_path.display())))?
            .to_string_lossy()
            .to_string();
        remove_stale_staging(&parent, &name);
        let tmp = parent.join(format!(".{name}.awqc-tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(tmp.display())?;
        }
        std::fs::create_dir(&tmp).map_err(|e| {
            Error::io(format!("{} (output directory not writable)", parent.display()), e)
        })?;
        Ok(StagedDir { final_path: final_path.to_path_buf(), tmp, committed: false })
    }

    /// Where to write the files now.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Move the finished directory into place (replacing an existing one when forced).
    pub fn commit(mut self) -> Result<()> {
        if self.final_path.exists() {
            let old = self.tmp.with_extension("old");
            std::fs::rename(&self.final_path, &old).at(self.final_path.display())?;
            std::fs::rename(&self.tmp, &self.final_path).at(self.final_path.display())?;
            if old.is_dir() {
                std::fs::remove_dir_all(&old).at(old.display())?;
            } else {
                std::fs::remove_file(&old).at(old.display())?;
            }
        } else {
            std::fs::rename(&self.tmp, &self.final_path).at(self.final_path.display())?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Check, before any work is done, that the output `path` can be created: it must not exist
/// (unless `force`: a usage error), and its nearest existing ancestor must be a directory that
/// accepts new entries (an I/O error naming both paths otherwise). Leaves nothing behind.
pub fn check_output_path(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        return Err(Error::usage(format!("{}: output path exists (pass --force to replace it)", path.display())));
    }
    let mut anc = parent_of(path);
    while !anc.exists() && !anc.is_symlink() {
        match anc.parent() {
            Some(p) if !p.as_os_str().is_empty() => anc = p.to_path_buf(),
            _ => {
                anc = PathBuf::from(".");
                break;
            }
        }
    }
    if !anc.is_dir() {
        return Err(Error::new(
            ErrorKind::Io,
            format!("{}: cannot be created, {} is not a directory", path.display(), anc.display()),
        ));
    }
    let probe = anc.join(format!(".awqc-probe-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => std::fs::remove_dir(&probe).at(probe.display()),
        Err(e) => Err(Error::io(format!("{}: cannot be created in {}", path.display(), anc.display()), e)),
    }
}

/// Write one file atomically: a temporary sibling, fsync'd, then renamed over `path`.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let parent = parent_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.awqc-tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).at(tmp.display())?;
        f.write_all(bytes).at(tmp.display())?;
        f.sync_all().at(tmp.display())?;
        drop(f);
        std::fs::rename(&tmp, path).at(path.display())
    })();
    if written.is_err() {
        // Nothing half-written stays behind (a full disk, a rename refused).
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Remove staging directories of `name` left by awqc processes that no longer exist (killed jobs).
fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}.awqc-tmp-");
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().to_string();
        let Some(pid) = fname.strip_prefix(&prefix).and_then(|p| p.split('.').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive && pid != std::process::id() {
            let p = e.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_dir_is_removed_and_existing_needs_force() {
        let base = std::env::temp_dir().join(format!("awqc-fsutil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let out = base.join("out");
        {
            let d = StagedDir::create(&out, false).unwrap();
            std::fs::write(d.path().join("a"), b"x").unwrap();
        }
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0, "staging dir left behind");
        let d = StagedDir::create(&out, false).unwrap();
        std::fs::write(d.path().join("a"), b"x").unwrap();
        d.commit().unwrap();
        assert!(out.join("a").exists());
        let e = StagedDir::create(&out, false).err().unwrap();
        assert!(e.msg.contains("--force"), "{}", e.msg);
        let d = StagedDir::create(&out, true).unwrap();
        std::fs::write(d.path().join("b"), b"y").unwrap();
        d.commit().unwrap();
        assert!(out.join("b").exists() && !out.join("a").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
    #[test]
    fn atomic_write_leaves_nothing_behind_when_it_fails_and_names_a_full_disk() {
        let base = std::env::temp_dir().join(format!("awqc-fsutil-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("taken/inside")).unwrap();
        write_file_atomic(&base.join("f"), b"ok").unwrap();
        assert_eq!(std::fs::read(base.join("f")).unwrap(), b"ok");
        // The rename over a non-empty directory is refused: an error, and no temporary file.
        assert!(write_file_atomic(&base.join("taken"), b"x").is_err());
        let mut names: Vec<String> = std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        names.sort();
        assert_eq!(names, ["f", "taken"]);
        std::fs::remove_dir_all(&base).unwrap();
        let e = Error::io("/cache/blobs", std::io::Error::from_raw_os_error(28));
        assert_eq!(e.exit_code(), 6);
        assert_eq!(e.msg, "/cache/blobs: no space left on the device (free some space and run again)");
    }
}
