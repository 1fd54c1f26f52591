//! The services' output of one test, kept where it outlives the processes, so a test that fails
//! or runs past its limit can print what every service said.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

/// Lines of each service's output a failure report shows (`TEST_LOG_LINES` overrides).
const TAIL_LINES: usize = 150;

/// Where the services of one test write their output. Cloning shares it.
#[derive(Clone)]
pub struct Logs(Arc<Inner>);

struct Inner {
    dir: TempDir,
    files: Mutex<Vec<(String, PathBuf)>>,
}

impl Default for Logs {
    fn default() -> Self {
        Self::new()
    }
}

impl Logs {
    /// An empty set of logs in a fresh temporary directory.
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            dir: TempDir::new().expect("a directory for the services' logs"),
            files: Mutex::new(Vec::new()),
        }))
    }

    /// A new log file for a process called `label`.
    pub fn file(&self, label: &str) -> PathBuf {
        let mut files = self.0.files.lock().unwrap_or_else(|e| e.into_inner());
        let safe: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self
            .0
            .dir
            .path()
            .join(format!("{:02}-{safe}.log", files.len()));
        files.push((label.to_owned(), path.clone()));
        path
    }

    /// The last lines of every log, oldest process first. Reads files only: safe to call from
    /// anywhere, a runtime thread included.
    pub fn report(&self) -> String {
        let lines = std::env::var("TEST_LOG_LINES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(TAIL_LINES);
        let files = self.0.files.lock().unwrap_or_else(|e| e.into_inner());
        if files.is_empty() {
            return "(no service was started)".to_owned();
        }
        let mut out = String::new();
        for (label, path) in files.iter() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "----- {label}: last {} of {} lines -----\n",
                all.len() - from,
                all.len()
            ));
            for line in &all[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_shows_each_service_by_name_with_the_tail_of_its_output() {
        let logs = Logs::new();
        assert_eq!(logs.report(), "(no service was started)");
        let api = logs.file("gantry-api");
        let node = logs.file("gantry-trainer node-a");
        std::fs::write(&api, "listening\nready\n").unwrap();
        let long: String = (0..TAIL_LINES + 10)
            .map(|i| format!("line {i}\n"))
            .collect();
        std::fs::write(&node, long).unwrap();
        let report = logs.report();
        assert!(report.contains("----- gantry-api: last 2 of 2 lines -----\nlistening\nready\n"));
        assert!(report.contains(&format!(
            "----- gantry-trainer node-a: last {TAIL_LINES} of {} lines -----\nline 10\n",
            TAIL_LINES + 10
        )));
        assert!(!report.contains("line 9\n"));
        assert!(report.find("gantry-api").unwrap() < report.find("node-a").unwrap());
    }
}
