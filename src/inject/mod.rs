//! `remora inject`: Kubernetes sidecar injection, offline. Reads YAML (a file or stdin, any number of
//! documents) and writes the same documents, with every pod template given the `remora-init` init
//! container (iptables redirection through `remora init`), the `remora-proxy` sidecar and its
//! config volume. This is how a workload joins the mesh in sidecar mode; the proxy it adds then runs
//! the `inbound`/`outbound` listeners of its ConfigMap's `remora.toml`.
//!
//! Only workloads change: every other document, and every workload that opts out
//! (`remora.io/inject: disabled`), goes out byte for byte. An injected workload is rewritten from its
//! parsed value: its keys keep their order and unknown fields stay, but comments inside it are lost
//! (the comment lines heading the document are kept). Injection is idempotent: the remora containers
//! and volume of an injected input are replaced where they are, so a second run gives the same bytes.
//!
//! YAML library: `yaml_serde`, the YAML organisation's maintained continuation of `serde_yaml`
//! (archived in 2024). It keeps mappings in their written order (an `IndexMap` behind its `Value`),
//! and parses what Kubernetes YAML holds. It writes YAML 1.2, though, where Kubernetes reads 1.1 (a
//! bare `yes` is a boolean there), so injected documents are written by [`emit`]. The other forks (`serde_yaml_ng`, `serde_norway`) have had no release since
//! 2024; `saphyr`/`yaml-rust2` would need our own order-keeping value type; no maintained crate
//! edits YAML losslessly with comments yet, so comments survive by passing untouched documents
//! through as text instead (see [`stream`]).

mod containers;
mod emit;
mod pod;
mod stream;

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

pub use pod::Outcome;

/// The crate's version: the default image's tag and the `remora.io/injected` mark.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const DEFAULT_IMAGE: &str = concat!("ghcr.io/remora-mesh/remora:", env!("CARGO_PKG_VERSION"));

/// `remora inject [FILE] [--image ...]`.
#[derive(Args, Debug)]
pub struct InjectArgs {
    /// The Kubernetes YAML to inject (any number of documents); `-` reads stdin.
    #[arg(default_value = "-", value_name = "FILE")]
    file: PathBuf,
    /// The image of both added containers (it runs `remora init` and `remora proxy`).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: String,
    /// The UID the proxy runs as; the init container's rules never redirect this UID's traffic.
    #[arg(long, default_value_t = 2102)]
    proxy_uid: u32,
    /// The port of the proxy's `inbound` listener, where connections to the pod are redirected.
    #[arg(long, default_value_t = 4143)]
    inbound_port: u16,
    /// The port of the proxy's `outbound` listener, where the pod's own connections are redirected.
    #[arg(long, default_value_t = 4140)]
    outbound_port: u16,
    /// The proxy's admin port (probes, /metrics); never redirected.
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// The ConfigMap holding the proxy's `remora.toml`, mounted at /etc/remora.
    #[arg(long, default_value = "remora-proxy", value_name = "NAME")]
    config_map: String,
}

/// What goes into every injected pod. [`Options::default`] gives the `remora inject` defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `ghcr.io/remora-mesh/remora:VERSION`.
    pub image: String,
    /// 2102, the `remora` user of the image (deploy/Dockerfile).
    pub proxy_uid: u32,
    /// 4143.
    pub inbound_port: u16,
    /// 4140.
    pub outbound_port: u16,
    /// 9901.
    pub admin_port: u16,
    /// `remora-proxy`.
    pub config_map: String,
    /// The value of the `remora.io/injected` mark: this crate's version.
    pub version: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            image: DEFAULT_IMAGE.to_owned(),
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 9901,
            config_map: "remora-proxy".to_owned(),
            version: VERSION.to_owned(),
        }
    }
}

/// What happened to one document of the input (documents of comments only are not counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// From 1.
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub outcome: Outcome,
}

/// `kind/name` in lower case as `kubectl` prints it, or `document N` when the document has no kind.
struct Object<'a> {
    document: usize,
    kind: Option<&'a str>,
    name: Option<&'a str>,
}

impl fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(kind) => write!(f, "{}/{}", kind.to_lowercase(), self.name.unwrap_or("(unnamed)")),
            None => write!(f, "document {}", self.document),
        }
    }
}

impl Summary {
    fn object(&self) -> Object<'_> {
        Object { document: self.document, kind: self.kind.as_deref(), name: self.name.as_deref() }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = self.object();
        match self.outcome {
            Outcome::Injected => write!(f, "injected {object}"),
            Outcome::NotAWorkload => write!(f, "skipped {object} (not a workload)"),
            Outcome::Disabled => write!(f, "skipped {object} ({}: disabled)", pod::INJECT),
            Outcome::HostNetwork => {
                write!(f, "skipped {object} (hostNetwork: the init rules would change the node's network)")
            }
        }
    }
}

/// Why nothing was written. Every variant names the document (from 1, comment-only ones not
/// counted) and, once known, the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not YAML; `message` has the line and column in the input.
    Yaml { document: usize, message: String },
    /// A `remora.io/*` annotation with a value it cannot have.
    Annotation { document: usize, object: String, annotation: &'static str, value: String, reason: String },
    /// A workload without the fields its kind has (no pod template, containers not a list, …).
    Shape { document: usize, object: String, path: String, reason: &'static str },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Yaml { document, message } => write!(f, "document {document}: invalid YAML: {message}"),
            Error::Annotation { document, object, annotation, value, reason } => {
                write!(f, "document {document} ({object}): annotation {annotation}: {value:?}: {reason}")
            }
            Error::Shape { document, object, path, reason } => {
                write!(f, "document {document} ({object}): {path} {reason}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Injects every workload of the YAML stream `input`: the output stream, and what became of each
/// document. Nothing is returned on an error, so a bad document never yields a half-injected stream.
pub fn inject(input: &str, options: &Options) -> Result<(String, Vec<Summary>), Error> {
    let mut output = String::with_capacity(input.len() * 2 + 4096);
    let mut summaries = Vec::new();
    for document in stream::split(input) {
        let number = summaries.len() + 1;
        let mut value =
            document.parse().map_err(|error| Error::Yaml { document: number, message: error.to_string() })?;
        if value.is_null() {
            output.push_str(document.text);
            continue;
        }
        let (kind, name) = pod::identity(&value);
        let object = || Object { document: number, kind: kind.as_deref(), name: name.as_deref() }.to_string();
        let outcome = pod::inject(&mut value, options).map_err(|problem| match problem {
            pod::Problem::Annotation { annotation, value, reason } => {
                Error::Annotation { document: number, object: object(), annotation, value, reason }
            }
            pod::Problem::Shape { path, reason } => {
                Error::Shape { document: number, object: object(), path, reason }
            }
        })?;
        match outcome {
            Outcome::Injected => {
                let text = match emit::document(&value) {
                    Some(text) => text,
                    None => yaml_serde::to_string(&value)
                        .map_err(|error| Error::Yaml { document: number, message: error.to_string() })?,
                };
                if document.has_marker() {
                    output.push_str("---\n");
                }
                output.push_str(document.head());
                output.push_str(&text);
            }
            Outcome::NotAWorkload | Outcome::Disabled | Outcome::HostNetwork => {
                output.push_str(document.text)
            }
        }
        summaries.push(Summary { document: number, kind, name, outcome });
    }
    Ok((output, summaries))
}

/// The command: the injected stream on stdout, one summary line on stderr; exit 2 when the input
/// cannot be read or injected (nothing is written to stdout then).
pub fn run(args: InjectArgs) -> ExitCode {
    let options = Options {
        image: args.image,
        proxy_uid: args.proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        config_map: args.config_map,
        version: VERSION.to_owned(),
    };
    let from_stdin = args.file.as_os_str() == "-";
    let source = if from_stdin { "stdin".to_owned() } else { args.file.display().to_string() };
    let mut input = String::new();
    let read = if from_stdin {
        std::io::stdin().read_to_string(&mut input).map(drop)
    } else {
        std::fs::read_to_string(&args.file).map(|text| input = text)
    };
    if let Err(error) = read {
        eprintln!("remora inject: cannot read {source}: {error}");
        return ExitCode::from(2);
    }
    match inject(&input, &options) {
        Ok((output, summaries)) => {
            let mut stdout = std::io::stdout().lock();
            if let Err(error) = stdout.write_all(output.as_bytes()).and_then(|()| stdout.flush()) {
                eprintln!("remora inject: cannot write the output: {error}");
                return ExitCode::FAILURE;
            }
            let summary: Vec<String> = summaries.iter().map(Summary::to_string).collect();
            if summary.is_empty() {
                eprintln!("remora inject: no documents in {source}");
            } else {
                eprintln!("{}", summary.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("remora inject: {source}: {error}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests;
