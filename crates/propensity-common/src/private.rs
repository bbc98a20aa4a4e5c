//! Files only their owner may read: the state directory holds models, reports with profile
//! ids, the ledger and webhook outboxes, so its folders are made `0700` and its files `0600`
//! (on Unix; elsewhere the platform's defaults).

use std::path::Path;

/// `create_dir_all` with mode `0700` for the folders it creates.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Writes `bytes` to `path` through a temporary file (mode `0600`) in the same folder and a
/// rename: a reader sees the old file or the new one, never half of one, and nobody but the
/// owner ever sees either.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_through_temp(path, bytes, true)
}

/// [`write_atomic`] with the platform's default modes (files meant to be shared: a job file
/// the demo writes).
pub fn write_atomic_shared(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_through_temp(path, bytes, false)
}

/// The temporary file is named after the process, so two writers never share one.
fn write_through_temp(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        if private {
            create_dir_all(dir)?;
        } else {
            std::fs::create_dir_all(dir)?;
        }
    }
    let tmp = path.with_extension(format!(
        "{}.tmp-{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    }
    let mut f = o.open(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Makes an existing file owner-only (the ledger, which SQLite creates).
pub fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
