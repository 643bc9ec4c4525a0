//! `remora events`: the journal's last entries (or those after a sequence number) from
//! `GET /v1/journal`, and with `--follow` the live stream from `GET /v1/journal/stream`, resumed with
//! `Last-Event-ID` after a dropped connection.
//!
//! The API pages forward only (`after=SEQ&limit=N`, oldest first) and has no "newest" query, so the
//! head of the journal is found by paging once and, past one page, by a galloping then binary search
//! with one-entry probes: a few dozen tiny requests for a journal of millions, not millions of entries.

use std::future::Future;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::CONTENT_TYPE;
use remora_config::control::JournalEntry;

use super::client::{cause, decode, Control, Error};
use super::sse::Parser;
use super::{out, pretty, render, Failure};

/// Entries per request while paging.
const PAGE: usize = 1000;
const DEFAULT_LAST: usize = 50;
/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`] while reconnects fail.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Control sends a keep-alive comment every 15 s: this much silence means the connection is gone.
const IDLE: Duration = Duration::from_secs(60);

const ENTRIES: &str = "a list of journal entries (JSON)";
const ENTRY: &str = "a journal entry (JSON) in each event's data";

pub struct Options {
    pub after: Option<u64>,
    pub limit: Option<usize>,
    pub follow: bool,
    pub json: bool,
}

/// One page: at most `limit` entries after `after`, oldest first.
async fn page(control: &Control, after: u64, limit: usize) -> Result<Vec<JournalEntry>, Error> {
    let (after, limit) = (after.to_string(), limit.to_string());
    let url = control.url(&["v1", "journal"], &[("after", &after), ("limit", &limit)]);
    let value = control.fetch_json(&url, ENTRIES).await?;
    decode(&url, ENTRIES, value)
}

/// The sequence number of the newest entry; `None` when the journal is empty.
pub async fn head(control: &Control) -> Result<Option<u64>, Error> {
    Ok(tail_or_head(control, 0).await?.1)
}

/// The last `count` entries and the head.
async fn tail_or_head(control: &Control, count: usize) -> Result<(Vec<JournalEntry>, Option<u64>), Error> {
    // The common case: the whole journal fits in one page.
    let first = page(control, 0, PAGE).await?;
    let Some(last) = first.last().map(|entry| entry.seq) else { return Ok((Vec::new(), None)) };
    if first.len() < PAGE {
        let skip = first.len().saturating_sub(count);
        return Ok((first.into_iter().skip(skip).collect(), Some(last)));
    }
    let head = search_head(last, |after| async move {
        Ok(page(control, after, 1).await?.first().map(|entry| entry.seq))
    })
    .await?;
    if count == 0 {
        return Ok((Vec::new(), Some(head)));
    }
    // Sequence numbers grow by one, so the last `count` are those after `head - count`.
    let entries = page(control, head.saturating_sub(count as u64), count).await?;
    Ok((entries, Some(head)))
}

/// The newest sequence number, given one that exists (`known`) and `first_after(seq)`, which answers
/// the first sequence number after `seq` if there is one. Gaps in the numbering do no harm.
async fn search_head<F, Fut>(mut known: u64, mut first_after: F) -> Result<u64, Error>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<Option<u64>, Error>>,
{
    // Gallop to a bound with nothing after it…
    let mut step = PAGE as u64;
    let mut bound = loop {
        let probe = known.saturating_add(step);
        match first_after(probe).await? {
            Some(seq) if seq > known => {
                known = seq;
                step = step.saturating_mul(2);
            }
            // Nothing after the probe (or an answer that is no progress, from a confused server).
            _ => break probe,
        }
    };
    // …then halve: `known` exists and nothing comes after `bound`.
    while known < bound {
        let middle = known + (bound - known) / 2;
        match first_after(middle).await? {
            Some(seq) if seq > middle && seq <= bound => known = seq,
            _ => bound = middle,
        }
    }
    Ok(known)
}

pub async fn run(control: &Control, options: Options) -> Result<(), Failure> {
    let printed = match options.after {
        None => {
            let (entries, head) = tail_or_head(control, options.limit.unwrap_or(DEFAULT_LAST)).await?;
            print_batch(&entries, &options)?;
            entries.last().map(|entry| entry.seq).or(head).unwrap_or(0)
        }
        // With --follow, the stream itself replays what comes after `after`.
        Some(after) if options.follow => {
            if !options.json {
                out(&render::journal_header())?;
            }
            after
        }
        Some(after) => {
            print_after(control, after, options.limit, options.json).await?;
            return Ok(());
        }
    };
    if options.follow {
        // A journal read just succeeded, unless --after skipped it: only then may the first connect
        // to the stream fail without ending the command.
        follow(control, printed, options.json, options.after.is_none()).await?;
    }
    Ok(())
}

fn print_batch(entries: &[JournalEntry], options: &Options) -> Result<(), Failure> {
    if options.json && options.follow {
        // One object per line, like the entries that follow.
        return out(&entries.iter().map(json_line).collect::<String>());
    }
    if options.json {
        // `JournalEntry` refuses unknown fields, so this is the API's JSON, re-indented.
        return out(&pretty(&serde_json::to_value(entries).unwrap_or_default()));
    }
    if entries.is_empty() && !options.follow {
        return out("the journal is empty\n");
    }
    let mut text = render::journal_header();
    text.extend(entries.iter().map(render::journal_line));
    out(&text)
}

fn json_line(entry: &JournalEntry) -> String {
    // Serializing an entry cannot fail (string keys, finite numbers).
    format!("{}\n", serde_json::to_string(entry).unwrap_or_default())
}

/// `--after SEQ` without `--follow`: page forward, printing as pages arrive (all of them in one JSON
/// array with `--json`).
async fn print_after(control: &Control, after: u64, limit: Option<usize>, json: bool) -> Result<(), Failure> {
    let mut next = after;
    let mut left = limit.unwrap_or(usize::MAX);
    let mut collected = Vec::new();
    let mut any = false;
    while left > 0 {
        let entries = page(control, next, left.min(PAGE)).await?;
        let full = entries.len() >= left.min(PAGE);
        left = left.saturating_sub(entries.len());
        match entries.last() {
            Some(last) if last.seq > next => next = last.seq,
            _ => break,
        }
        if json {
            collected.extend(entries);
        } else {
            if !any {
                out(&render::journal_header())?;
            }
            out(&entries.iter().map(render::journal_line).collect::<String>())?;
        }
        any = true;
        if !full {
            break;
        }
    }
    if json {
        return out(&pretty(&serde_json::to_value(&collected).unwrap_or_default()));
    }
    if !any {
        out(&format!("no journal entries after seq {after}\n"))?;
    }
    Ok(())
}

/// Errors worth another try: the network, or control failing for a moment. The others (a refused
/// token, a wrong answer) would fail the same way again.
fn transient(error: &Error) -> bool {
    match error {
        Error::Unreachable { .. } | Error::TimedOut { .. } | Error::Dropped { .. } => true,
        Error::Refused { status, .. } => status.is_server_error(),
        Error::Usage(_) | Error::Unauthorized { .. } | Error::NotFound { .. } | Error::Unexpected { .. } => {
            false
        }
    }
}

/// Prints entries after `last` as they arrive, until Ctrl-C.
async fn follow(control: &Control, mut last: u64, json: bool, mut reached: bool) -> Result<(), Failure> {
    let url = control.url(&["v1", "journal", "stream"], &[]);
    let mut parser = Parser::new();
    let mut backoff = FIRST_BACKOFF;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let resume = last.to_string();
        let connected = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            response = control.get(&url, "text/event-stream", Some(&resume)) => response,
        };
        let reason = match connected {
            Err(error) if reached && transient(&error) => match error {
                // The hint about `remora control` is for a first attempt, not for every retry.
                Error::Unreachable { control, reason } => {
                    format!("cannot reach control at {control}: {reason}")
                }
                other => other.to_string(),
            },
            Err(error) => return Err(error.into()),
            Ok(response) => {
                let content_type = response.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok());
                if !content_type.is_some_and(|value| value.starts_with("text/event-stream")) {
                    return Err(Error::Unexpected {
                        url,
                        expected: "an event stream (text/event-stream)",
                        detail: format!("the content type is {}", content_type.unwrap_or("missing")),
                    }
                    .into());
                }
                reached = true;
                parser.reset_connection();
                let mut body = response.into_body();
                loop {
                    let frame = tokio::select! {
                        _ = &mut ctrl_c => return Ok(()),
                        frame = tokio::time::timeout(IDLE, body.frame()) => frame,
                    };
                    let data = match frame {
                        Err(_) => break format!("no data from control for {}s", IDLE.as_secs()),
                        Ok(None) => break "control closed the event stream".to_owned(),
                        Ok(Some(Err(error))) => break format!("the event stream broke: {}", cause(&error)),
                        Ok(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => data,
                            Err(_) => continue,
                        },
                    };
                    let events = parser.feed(&data).map_err(|oversized| Error::Unexpected {
                        url: url.clone(),
                        expected: ENTRY,
                        detail: oversized.to_string(),
                    })?;
                    for event in events {
                        let entry: JournalEntry =
                            serde_json::from_str(&event.data).map_err(|error| Error::Unexpected {
                                url: url.clone(),
                                expected: ENTRY,
                                detail: format!("{error}"),
                            })?;
                        // After a reconnect, control may replay what was already printed.
                        if entry.seq <= last {
                            continue;
                        }
                        last = entry.seq;
                        backoff = parser.retry().unwrap_or(FIRST_BACKOFF);
                        if json {
                            out(&json_line(&entry))?;
                        } else {
                            out(&render::journal_line(&entry))?;
                        }
                    }
                }
            }
        };
        eprintln!("remora events: {reason}; reconnecting in {:.1}s…", backoff.as_secs_f64());
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::search_head;

    /// Runs the search over a journal holding `seqs`, counting the probes.
    fn head_of(seqs: &[u64]) -> (u64, usize) {
        let probes = RefCell::new(0);
        let search = search_head(seqs[0], |after| {
            *probes.borrow_mut() += 1;
            let next = seqs.iter().copied().find(|&seq| seq > after);
            async move { Ok(next) }
        });
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let head = runtime.block_on(search).unwrap();
        (head, probes.into_inner())
    }

    #[test]
    fn the_head_of_a_dense_journal() {
        for length in [1, 2, 999, 1000, 1001, 2048, 123_457] {
            let seqs: Vec<u64> = (1..=length).collect();
            assert_eq!(head_of(&seqs).0, length, "length {length}");
        }
        let seqs: Vec<u64> = (1..=2_000_000).collect();
        let (head, probes) = head_of(&seqs);
        assert_eq!(head, 2_000_000);
        assert!(probes < 50, "{probes} probes");
    }

    #[test]
    fn the_head_with_gaps_in_the_numbering() {
        assert_eq!(head_of(&[5, 6, 7, 3000, 3001, 9000]).0, 9000);
        assert_eq!(head_of(&[1, u64::MAX - 1]).0, u64::MAX - 1);
        assert_eq!(head_of(&[u64::MAX]).0, u64::MAX);
    }
}
