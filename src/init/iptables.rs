//! Running iptables: `iptables-save -t nat` to read what is there, `iptables-restore --noflush` to
//! apply a whole rule set in one transaction (and the `ip6tables-` pair for IPv6). Works the same
//! with the nf_tables backend (Debian's default `iptables-nft`) and the legacy one: both take the same
//! restore input, and both flush a declared user chain under `--noflush`.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use super::rules::Family;

/// Why an iptables command did not do its job.
#[derive(Debug)]
pub enum Error {
    /// The program is not on PATH.
    NotFound { program: &'static str },
    /// It ran and failed; `message` is the first line it wrote on stderr (e.g. permission denied).
    Failed { program: &'static str, status: ExitStatus, message: String },
    /// It could not be started or talked to.
    Io { program: &'static str, error: std::io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound { program } => {
                write!(f, "{program} not found on PATH (install the iptables package)")
            }
            Error::Failed { program, status, message } => write!(f, "{program} failed ({status}): {message}"),
            Error::Io { program, error } => write!(f, "cannot run {program}: {error}"),
        }
    }
}

/// `iptables-save -t nat` (or ip6tables-save): the nat table as restore input.
pub fn save_nat(family: Family) -> Result<String, Error> {
    let program = family.save_program();
    let output = Command::new(program)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| spawn_error(program, error))?;
    if !output.status.success() {
        return Err(failed(program, output.status, &output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `iptables-restore --noflush` (or ip6tables-restore) with `input` on stdin: all of it or nothing.
pub fn restore(family: Family, input: &str) -> Result<(), Error> {
    let program = family.restore_program();
    let mut child = Command::new(program)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| spawn_error(program, error))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error (it exited early) shows in its status and stderr below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(|error| Error::Io { program, error })?;
    if !output.status.success() {
        return Err(failed(program, output.status, &output.stderr));
    }
    Ok(())
}

/// Where `program` is on PATH, if it is.
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

fn spawn_error(program: &'static str, error: std::io::Error) -> Error {
    match error.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { program },
        _ => Error::Io { program, error },
    }
}

fn failed(program: &'static str, status: ExitStatus, stderr: &[u8]) -> Error {
    let stderr = String::from_utf8_lossy(stderr);
    let message = stderr.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("no message");
    Error::Failed { program, status, message: message.to_owned() }
}
