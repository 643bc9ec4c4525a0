//! The control client commands: `remora status`, `nodes`, `map`, `events` and `rollout`. Each reads the control
//! API (`/v1/...`, see control's `server.rs`) over HTTP/1.1 with hyper-util's client on a current-thread
//! runtime, and prints a table for people or, with `--json`, the API's JSON for scripts. Any failure
//! is one clear line on stderr and exit code 1.

pub(crate) mod client;
mod events;
pub(crate) mod render;
mod rollout;
mod sse;

pub use rollout::RolloutArgs;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use remora_config::control::NodeView;

use client::{decode, Control, Error};

/// Where control is and how to talk to it; shared by every client command.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The control API's base URL.
    #[arg(
        long = "control",
        value_name = "URL",
        global = true,
        env = "REMORA_CONTROL_URL",
        default_value = "http://127.0.0.1:9900"
    )]
    control: String,
    /// The API token (sent as `Authorization: Bearer TOKEN`).
    #[arg(long, value_name = "TOKEN", env = "REMORA_CONTROL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Read the API token from this file (surrounding whitespace is ignored); it takes precedence over
    /// --token and REMORA_CONTROL_TOKEN.
    #[arg(long, value_name = "PATH", global = true)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON as it is (pretty), for scripts.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub struct NodesArgs {
    /// Show this node in detail instead of the table.
    name: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub struct HealArgs {
    /// The held node.
    node: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub struct MapArgs {
    /// Print the map as Graphviz dot (`remora map --dot | dot -Tsvg > map.svg`).
    #[arg(long, conflicts_with = "json")]
    dot: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Show the entries after this sequence number (all of them, unless --limit is given) instead of
    /// the last ones.
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
    /// How many entries to show: the last N (default 50), or the first N after --after.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Keep printing new entries as they happen, until Ctrl-C; reconnects (resuming where it left off)
    /// when the connection drops. With --json, one JSON object per line.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    connection: Connection,
}

pub fn status(args: StatusArgs) -> ExitCode {
    run(
        "status",
        &args.connection,
        |control| async move { status_command(&control, args.connection.json).await },
    )
}

pub fn nodes(args: NodesArgs) -> ExitCode {
    run("nodes", &args.connection, |control| async move {
        nodes_command(&control, args.name.as_deref(), args.connection.json).await
    })
}

pub fn map(args: MapArgs) -> ExitCode {
    run("map", &args.connection, |control| async move {
        map_command(&control, args.dot, args.connection.json).await
    })
}

pub fn events(args: EventsArgs) -> ExitCode {
    let options = events::Options {
        after: args.after,
        limit: args.limit,
        follow: args.follow,
        json: args.connection.json,
    };
    run("events", &args.connection, |control| async move { events::run(&control, options).await })
}

pub fn heal(args: HealArgs) -> ExitCode {
    run("heal", &args.connection, |control| async move {
        let url = control.url(&["v1", "nodes", &args.node, "healing", "retry"], &[]);
        let value = control.post_json(&url, &serde_json::json!({}), "the node's healing (JSON)").await?;
        if args.connection.json {
            return out(&pretty(&value));
        }
        out(&format!(
            "{}: retrying: if it still breaches, the next analysis interval finds it degraded and the \
             ladder climbs again\n",
            args.node
        ))
    })
}

pub fn rollout(args: RolloutArgs) -> ExitCode {
    let connection = args.connection.clone();
    run("rollout", &connection, |control| async move { rollout::run(&control, args).await })
}

/// Why a command stopped early: the API failed it, or stdout went away.
#[derive(Debug)]
enum Failure {
    Api(Error),
    /// Writing the output failed (a closed pipe is not a failure: see [`out`]).
    Output(std::io::Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Api(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Self::Output(error)
    }
}

/// Reads the token, builds the client inside a current-thread runtime, runs `command`, and turns its
/// outcome into the exit code.
fn run<F, Fut>(name: &str, connection: &Connection, command: F) -> ExitCode
where
    F: FnOnce(Control) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("remora {name}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let token = token(connection)?;
        let control = Control::new(&connection.control, token)?;
        command(control).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read our output stopped (`remora events | head`): that is how it ends.
        Err(Failure::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(error)) => {
            eprintln!("remora {name}: cannot write the output: {error}");
            ExitCode::FAILURE
        }
        Err(Failure::Api(error)) => {
            eprintln!("remora {name}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `--token-file` first, then `--token` / `REMORA_CONTROL_TOKEN`; none at all is allowed (control
/// answers 401, and the message says how to give one).
fn token(connection: &Connection) -> Result<Option<String>, Error> {
    let Some(path) = &connection.token_file else {
        return Ok(connection.token.clone().filter(|token| !token.trim().is_empty()));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| Error::Usage(format!("cannot read the token file {}: {error}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Usage(format!("the token file {} is empty", path.display())));
    }
    Ok(Some(token.to_owned()))
}

/// Writes to stdout and flushes (so `--follow` output shows at once, even into a pipe).
fn out(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn pretty(value: &serde_json::Value) -> String {
    // Serializing a Value to a String cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

const NODES: &str = "a list of nodes (JSON)";
const NODE: &str = "a node (JSON)";

async fn fetch_nodes(control: &Control) -> Result<(String, serde_json::Value), Error> {
    let url = control.url(&["v1", "nodes"], &[]);
    let value = control.fetch_json(&url, NODES).await?;
    Ok((url, value))
}

async fn status_command(control: &Control, json: bool) -> Result<(), Failure> {
    let (url, value) = fetch_nodes(control).await?;
    let nodes: Vec<NodeView> = decode(&url, NODES, value.clone())?;
    let head = events::head(control).await?;
    if json {
        let summary = serde_json::json!({ "control": control.base(), "journal_head": head, "nodes": value });
        return out(&pretty(&summary));
    }
    let mut text = render::status_summary(control.base(), &nodes, head);
    if !nodes.is_empty() {
        text.push('\n');
        text.push_str(&render::nodes_table(&nodes, now_ms()));
    }
    out(&text)
}

async fn nodes_command(control: &Control, name: Option<&str>, json: bool) -> Result<(), Failure> {
    match name {
        None => {
            let (url, value) = fetch_nodes(control).await?;
            if json {
                return out(&pretty(&value));
            }
            let nodes: Vec<NodeView> = decode(&url, NODES, value)?;
            out(&render::nodes_table(&nodes, now_ms()))
        }
        Some(name) => {
            let url = control.url(&["v1", "nodes", name], &[]);
            let value = control.fetch_json(&url, NODE).await?;
            if json {
                return out(&pretty(&value));
            }
            let node: NodeView = decode(&url, NODE, value)?;
            out(&render::node_details(&node, now_ms()))
        }
    }
}

async fn map_command(control: &Control, dot: bool, json: bool) -> Result<(), Failure> {
    const MAP: &str = "the event/node map (JSON with nodes, events and edges)";
    if dot {
        let url = control.url(&["v1", "map"], &[("format", "dot")]);
        let body = control.fetch(&url, "text/vnd.graphviz").await?;
        let text = String::from_utf8(body.to_vec()).map_err(|_| Error::Unexpected {
            url: url.clone(),
            expected: "Graphviz dot text",
            detail: "the body is not UTF-8".to_owned(),
        })?;
        let start = text.trim_start();
        if !["digraph", "graph", "strict"].iter().any(|keyword| start.starts_with(keyword)) {
            let first = text.lines().next().unwrap_or_default().chars().take(80).collect::<String>();
            return Err(Error::Unexpected {
                url,
                expected: "Graphviz dot text (`digraph …`)",
                detail: format!("it starts with {first:?}"),
            }
            .into());
        }
        return out(&text);
    }
    let url = control.url(&["v1", "map"], &[]);
    let value = control.fetch_json(&url, MAP).await?;
    if json {
        return out(&pretty(&value));
    }
    let map: render::MapView = decode(&url, MAP, value)?;
    out(&render::map_text(&map))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;

    use super::{token, Connection};

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        connection: Connection,
    }

    fn connection(args: &[&str]) -> Connection {
        Probe::try_parse_from(std::iter::once("probe").chain(args.iter().copied()))
            .expect("parses")
            .connection
    }

    #[test]
    fn the_token_file_wins_and_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("remora-cli-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        let file_arg = file.to_string_lossy().into_owned();
        let chosen = token(&connection(&["--token", "other", "--token-file", &file_arg])).unwrap();
        assert_eq!(chosen.as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        let error = token(&connection(&["--token-file", &file_arg])).unwrap_err();
        assert_eq!(error.to_string(), format!("the token file {} is empty", file.display()));
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = PathBuf::from("/nonexistent/remora-token");
        let error = token(&connection(&["--token-file", "/nonexistent/remora-token"])).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!("cannot read the token file {}: ", missing.display())),
            "{error}"
        );
    }

    #[test]
    fn a_blank_token_counts_as_none() {
        assert_eq!(token(&connection(&["--token", " "])).unwrap(), None);
        assert_eq!(token(&connection(&["--token", "t"])).unwrap().as_deref(), Some("t"));
    }
}
