//! Named fail points for fault tests: places between "recorded" and "sent" where a test can make
//! the coordinator stop dead (then kill it with SIGKILL), or stall, so that a race a real load
//! hits rarely is hit every time.
//!
//! Set `BATON_FAILPOINTS` to a comma-separated list of point names, each alone (when the
//! coordinator reaches it, it logs a line and hangs forever: the test then kills the process) or
//! as `name=MS` (it pauses there for MS milliseconds, then goes on). Unset, a check is one load
//! of an already-initialized `OnceLock`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

/// After a 2PC commit decision is durable, before any `Commit` is sent.
pub const AFTER_COMMIT_DECISION: &str = "after_commit_decision";

/// After a new transaction is durable in the log, before its driver starts: the window in which
/// a `Start` whose caller gave up used to leave the transaction undriven.
pub const AFTER_CREATE: &str = "after_create";

/// What an armed point does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Armed {
    Hang,
    Pause(Duration),
}

fn parse(spec: &str) -> HashMap<String, Armed> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|s| match s.split_once('=') {
            None => Some((s.to_string(), Armed::Hang)),
            Some((name, ms)) => match ms.trim().parse::<u64>() {
                Ok(ms) => Some((
                    name.trim().to_string(),
                    Armed::Pause(Duration::from_millis(ms)),
                )),
                Err(_) => {
                    tracing::warn!(
                        failpoint = s,
                        "BATON_FAILPOINTS: not NAME or NAME=MS; ignored"
                    );
                    None
                }
            },
        })
        .collect()
}

fn armed() -> &'static HashMap<String, Armed> {
    static ARMED: OnceLock<HashMap<String, Armed>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var("BATON_FAILPOINTS").unwrap_or_default()))
}

/// Hangs forever, or pauses, if `name` is armed.
pub async fn hit(name: &str) {
    match armed().get(name) {
        None => {}
        Some(Armed::Hang) => {
            tracing::warn!(failpoint = name, "fail point reached; hanging until killed");
            std::future::pending::<()>().await;
        }
        Some(Armed::Pause(pause)) => tokio::time::sleep(*pause).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_alone_hang_and_names_with_millis_pause() {
        let armed = parse(" after_commit_decision , after_create=25,bad=x,");
        assert_eq!(armed.get(AFTER_COMMIT_DECISION), Some(&Armed::Hang));
        assert_eq!(
            armed.get(AFTER_CREATE),
            Some(&Armed::Pause(Duration::from_millis(25)))
        );
        assert_eq!(armed.len(), 2, "{armed:?}");
    }
}
