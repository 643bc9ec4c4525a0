//! `remora demo-hook regenerate|retire --dir DIR`: the demo's hooks, run by control as commands. They
//! read control's JSON document on stdin. `regenerate` starts the next version of the demo service
//! (healthy: the "fixed" code) and answers `{"version": …, "endpoints": […]}`; `retire` stops a version.
//! Each started service's pid is kept in `DIR/VERSION.pid`, so that the demo stops them all at the end.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use serde_json::{json, Value};

#[derive(clap::Subcommand, Debug, Clone, Copy)]
pub enum Kind {
    /// Start the next version of the demo service and answer where it listens.
    Regenerate,
    /// Stop the version named in the input.
    Retire,
}

pub fn run(kind: Kind, dir: &Path) -> ExitCode {
    match hook(kind, dir) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("demo-hook: {error}");
            ExitCode::FAILURE
        }
    }
}

fn hook(kind: Kind, dir: &Path) -> Result<Value, String> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).map_err(|error| format!("cannot read stdin: {error}"))?;
    let input: Value =
        serde_json::from_str(&input).map_err(|error| format!("the input is not JSON: {error}"))?;
    let version = input.get("version").and_then(Value::as_str).ok_or("the input names no version")?;
    match kind {
        Kind::Regenerate => regenerate(dir, version, &input),
        Kind::Retire => retire(dir, version),
    }
}

/// `v1` → `v2`; anything else gets `-fixed`.
pub fn next_version(version: &str) -> String {
    match version.strip_prefix('v').and_then(|number| number.parse::<u32>().ok()) {
        Some(number) => format!("v{}", number + 1),
        None => format!("{version}-fixed"),
    }
}

fn regenerate(dir: &Path, version: &str, input: &Value) -> Result<Value, String> {
    let next = next_version(version);
    let exe = std::env::current_exe().map_err(|error| format!("cannot find this binary: {error}"))?;
    let log = std::fs::File::create(dir.join(format!("{next}.log"))).map_err(|error| error.to_string())?;
    // stdout is read for the address and then closed; stderr goes to a file, so that nothing of the
    // service keeps control's pipes open once this hook has answered.
    let mut child = Command::new(exe)
        .args(["demo-service", "--label", &next])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|error| format!("cannot start {next}: {error}"))?;
    std::fs::write(pid_file(dir, &next), child.id().to_string()).map_err(|error| error.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(|error| error.to_string())?;
    let address = line
        .trim()
        .strip_prefix("listening on http://")
        .ok_or_else(|| format!("{next} did not start: {line:?}"))?
        .to_owned();
    Ok(json!({
        "version": next,
        "endpoints": [address],
        "note": format!("rebuilt from {version} against: {}", input.get("constraints").unwrap_or(&Value::Null)),
    }))
}

fn retire(dir: &Path, version: &str) -> Result<Value, String> {
    let pid = read_pid(&pid_file(dir, version)).ok_or_else(|| format!("no pid kept for {version}"))?;
    stop(pid);
    let _ = std::fs::remove_file(pid_file(dir, version));
    Ok(json!({ "retired": version, "pid": pid }))
}

pub fn pid_file(dir: &Path, version: &str) -> PathBuf {
    dir.join(format!("{version}.pid"))
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// SIGTERM (the demo service stops at once).
pub fn stop(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_count_up() {
        assert_eq!(super::next_version("v1"), "v2");
        assert_eq!(super::next_version("v41"), "v42");
        assert_eq!(super::next_version("blue"), "blue-fixed");
    }
}
