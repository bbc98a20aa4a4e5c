//! Shared helpers for the integration tests: the repository root, running the CLI in
//! process, and golden files that `UPDATE_GOLDEN=1` rewrites on purpose.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// What one CLI invocation produced.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `propensity ARGS...` in process. Paths under the repository root are shown relative
/// to it in the captured output, so golden files do not depend on where the clone lives.
pub fn propensity<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut argv: Vec<OsString> = vec!["propensity".into()];
    argv.extend(args.into_iter().map(Into::into));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = propensity_cli::run(argv, &mut out, &mut err);
    let root = format!("{}/", repo_root().display());
    let clean = |b: Vec<u8>| String::from_utf8_lossy(&b).replace(&root, "");
    Output {
        code,
        stdout: clean(out),
        stderr: clean(err),
    }
}

/// Compares `actual` with the golden file at `path`; with `UPDATE_GOLDEN=1` writes it instead.
pub fn golden(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "missing golden file {} ({e}); run `make golden` to create it",
            path.display()
        )
    })?;
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{} differs (run `make golden` after a deliberate change)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ))
    }
}
