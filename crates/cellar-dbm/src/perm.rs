//! File permissions of created files: `mode & ~umask`, applied explicitly (as dbm.dumb's
//! `_chmod` does) so the result does not depend on how the file was first created.
//!
//! The umask is read without changing it: from `/proc/self/status` (Linux >= 4.7). Only where
//! that is unavailable do we fall back to the classic set-and-restore dance, serialised by a
//! process-wide mutex (other code in the process that creates files during that instant could
//! still see a zero umask; that is the fallback's known limit).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{DbmError, Result};

static UMASK_DANCE: Mutex<()> = Mutex::new(());

/// The process umask.
pub(crate) fn umask() -> u32 {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            if let Some(rest) = line.strip_prefix("Umask:") {
                if let Ok(m) = u32::from_str_radix(rest.trim(), 8) {
                    return m & 0o777;
                }
            }
        }
    }
    let _g = UMASK_DANCE.lock().unwrap_or_else(|e| e.into_inner());
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    rustix::process::umask(old);
    old.bits() & 0o777
}

/// `mode & ~umask`, masked to permission bits.
pub(crate) fn effective_mode(mode: u32) -> u32 {
    mode & !umask() & 0o7777
}

/// Sets `path`'s permissions to `mode & ~umask`.
pub(crate) fn apply(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(effective_mode(mode)))
        .map_err(|e| DbmError::io(format!("setting the permissions of {}", path.display()), e))
}

/// Applies the mode to an open file (`fchmod`).
pub(crate) fn apply_file(file: &fs::File, path: &Path, mode: u32) -> Result<()> {
    file.set_permissions(fs::Permissions::from_mode(effective_mode(mode)))
        .map_err(|e| DbmError::io(format!("setting the permissions of {}", path.display()), e))
}
