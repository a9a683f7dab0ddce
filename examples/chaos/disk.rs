//! The producers' DATA_DIRs on small filesystems of their own: mounted, filled and made read-only
//! by the DATA_DIR faults, freed and remounted read-write when they heal.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `mount` with `args` on `dir`: Err where it cannot run at all, Ok(Err(what it said)) where
/// it refuses.
fn mount(args: &[&str], dir: &Path) -> Result<Result<(), String>, String> {
    let out = Command::new("mount").args(args).arg(dir).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(Ok(()))
    } else {
        Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// A tmpfs of 1 MiB on `dir` (the producers' DATA_DIR), where this machine allows mounting.
pub fn mount_small(dir: &Path) -> Result<(), String> {
    mount(&["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"], dir)?
}

pub fn remount(dir: &Path, mode: &str) -> Result<(), String> {
    // A file open for writing makes the remount busy for an instant: try a few times.
    let mut last = String::new();
    for _ in 0..20 {
        match mount(&["-o", &format!("remount,{mode}")], dir)? {
            Ok(()) => return Ok(()),
            Err(refused) => last = refused,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

/// Fills the filesystem of `dir` with a file `filler` until no byte is left.
pub fn fill(dir: &Path) -> Result<(), String> {
    let mut f = std::fs::File::create(dir.join("filler")).map_err(|e| e.to_string())?;
    let block = vec![0u8; 16 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    // Fill the last partial block too.
    for size in [4096usize, 512, 1] {
        while f.write(&vec![0u8; size]).is_ok_and(|n| n > 0) {}
    }
    Ok(())
}

/// Frees what `fill` took.
pub fn free(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("filler"));
}

pub fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}
