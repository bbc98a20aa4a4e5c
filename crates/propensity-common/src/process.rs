//! A run started by the daemon stops when the daemon is gone.

use std::time::Duration;

/// Set by the daemon on every `propensity run` child it starts: the daemon's pid.
pub const PARENT_ENV: &str = "PROPENSITY_DAEMON_PID";

/// In a `propensity run` started by a daemon: stops the process within a second of the
/// daemon's end (a `kill -9` of the daemon leaves no orphan run). Does nothing when
/// [`PARENT_ENV`] is not set.
pub fn watch_parent() {
    let Some(pid) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return;
    };
    std::thread::spawn(move || {
        loop {
            if std::os::unix::process::parent_id() != pid {
                eprintln!("error: the daemon that started this run (pid {pid}) is gone; stopping");
                std::process::exit(75);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}
