//! `remora rollout start|pause|resume|promote|abort|status`: an operator's hands on the rollout engine
//! (control's `/v1/rollouts`).

use clap::{Args, Subcommand};
use remora_config::rollout::{RolloutStart, RolloutView};
use serde_json::Value;

use super::client::{decode, Control};
use super::{now_ms, out, pretty, render, Connection, Failure};

#[derive(Args, Debug)]
pub struct RolloutArgs {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    pub(super) connection: Connection,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Roll a new version of a node out as a canary: each step of `[rollout] steps` (or --steps) holds
    /// while its analysis passes, then the next; rolled back at once when checks fail.
    #[command(disable_version_flag = true)]
    Start {
        /// The node (as its proxies register it).
        node: String,
        /// The new version's name (a stats label: letters, digits, `-`, `_`, `.`).
        #[arg(long)]
        version: String,
        /// Where the new version listens, `HOST:PORT`; repeat for several.
        #[arg(long = "endpoint", value_name = "HOST:PORT", required = true)]
        endpoints: Vec<String>,
        /// The canary's share at each step, in percent, ending at 100 (`10,50,100`).
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<u32>>,
    },
    /// Hold the node's rollout on its step (analysis goes on; the deadline does not run).
    Pause { node: String },
    /// Go on with a paused rollout (its step starts over).
    Resume { node: String },
    /// Send all traffic to the canary now and make it the stable version.
    Promote { node: String },
    /// Roll back now: the canary's weight goes to 0 on every proxy.
    Abort { node: String },
    /// Show the node's latest rollout, or every node's.
    Status { node: Option<String> },
}

const ROLLOUT: &str = "a rollout (JSON)";
const ROLLOUTS: &str = "a list of rollouts (JSON)";

pub async fn run(control: &Control, args: RolloutArgs) -> Result<(), Failure> {
    let json = args.connection.json;
    let value = match args.action {
        Action::Start { node, version, endpoints, steps } => {
            let start = RolloutStart { node, version, endpoints, steps };
            let url = control.url(&["v1", "rollouts"], &[]);
            let body = serde_json::to_value(&start).unwrap_or(Value::Null);
            control.post_json(&url, &body, ROLLOUT).await?
        }
        Action::Pause { node } => act(control, &node, "pause").await?,
        Action::Resume { node } => act(control, &node, "resume").await?,
        Action::Promote { node } => act(control, &node, "promote").await?,
        Action::Abort { node } => act(control, &node, "abort").await?,
        Action::Status { node: Some(node) } => {
            let url = control.url(&["v1", "rollouts", &node], &[]);
            control.fetch_json(&url, ROLLOUT).await?
        }
        Action::Status { node: None } => {
            let url = control.url(&["v1", "rollouts"], &[]);
            let value = control.fetch_json(&url, ROLLOUTS).await?;
            if json {
                return out(&pretty(&value));
            }
            let rollouts: Vec<RolloutView> = decode(&url, ROLLOUTS, value)?;
            if rollouts.is_empty() {
                return out("no rollouts yet\n");
            }
            let text: Vec<String> =
                rollouts.iter().map(|rollout| render::rollout(rollout, now_ms())).collect();
            return out(&text.join("\n"));
        }
    };
    if json {
        return out(&pretty(&value));
    }
    let rollout: RolloutView = decode(control.base(), ROLLOUT, value)?;
    out(&render::rollout(&rollout, now_ms()))
}

async fn act(control: &Control, node: &str, action: &str) -> Result<Value, Failure> {
    let url = control.url(&["v1", "rollouts", node, action], &[]);
    Ok(control.post_json(&url, &Value::Object(Default::default()), ROLLOUT).await?)
}
