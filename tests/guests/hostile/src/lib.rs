//! The hostile guest: each `mode` is one attack a plugin might make on the engine that runs
//! it. The engine must survive every one, and keep the damage inside the sandbox.
use sluice_sdk::prelude::*;
use std::ffi::CString;
use std::os::raw::{c_char, c_int};

// wasi-libc's descriptor-relative calls: a deep tree is built one level at a time from an
// open directory (a path naming every level would grow past any path limit).
unsafe extern "C" {
    fn openat(dirfd: c_int, path: *const c_char, flags: c_int, ...) -> c_int;
    fn mkdirat(dirfd: c_int, path: *const c_char, mode: u32) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn open(path: *const c_char, flags: c_int, ...) -> c_int;
}
// wasi-libc's O_DIRECTORY and O_RDONLY.
const O_DIRECTORY: c_int = 1 << 13;
const O_RDONLY: c_int = 0x0400_0000;

struct Hostile;

impl Action for Hostile {
    fn describe() -> Description {
        Description::new("hostile", "1.0.0", Category::Test)
            .summary("Test plugin: attacks the engine as `mode` says")
            .required(
                "mode",
                "deep | descriptors | logspam | variables | error | sparse | files | fill | reveal",
            )
            .optional(
                "path",
                "deep, descriptors, sparse, files, fill: a guest path",
            )
            .optional("count", "how many levels, files, descriptors or bytes")
            .optional("hold", "descriptors: milliseconds to keep them open")
            .optional(
                "secret",
                "reveal: the secret it asks for without declaring it may",
            )
    }

    fn run(_ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let count: u64 = config.parse_or("count", 20_000)?;
        match config.require("mode")? {
            // Ask for a secret's value without declaring `reveals_secrets`.
            "reveal" => match sluice_sdk::secrets::reveal(config.require("secret")?) {
                Ok(value) => Ok(Outcome::success().var("Leaked", value.len())),
                Err(e) => Err(ActionError::Failed(e)),
            },
            // `count` nested directories named `d` under `path`.
            "deep" => {
                let root = CString::new(config.require("path")?).unwrap();
                let name = CString::new("d").unwrap();
                let mut fd = unsafe { open(root.as_ptr(), O_DIRECTORY | O_RDONLY) };
                if fd < 0 {
                    return Err(ActionError::Failed("cannot open the root".into()));
                }
                for level in 0..count {
                    let next = unsafe {
                        if mkdirat(fd, name.as_ptr(), 0o755) != 0 {
                            -1
                        } else {
                            openat(fd, name.as_ptr(), O_DIRECTORY | O_RDONLY)
                        }
                    };
                    unsafe { close(fd) };
                    if next < 0 {
                        return Err(ActionError::Failed(format!("stopped at level {level}")));
                    }
                    fd = next;
                }
                unsafe { close(fd) };
                Ok(Outcome::success().var("Levels", count))
            }
            // Open one file `count` times and keep every descriptor.
            "descriptors" => {
                let p = config.require("path")?;
                std::fs::write(p, b"f").map_err(|e| ActionError::Failed(format!("{p}: {e}")))?;
                let mut held = Vec::new();
                for _ in 0..count {
                    match std::fs::File::open(p) {
                        Ok(f) => held.push(f),
                        Err(e) => {
                            return Err(ActionError::Failed(format!(
                                "opened {} descriptors, then: {e}",
                                held.len()
                            )));
                        }
                    }
                }
                // Keep them a while (`hold`, milliseconds), as a slow guest would.
                let hold: u64 = config.parse_or("hold", 0)?;
                std::thread::sleep(std::time::Duration::from_millis(hold));
                Ok(Outcome::success().var("Opened", held.len()))
            }
            // `count` bytes of log, in entries of 64 KiB.
            "logspam" => {
                let entry = "x".repeat(64 << 10);
                let mut sent = 0;
                while sent < count {
                    log::info(&entry);
                    sent += entry.len() as u64;
                }
                Ok(Outcome::success().var("Sent", sent))
            }
            // One output variable of `count` bytes.
            "variables" => Ok(Outcome::success().var("Huge", "v".repeat(count as usize))),
            // An error message of `count` bytes.
            "error" => Err(ActionError::Failed("e".repeat(count as usize))),
            // A sparse file of `count` bytes at `path`: no disk used, all of it to collect.
            "sparse" => {
                let p = config.require("path")?;
                let f = std::fs::File::create(p)
                    .map_err(|e| ActionError::Failed(format!("{p}: {e}")))?;
                f.set_len(count)
                    .map_err(|e| ActionError::Failed(format!("{p}: {e}")))?;
                Ok(Outcome::success())
            }
            // `count` empty files in the directory `path`.
            "files" => {
                let p = config.require("path")?;
                for i in 0..count {
                    std::fs::write(format!("{p}/f{i}"), b"")
                        .map_err(|e| ActionError::Failed(format!("{p}/f{i}: {e}")))?;
                }
                Ok(Outcome::success())
            }
            // Write `count` bytes of data at `path`, 1 MiB at a time (fills a small disk).
            "fill" => {
                use std::io::Write;
                let p = config.require("path")?;
                let mut f = std::fs::File::create(p)
                    .map_err(|e| ActionError::Failed(format!("{p}: {e}")))?;
                let chunk = vec![7u8; 1 << 20];
                let mut written = 0;
                while written < count {
                    f.write_all(&chunk).and_then(|_| f.flush()).map_err(|e| {
                        ActionError::Failed(format!("{p} after {written} bytes: {e}"))
                    })?;
                    written += chunk.len() as u64;
                }
                Ok(Outcome::success().var("Written", written))
            }
            other => Err(ActionError::Config(format!("unknown mode {other:?}"))),
        }
    }
}

export_action!(Hostile);
