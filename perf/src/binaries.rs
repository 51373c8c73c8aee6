//! Where the proxies' binaries are: resolved to absolute paths before any target starts,
//! because targets start in their own run directories.
//!
//! * zpath: `--zpath-bin` / `ZPATH_BIN` (relative paths against the current directory), or
//!   else the `zpath` beside the running `zpath-perf` (a `cargo build` puts both in one
//!   `target/PROFILE/`).
//! * ztunnel: `ZTUNNEL_BIN` (relative against the current directory), or else
//!   `../shared/ztunnel/ztunnel` relative to the current directory, then to the workspace
//!   the harness was built from.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The workspace root this crate was built in (the parent of `perf/`).
fn build_workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `path` made absolute against `cwd` (already absolute paths are kept).
pub fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    }
}

/// The zpath binary for `${zpath_bin}`: `given` (from `--zpath-bin` or `ZPATH_BIN`)
/// resolved against `cwd`, which must then exist; or, when none is given, the `zpath`
/// beside `self_exe` if there is one; or `None`.
pub fn resolve_zpath_bin(
    given: Option<&Path>,
    cwd: &Path,
    self_exe: &Path,
) -> Result<Option<PathBuf>> {
    if let Some(g) = given {
        let abs = absolute(g, cwd);
        if !abs.is_file() {
            return Err(Error::Usage(format!(
                "--zpath-bin / ZPATH_BIN {} (resolved to {}) is not a file: build it with \
                 `cargo build --release -p zpath-engine`",
                g.display(),
                abs.display()
            )));
        }
        return Ok(Some(abs));
    }
    Ok(self_exe
        .parent()
        .map(|dir| dir.join("zpath"))
        .filter(|p| p.is_file()))
}

/// Where ztunnel is looked for, in order: `ZTUNNEL_BIN` (`env`, against `cwd`), then
/// `../shared/ztunnel/ztunnel` against `cwd` and against the build workspace.
pub fn ztunnel_candidates(env: Option<OsString>, cwd: &Path) -> Vec<PathBuf> {
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        // An explicit choice is the only candidate: a silent fallback would measure
        // another binary than the one asked for.
        return vec![absolute(Path::new(&e), cwd)];
    }
    let shared = Path::new("../shared/ztunnel/ztunnel");
    let mut v = vec![absolute(shared, cwd), build_workspace().join(shared)];
    v.dedup();
    v
}

/// The first existing candidate of [`ztunnel_candidates`] (canonical), or an error naming
/// them all.
pub fn find_ztunnel(env: Option<OsString>, cwd: &Path) -> Result<PathBuf> {
    let candidates = ztunnel_candidates(env, cwd);
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        // `..` removed, for the report and the logs; the path is absolute either way.
        return Ok(std::fs::canonicalize(found).unwrap_or_else(|_| found.clone()));
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(Error::Usage(format!(
        "ztunnel not found (looked at {}): set ZTUNNEL_BIN to a ztunnel built with \
         --features testing, or put one at ../shared/ztunnel/ztunnel beside the repository",
        looked.join(", ")
    )))
}

/// [`find_ztunnel`] with the process's `ZTUNNEL_BIN` and current directory.
pub fn find_ztunnel_here() -> Result<PathBuf> {
    let cwd = std::env::current_dir().map_err(|e| Error::io("reading the current directory", e))?;
    find_ztunnel(std::env::var_os("ZTUNNEL_BIN"), &cwd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_zpath_bin_is_resolved_against_the_current_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
        std::fs::write(dir.path().join("target/release/zpath"), b"").unwrap();
        let got = resolve_zpath_bin(
            Some(Path::new("target/release/zpath")),
            dir.path(),
            Path::new("/nonexistent/zpath-perf"),
        )
        .unwrap()
        .unwrap();
        assert!(got.is_absolute(), "{}", got.display());
        assert_eq!(got, dir.path().join("target/release/zpath"));
    }

    #[test]
    fn missing_zpath_bin_is_a_usage_error_naming_the_resolved_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = resolve_zpath_bin(
            Some(Path::new("target/release/zpath")),
            dir.path(),
            Path::new("/nonexistent/zpath-perf"),
        )
        .unwrap_err()
        .to_string();
        let resolved = dir.path().join("target/release/zpath");
        assert!(e.contains(&resolved.display().to_string()), "{e}");
    }

    #[test]
    fn zpath_beside_the_harness_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("zpath-perf");
        std::fs::write(&exe, b"").unwrap();
        let cwd = Path::new("/");
        assert_eq!(resolve_zpath_bin(None, cwd, &exe).unwrap(), None);
        std::fs::write(dir.path().join("zpath"), b"").unwrap();
        assert_eq!(
            resolve_zpath_bin(None, cwd, &exe).unwrap(),
            Some(dir.path().join("zpath"))
        );
    }

    #[test]
    fn ztunnel_bin_from_env_is_absolute_and_alone() {
        let c = ztunnel_candidates(Some("bin/ztunnel".into()), Path::new("/work/repo"));
        assert_eq!(c, vec![PathBuf::from("/work/repo/bin/ztunnel")]);
    }

    #[test]
    fn ztunnel_is_looked_for_in_shared_beside_the_repo() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let shared = dir.path().join("shared/ztunnel");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(&shared).unwrap();
        let c = ztunnel_candidates(None, &repo);
        assert_eq!(c[0], repo.join("../shared/ztunnel/ztunnel"));
        assert!(c.iter().all(|p| p.is_absolute()));
        std::fs::write(shared.join("ztunnel"), b"").unwrap();
        let found = find_ztunnel(None, &repo).unwrap();
        assert_eq!(found, shared.join("ztunnel").canonicalize().unwrap());
    }

    #[test]
    fn missing_ztunnel_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let e = find_ztunnel(Some("nope/ztunnel".into()), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ZTUNNEL_BIN"), "{e}");
        assert!(
            e.contains(&dir.path().join("nope/ztunnel").display().to_string()),
            "{e}"
        );
    }
}
