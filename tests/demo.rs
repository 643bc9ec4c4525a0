//! README's first command, `remora demo`, runs the whole loop and exits 0 with `--once`: a degraded v1
//! healed by a regenerated v2, and a bad v3 rolled back at 10%.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_heals_the_node_and_rolls_the_bad_canary_back() {
    // Every process the demo starts inherits this, so leftovers can be found afterwards.
    let tag = format!("REMORA_DEMO_TEST={}-{:?}", std::process::id(), std::time::SystemTime::now());
    let run = tokio::process::Command::new(common::process::BINARY)
        .args(["demo", "--once", "--rate", "100", "--proxies", "2"])
        .env("REMORA_LOG", "error")
        .env("REMORA_DEMO_TEST", tag.trim_start_matches("REMORA_DEMO_TEST="))
        .kill_on_drop(true)
        .output();
    let output =
        common::within_for(Duration::from_secs(240), "remora demo --once", run).await.expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}\n{stdout}\n{stderr}", output.status);
    for expected in [
        "dashboard    http://127.0.0.1:",
        "degraded             v1: ",
        "remediating          hook http://",
        "remedy_did_not_help  still breaching",
        "regenerated          v2 on",
        "rollout_started      revision 1, v1 90% / v2 10%",
        "rollout_step         revision 2, v1 75% / v2 25%",
        "rollout_promoting",
        "healed               v2 serving",
        "retired              v1 retired",
        "1 of 1 checks failed at 10%",
        "time to detect",
        "time to canary",
        "time to recover",
        "first failed v3 answer → weight 0 applied by every proxy",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}\n{stderr}");
    }
    // Everything it started is gone (the regenerated v2 included, which is not the demo's child).
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let environ = std::fs::read(path.join("environ")).ok()?;
            let tagged = environ.split(|byte| *byte == 0).any(|variable| variable == tag.as_bytes());
            tagged.then(|| {
                String::from_utf8_lossy(&std::fs::read(path.join("cmdline")).unwrap_or_default())
                    .replace('\0', " ")
            })
        })
        .collect();
    assert!(leftovers.is_empty(), "left running: {leftovers:?}");
}
