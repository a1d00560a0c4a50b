//! Named fail points for fault tests: places between "recorded" and "sent" where a test can make
//! the coordinator stop dead, then kill it with SIGKILL.
//!
//! Set `BATON_FAILPOINTS` to a comma-separated list of point names; when the driver reaches one
//! it logs a line and hangs forever (the whole process is then killed by the test). Unset, a
//! check is one load of an already-initialized `OnceLock`.

use std::collections::HashSet;
use std::sync::OnceLock;

/// After a 2PC commit decision is durable, before any `Commit` is sent.
pub const AFTER_COMMIT_DECISION: &str = "after_commit_decision";

fn armed() -> &'static HashSet<String> {
    static ARMED: OnceLock<HashSet<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("BATON_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// Hangs forever if `name` is armed.
pub async fn hit(name: &str) {
    if armed().contains(name) {
        tracing::warn!(failpoint = name, "fail point reached; hanging until killed");
        std::future::pending::<()>().await;
    }
}
