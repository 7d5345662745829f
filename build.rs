//! Sets `SHOAL_GIT_REVISION` (read by `shoal::GIT_REVISION`, `shoal_build_info` and
//! `--version`): `git rev-parse --short=12 HEAD` of the crate's own checkout, or `unknown`
//! when the crate is not a git checkout (a packaged crate, a copy without `.git`) or git is
//! missing. Reruns when `HEAD` or the branch it names moves.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let revision = match git_dir(&root) {
        Some(git) => {
            watch_head(&git);
            revision(&root).unwrap_or_else(|| "unknown".into())
        }
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=SHOAL_GIT_REVISION={revision}");
}

/// The crate's own git directory: `.git` itself, or where a worktree's `.git` file points.
/// None when the crate root has no `.git` (a parent repository's revision would be wrong).
fn git_dir(root: &Path) -> Option<PathBuf> {
    let dot = root.join(".git");
    if dot.is_dir() {
        return Some(dot);
    }
    let text = std::fs::read_to_string(&dot).ok()?;
    let dir = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
    Some(if dir.is_absolute() {
        dir
    } else {
        root.join(dir)
    })
}

/// `rerun-if-changed` on `HEAD`, the ref file it names and `packed-refs` (only paths that
/// exist: cargo reruns a script on every build for one that does not).
fn watch_head(git: &Path) {
    let common = std::fs::read_to_string(git.join("commondir"))
        .ok()
        .map_or_else(|| git.to_path_buf(), |c| git.join(c.trim()));
    let head = git.join("HEAD");
    let mut watched = vec![head.clone()];
    if let Ok(text) = std::fs::read_to_string(&head) {
        if let Some(name) = text.trim().strip_prefix("ref:") {
            let name = name.trim();
            watched.extend([git.join(name), common.join(name)]);
        }
    }
    watched.push(common.join("packed-refs"));
    watched.dedup();
    for p in watched.iter().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

fn revision(root: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!rev.is_empty() && rev.chars().all(|c| c.is_ascii_hexdigit())).then_some(rev)
}
