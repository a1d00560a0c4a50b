//! CPU time of a process (all its threads), from `/proc/<pid>/stat`, to report CPU per
//! transaction. Linux only; elsewhere the readings are `None` and the report leaves them out.

use std::time::Duration;

/// Clock ticks per second of the `utime`/`stime` fields. Linux fixes this user-visible unit
/// (`USER_HZ`) at 100 on every architecture Baton runs on, whatever the kernel's own tick rate.
const USER_HZ: u64 = 100;

/// User plus system CPU time consumed so far by the process `pid`, or by this process with `None`.
pub fn process_cpu(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat(&stat)
}

/// `utime + stime` of a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses
/// and may contain spaces, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name come state (field 3) ... utime (field 14) and stime (field 15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// CPU time consumed between two readings, if both exist.
pub fn delta(before: Option<Duration>, after: Option<Duration>) -> Option<Duration> {
    Some(after?.saturating_sub(before?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_the_name() {
        let line = "4242 (baton bench) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 6 0";
        assert_eq!(parse_stat(line), Some(Duration::from_millis(3000)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_reading_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu(None).is_some());
        }
    }
}
