//! The `remora` command line: parses the subcommand and calls into the crates.
#![forbid(unsafe_code)]

mod cli;
mod demo;
mod init;
mod inject;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use remora_config::{LoadError, Source};

/// Remora: a self-healing service mesh.
#[derive(Parser)]
#[command(name = "remora", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Proxy {
        /// The proxy configuration (TOML); `REMORA_<SECTION>__<KEY>` variables override it.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Take the listening sockets over from the proxy running with the same
        /// `[runtime] handover_socket`; it then drains and exits (zero-downtime restart).
        #[arg(long)]
        upgrade: bool,
    },
    /// Run the control process: the event/node map, reports, desired state and the journal.
    Control {
        /// The control configuration (TOML); `REMORA_<SECTION>__<KEY>` variables override it. The
        /// API token comes from `token_file` or `REMORA_CONTROL_TOKEN`.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration: print every error with its path and exit 2, or a summary and exit 0.
    Check {
        /// The configuration file to validate.
        file: PathBuf,
        /// The file is a control process configuration (`remora control --config`), not a proxy's.
        #[arg(long)]
        control: bool,
    },
    /// The self-healing loop on 127.0.0.1, no set-up: control, a demo service and a proxy; the
    /// service degrades, is healed by a regenerated version, and a bad canary is rolled back.
    Demo(demo::DemoArgs),
    /// The demo's backend service (started by `remora demo`), with fault knobs.
    #[command(hide = true)]
    DemoService {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// The version this instance reports (`x-demo-version`).
        #[arg(long, default_value = "v1")]
        label: String,
        /// Share of requests answered 500, 0..=1 (also settable at run time: POST /admin/fault).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Latency added to every request, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// The demo's hooks (run by control as commands in `remora demo`).
    #[command(hide = true)]
    DemoHook {
        #[command(subcommand)]
        kind: demo::hook::Kind,
        /// Where the started services' pid files are kept.
        #[arg(long, global = true, default_value = ".")]
        dir: PathBuf,
    },
    /// Summarize the mesh from control: reachability, nodes by status, journal head, the nodes table.
    Status(cli::StatusArgs),
    /// List the nodes control knows (or one in detail: `remora nodes NAME`).
    Nodes(cli::NodesArgs),
    /// Show the event/node map: each event type, its producers and consumers (`--dot` for Graphviz).
    Map(cli::MapArgs),
    /// Show control's journal (the last 50 entries by default); `--follow` streams new ones.
    Events(cli::EventsArgs),
    /// Roll a new version of a node out as a canary, or pause, resume, promote, abort or show one.
    Rollout(cli::RolloutArgs),
    /// Try a held node's healing again (after mending its hook, say): if it still breaches, the
    /// ladder climbs again from the next analysis interval.
    Heal(cli::HealArgs),
    /// Add the remora init container and proxy sidecar to the pods of Kubernetes YAML (stdout).
    Inject(inject::InjectArgs),
    /// Set up the pod's network for the sidecar (the init container): iptables rules that send its
    /// TCP through the proxy's inbound and outbound listeners; `--cleanup` removes them.
    Init(init::InitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Proxy { config, upgrade } => proxy(&config, upgrade),
        Command::Check { file, control } => check(&file, control),
        Command::Control { config } => control(&config),
        Command::Demo(args) => demo::run(args),
        Command::DemoService { listen, label, error_rate, latency_ms } => {
            demo::service::run(listen, label, demo::service::Faults { error_rate, latency_ms, ramp_ms: 0 })
        }
        Command::DemoHook { kind, dir } => demo::hook::run(kind, &dir),
        Command::Status(args) => cli::status(args),
        Command::Nodes(args) => cli::nodes(args),
        Command::Map(args) => cli::map(args),
        Command::Events(args) => cli::events(args),
        Command::Rollout(args) => cli::rollout(args),
        Command::Heal(args) => cli::heal(args),
        Command::Inject(args) => inject::run(args),
        Command::Init(args) => init::run(args),
    }
}

/// Logs go to stderr, filtered by `REMORA_LOG` (or `RUST_LOG`), `info` by default. The access log
/// (`[stats] access_log = true`) goes to stdout as JSON lines, whatever the log filter says.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{filter, fmt, EnvFilter, Layer};

    const ACCESS: &str = "remora::access";
    let directives = std::env::var("REMORA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    // Both filters decide per call site once (static interest, with a level hint): a filter that looks
    // at every event and span dynamically (`filter_fn`) makes the disabled spans of h2 and hyper cost
    // microseconds per request.
    let env = EnvFilter::new(directives);
    let env = match format!("{ACCESS}=off").parse() {
        Ok(directive) => env.add_directive(directive),
        Err(_) => env,
    };
    let logs = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(env);
    let access = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_writer(std::io::stdout)
        .with_filter(filter::Targets::new().with_target(ACCESS, tracing::Level::INFO));
    tracing_subscriber::registry().with(logs).with(access).init();
}

fn check(file: &Path, control: bool) -> ExitCode {
    let summary = if control {
        remora_config::load_control_file(file, Source::WithEnv).map(|config| config.summary())
    } else {
        remora_config::load_file(file, Source::WithEnv).map(|config| config.summary())
    };
    match summary {
        Ok(summary) => {
            println!("{}: ok: {summary}", file.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            report_load_error(file, &error);
            ExitCode::from(2)
        }
    }
}

fn report_load_error(file: &Path, error: &LoadError) {
    let errors = error.errors();
    for line in &errors {
        eprintln!("{line}");
    }
    if let LoadError::Invalid(_) = error {
        let count = errors.len();
        eprintln!("{}: {count} error{}", file.display(), if count == 1 { "" } else { "s" });
    }
}

fn proxy(file: &Path, upgrade: bool) -> ExitCode {
    let config = match remora_config::load_file(file, Source::WithEnv) {
        Ok(config) => config,
        Err(error) => {
            report_load_error(file, &error);
            return ExitCode::from(2);
        }
    };
    let workers = remora_proxy::worker_threads(config.runtime.workers);
    // One worker: a current-thread runtime, which skips the work-stealing scheduler's cross-thread
    // bookkeeping (measured in benches/README.md).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("remora proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let summary = config.summary();
    let result = runtime.block_on(async {
        let shutdown = remora_proxy::shutdown_signal();
        let options = remora_proxy::Options { config_path: Some(file.to_owned()), upgrade };
        remora_proxy::run(config, options, shutdown, |bound| {
            let mut out = std::io::stdout().lock();
            for (name, addr) in &bound.listeners {
                let _ = writeln!(out, "listener {name} on http://{addr}");
            }
            let _ = writeln!(out, "admin on http://{}", bound.admin);
            let _ = writeln!(out, "ready: {summary}");
            let _ = out.flush();
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("remora proxy: {error}");
            ExitCode::FAILURE
        }
    }
}

fn control(file: &Path) -> ExitCode {
    let config = match remora_config::load_control_file(file, Source::WithEnv) {
        Ok(config) => config,
        Err(error) => {
            report_load_error(file, &error);
            return ExitCode::from(2);
        }
    };
    let token = match config.token() {
        Ok(token) => token.map(|token| token.into_string()),
        Err(error) => {
            eprintln!("remora control: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("remora control: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let store = config.store.to_string();
    let result = runtime.block_on(async {
        let shutdown = remora_proxy::shutdown_signal();
        // SIGHUP (a unit's reload, a closed terminal) must not end control: it reads its file at start.
        if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::warn!("SIGHUP ignored: control reads its configuration at start; restart it to apply a change");
                }
            });
        }
        remora_control::run(config, token, shutdown, |addr| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "control on http://{addr}");
            let _ = writeln!(out, "ready: store {store}");
            let _ = out.flush();
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("remora control: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
