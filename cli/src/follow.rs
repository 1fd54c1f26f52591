//! Following a job: its server-sent events (history first, then live) drawn as a progress bar,
//! and the model it produced once the registry has listed it. Ctrl-C stops following and leaves
//! the job running.

use std::io::IsTerminal;
use std::time::Duration;

use futures::StreamExt;
use gantry_contracts::jobs::{JobEvent, JobEventKind, JobKind, JobRecord, JobStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;

use crate::client::{segment, Client, Error, Result};
use crate::output::{self, Format};

/// How following ended.
pub enum Ended {
    /// The job reached a final state; here is its record.
    Final(Box<JobRecord>),
    /// The user pressed Ctrl-C.
    Interrupted,
}

/// Splits a byte stream of server-sent events into the `data` of each event.
#[derive(Default)]
pub struct SseParser {
    buf: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feed bytes; returns the data of every event they completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        let mut out = Vec::new();
        while let Some(i) = self.buf.find('\n') {
            let line: String = self.buf.drain(..=i).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                self.data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
            }
            // Comments (keep-alives), `event:`, `id:` and `retry:` lines carry nothing we use.
        }
        out
    }
}

/// Draws a job's events: a progress bar on a terminal, a line per epoch otherwise, or JSON
/// lines.
struct Display {
    bar: Option<ProgressBar>,
    format: Format,
    /// An analysis job: its progress counts images, not training steps.
    analysis: bool,
}

impl Display {
    fn new(format: Format, analysis: bool) -> Self {
        let bar = (format == Format::Table && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30.cyan/blue}] step {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix("waiting");
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            format,
            analysis,
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn event(&self, e: &JobEvent) -> Result<()> {
        if self.format == Format::Json {
            let text = serde_json::to_string(e).map_err(|e| Error::msg(e.to_string()))?;
            return output::print(&text);
        }
        match &e.kind {
            JobEventKind::Started {
                node,
                driver,
                resumed_from_epoch,
                ..
            } => {
                let resumed = if *resumed_from_epoch > 0 {
                    format!(", resuming after epoch {resumed_from_epoch}")
                } else {
                    String::new()
                };
                self.line(&format!("started on node {node} ({driver}){resumed}"));
            }
            JobEventKind::Progress {
                step,
                total_steps,
                samples_per_sec,
                eta_seconds,
                ..
            } if self.analysis => {
                let msg = format!(
                    "{samples_per_sec:.0} images/s ETA {}",
                    output::duration(*eta_seconds)
                );
                match &self.bar {
                    Some(bar) => {
                        bar.set_prefix("analysing");
                        bar.set_length((*total_steps).max(1));
                        bar.set_position(*step);
                        bar.set_message(msg);
                    }
                    None => eprintln!("images {step}/{total_steps} {msg}"),
                }
            }
            JobEventKind::Progress {
                epoch,
                epochs,
                step,
                total_steps,
                loss,
                train_accuracy,
                val_accuracy,
                samples_per_sec,
                eta_seconds,
            } => {
                let val = val_accuracy
                    .map(|v| format!(" val {}", output::percent(v)))
                    .unwrap_or_default();
                let msg = format!(
                    "loss {loss:.4} acc {}{val} {samples_per_sec:.0} samples/s ETA {}",
                    output::percent(*train_accuracy),
                    output::duration(*eta_seconds)
                );
                match &self.bar {
                    Some(bar) => {
                        bar.set_prefix(format!("epoch {epoch}/{epochs}"));
                        bar.set_length((*total_steps).max(1));
                        bar.set_position(*step);
                        bar.set_message(msg);
                    }
                    None => eprintln!("epoch {epoch}/{epochs} step {step}/{total_steps} {msg}"),
                }
            }
            JobEventKind::Checkpoint { epoch, metrics } => {
                self.line(&format!(
                    "epoch {epoch} done: loss {:.4}, train accuracy {}, validation accuracy {}",
                    metrics.loss,
                    output::percent(metrics.train_accuracy),
                    output::percent(metrics.val_accuracy)
                ));
            }
            JobEventKind::Completed { .. }
            | JobEventKind::Failed { .. }
            | JobEventKind::Cancelled
            | JobEventKind::Results { .. }
            | JobEventKind::Analyzed { .. } => {}
        }
        Ok(())
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The job's path prefix: `/admin/api` for admins, `/api` for users.
pub fn job_path(prefix: &str, id: &str) -> String {
    format!("{prefix}/jobs/{}", segment(id))
}

/// Follow job `id` until it ends or the user presses Ctrl-C.
pub async fn follow(client: &Client, prefix: &str, id: &str, format: Format) -> Result<Ended> {
    let job: JobRecord = client.get(&job_path(prefix, id)).await?;
    let display = Display::new(format, job.kind == JobKind::Analyze);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let watched = async {
        let mut reconnects = 0u32;
        // The stream replays the history from the start on every connection: events drawn
        // before a reconnect are skipped.
        let mut drawn = 0usize;
        loop {
            let req = client
                .request(Method::GET, &format!("{}/events", job_path(prefix, id)))
                .header("Accept", "text/event-stream");
            let resp = client.send(req).await?;
            let mut body = resp.bytes_stream();
            let mut parser = SseParser::default();
            let mut seen = 0usize;
            let mut broken = false;
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(_) => {
                        broken = true;
                        break;
                    }
                };
                for data in parser.feed(&chunk) {
                    let Ok(event) = serde_json::from_str::<JobEvent>(&data) else {
                        continue;
                    };
                    seen += 1;
                    if seen > drawn {
                        display.event(&event)?;
                        drawn = seen;
                    }
                    if event.is_final() {
                        return Ok::<_, Error>(());
                    }
                }
            }
            // The stream ended without a final event: the job may have ended with no event
            // stored (cancelled while queued), or the connection dropped.
            let job: JobRecord = client.get(&job_path(prefix, id)).await?;
            if job.status.is_final() {
                return Ok(());
            }
            reconnects += 1;
            if reconnects > 20 {
                return Err(Error::msg(format!(
                    "the event stream of job {id} keeps closing{}",
                    if broken { " (connection lost)" } else { "" }
                )));
            }
            tokio::time::sleep(Duration::from_millis(500 * u64::from(reconnects.min(6)))).await;
        }
    };
    let outcome = tokio::select! {
        r = watched => r,
        _ = &mut ctrl_c => {
            display.finish();
            return Ok(Ended::Interrupted);
        }
    };
    if let Err(e) = outcome {
        display.finish();
        return Err(e);
    }
    if let Some(bar) = &display.bar {
        bar.set_prefix("settling");
    }
    // The registry lists the model version once the weights are checked; the job record says
    // so. Wait for it, so the model named at the end can be downloaded at once.
    let settled = async {
        let mut wait = Duration::from_millis(100);
        loop {
            let job: JobRecord = client.get(&job_path(prefix, id)).await?;
            let settled = match job.status {
                JobStatus::Completed => job.kind == JobKind::Analyze || job.model.is_some(),
                s => s.is_final(),
            };
            if settled {
                return Ok::<_, Error>(job);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    };
    let r = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(300), settled) => r,
        _ = &mut ctrl_c => {
            display.finish();
            return Ok(Ended::Interrupted);
        }
    };
    display.finish();
    match r {
        Ok(Ok(job)) => Ok(Ended::Final(Box::new(job))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::msg(format!(
            "job {id} ended but the registry has not settled it within 5 minutes; see \
             `gantry jobs show {id}`"
        ))),
    }
}

/// The last line of a followed job, and whether it succeeded.
pub fn summary(job: &JobRecord) -> (String, bool) {
    match job.status {
        JobStatus::Completed => match &job.model {
            Some(m) => (
                format!(
                    "model {} version {}: validation accuracy {}",
                    m.name,
                    m.version,
                    output::percent(m.val_accuracy)
                ),
                true,
            ),
            None => match &job.analysis {
                Some(a) => (
                    format!(
                        "analysis job {} completed: {} images with {}",
                        job.job_id, a.images, a.model
                    ),
                    true,
                ),
                None => (format!("job {} completed", job.job_id), true),
            },
        },
        JobStatus::Failed => (
            format!(
                "job {} failed: {}",
                job.job_id,
                job.error.as_deref().unwrap_or("no reason given")
            ),
            false,
        ),
        JobStatus::Cancelled => (format!("job {} was cancelled", job.job_id), false),
        s => (format!("job {} is {}", job.job_id, s.as_str()), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_and_keep_alives_are_skipped() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\ndata: {\"a\"").is_empty());
        let got = p.feed(b":1}\n\ndata: x\r\n\r\n");
        assert_eq!(got, vec!["{\"a\":1}".to_owned(), "x".to_owned()]);
    }
}
