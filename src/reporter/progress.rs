//! Live progress on stderr. On a terminal: an indicatif display with tasks done/total, each
//! running attempt with its elapsed time, each retry with its countdown, and failures printed as
//! they happen. Not on a terminal (CI logs): no bar, at most one plain status line per interval.
//! Nothing at all with `--quiet` (the caller then adds no progress sink).

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::events::{Event, EventKind, EventSink, TaskStatus};
use crate::redact::redact_text;

/// Running attempts shown one per line; more are counted in the main line.
const MAX_RUNNING_LINES: usize = 12;

/// The progress sink fitting stderr: a live display on a terminal, plain lines otherwise.
pub fn for_stderr(interval: Duration) -> Box<dyn EventSink> {
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    if std::io::stderr().is_terminal() && !dumb {
        Box::new(LiveProgress::new(std::env::var_os("NO_COLOR").is_none()))
    } else {
        Box::new(PlainProgress::new(interval))
    }
}

/// Counts shared by both displays.
#[derive(Debug, Default, Clone)]
struct Counts {
    total: usize,
    done: usize,
    ok: usize,
    failed: usize,
    skipped: usize,
    cancelled: usize,
    running: usize,
    retrying: usize,
    /// Attempts queued for agents no live worker serves, and those agents (Redis executor).
    waiting_for_workers: Option<(usize, Vec<String>)>,
}

impl Counts {
    fn on_event(&mut self, kind: &EventKind) {
        match kind {
            EventKind::RunStarted { tasks, .. } => self.total = tasks.len(),
            EventKind::AttemptStarted { .. } => self.running += 1,
            EventKind::AttemptFinished { .. } => self.running = self.running.saturating_sub(1),
            EventKind::RetryScheduled { .. } => self.retrying += 1,
            EventKind::WaitingForWorkers { queued, agents } => {
                self.waiting_for_workers = (!agents.is_empty()).then(|| (*queued, agents.clone()));
            }
            EventKind::TaskFinished { status, .. } => {
                self.done += 1;
                match status {
                    TaskStatus::Success => self.ok += 1,
                    TaskStatus::Error | TaskStatus::Timeout => self.failed += 1,
                    TaskStatus::Skipped => self.skipped += 1,
                    TaskStatus::Cancelled => self.cancelled += 1,
                }
            }
            _ => {}
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("{} ok", self.ok);
        for (n, what) in [
            (self.failed, "failed"),
            (self.skipped, "skipped"),
            (self.cancelled, "cancelled"),
        ] {
            if n > 0 {
                s.push_str(&format!(", {n} {what}"));
            }
        }
        s
    }

    /// What the run waits for, when attempts sit in the queue with no worker to take them.
    fn waiting(&self) -> Option<String> {
        let (queued, agents) = self.waiting_for_workers.as_ref()?;
        Some(format!(
            "waiting for workers: {queued} queued, no live worker serves {}",
            agents.join(", ")
        ))
    }
}

/// Plain status lines for logs: one every `interval` while the run lasts, from a ticker thread
/// (so a single long task still shows the run is alive), none after the run finished.
pub struct PlainProgress {
    state: Arc<Mutex<(Counts, HashSet<String>)>>,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<JoinHandle<()>>,
    interval: Duration,
}

impl PlainProgress {
    pub fn new(interval: Duration) -> Self {
        PlainProgress {
            state: Arc::default(),
            stop: None,
            ticker: None,
            // A floor, so a zero interval cannot turn into a busy loop flooding the log.
            interval: interval.max(Duration::from_millis(100)),
        }
    }

    fn start(&mut self) {
        let (tx, rx) = mpsc::channel::<()>();
        let state = self.state.clone();
        let interval = self.interval;
        let started = Instant::now();
        self.stop = Some(tx);
        self.ticker = Some(std::thread::spawn(move || {
            // Any message or a dropped sender ends the loop; only a timeout prints.
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                let c = state.lock().expect("progress lock").0.clone();
                let mut line = format!(
                    "dispatch_runner: {}/{} tasks done ({}), {} running",
                    c.done,
                    c.total,
                    c.describe(),
                    c.running
                );
                if c.retrying > 0 {
                    line.push_str(&format!(", {} waiting to retry", c.retrying));
                }
                if let Some(waiting) = c.waiting() {
                    line.push_str(&format!(", {waiting}"));
                }
                line.push_str(&format!(
                    ", {:.1}s elapsed",
                    started.elapsed().as_secs_f64()
                ));
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }));
    }

    fn finish(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl EventSink for PlainProgress {
    fn on_event(&mut self, event: &Event) {
        {
            let mut state = self.state.lock().expect("progress lock");
            state.0.on_event(&event.kind);
            match &event.kind {
                EventKind::RetryScheduled { task_id, .. } => {
                    state.1.insert(task_id.clone());
                }
                EventKind::AttemptStarted { task_id, .. }
                | EventKind::TaskFinished { task_id, .. }
                    if state.1.remove(task_id) =>
                {
                    state.0.retrying = state.0.retrying.saturating_sub(1);
                }
                _ => {}
            }
        }
        match event.kind {
            EventKind::RunStarted { .. } => self.start(),
            EventKind::RunFinished { .. } => self.finish(),
            _ => {}
        }
    }
}

impl Drop for PlainProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The live terminal display.
pub struct LiveProgress {
    color: bool,
    multi: MultiProgress,
    main: Option<ProgressBar>,
    counts: Counts,
    running: HashMap<String, ProgressBar>,
    retries: HashMap<String, ProgressBar>,
    agents: HashMap<String, String>,
}

impl LiveProgress {
    pub fn new(color: bool) -> Self {
        LiveProgress {
            color,
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            main: None,
            counts: Counts::default(),
            running: HashMap::new(),
            retries: HashMap::new(),
            agents: HashMap::new(),
        }
    }

    fn style(&self, colored: &str, plain: &str) -> ProgressStyle {
        ProgressStyle::with_template(if self.color { colored } else { plain })
            .expect("valid template")
    }

    fn update_main(&self) {
        if let Some(main) = &self.main {
            main.set_position(self.counts.done as u64);
            let hidden = self
                .running
                .len()
                .saturating_sub(MAX_RUNNING_LINES.min(self.running.len()));
            let mut msg = format!(
                "{}, {} running",
                self.counts.describe(),
                self.counts.running
            );
            if hidden > 0 {
                msg.push_str(&format!(" ({hidden} not shown)"));
            }
            if let Some(waiting) = self.counts.waiting() {
                msg.push_str(&format!("; {waiting}"));
            }
            main.set_message(msg);
        }
    }

    fn println(&self, line: String) {
        let _ = self.multi.println(redact_text(&line));
    }
}

impl EventSink for LiveProgress {
    fn on_event(&mut self, event: &Event) {
        self.counts.on_event(&event.kind);
        match &event.kind {
            EventKind::RunStarted { tasks, .. } => {
                self.agents = tasks
                    .iter()
                    .map(|t| (t.task_id.clone(), t.agent.clone()))
                    .collect();
                let main = self.multi.add(ProgressBar::new(tasks.len() as u64));
                main.set_style(
                    self.style(
                        "{spinner:.cyan} [{elapsed_precise}] [{bar:30.cyan/blue}] {pos}/{len} tasks  {msg}",
                        "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} tasks  {msg}",
                    )
                    .progress_chars("=> "),
                );
                main.enable_steady_tick(Duration::from_millis(120));
                self.main = Some(main);
            }
            EventKind::AttemptStarted {
                task_id, attempt, ..
            } => {
                if let Some(bar) = self.retries.remove(task_id) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if self.running.len() < MAX_RUNNING_LINES {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_style(self.style(
                        "  {spinner:.green} {msg} {elapsed:.dim}",
                        "  {spinner} {msg} {elapsed}",
                    ));
                    let agent = self.agents.get(task_id).cloned().unwrap_or_default();
                    let retry = if *attempt > 1 {
                        format!(" attempt {attempt}")
                    } else {
                        String::new()
                    };
                    bar.set_message(format!("{task_id} ({agent}){retry}"));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.running.insert(task_id.clone(), bar);
                }
            }
            EventKind::TaskProgress {
                task_id,
                progress,
                total,
                message,
                ..
            } => {
                if let Some(bar) = self.running.get(task_id) {
                    let agent = self.agents.get(task_id).cloned().unwrap_or_default();
                    let amount = match total {
                        Some(total) => format!("{progress}/{total}"),
                        None => format!("{progress}"),
                    };
                    let note = message
                        .as_deref()
                        .map(|m| format!(" {}", crate::redact::redact_text(m)))
                        .unwrap_or_default();
                    bar.set_message(format!("{task_id} ({agent}) {amount}{note}"));
                }
            }
            EventKind::AttemptFinished { task_id, .. } => {
                if let Some(bar) = self.running.remove(task_id) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
            }
            EventKind::RetryScheduled {
                task_id,
                attempt,
                delay_ms,
            } => {
                let delay = Duration::from_millis(*delay_ms);
                let countdown = move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let left = delay.saturating_sub(state.elapsed());
                    let _ = write!(w, "{:.1}s", left.as_secs_f64());
                };
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    self.style(
                        "  {spinner:.yellow} {msg} in {countdown:.yellow}",
                        "  {spinner} {msg} in {countdown}",
                    )
                    .with_key("countdown", countdown),
                );
                bar.set_message(format!("{task_id}: retry (attempt {attempt})"));
                bar.enable_steady_tick(Duration::from_millis(120));
                self.retries.insert(task_id.clone(), bar);
            }
            EventKind::TaskFinished {
                task_id,
                status,
                error,
                ..
            } => {
                if let Some(bar) = self.retries.remove(task_id) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if matches!(status, TaskStatus::Error | TaskStatus::Timeout) {
                    let (kind, message) = error
                        .as_ref()
                        .map(|e| {
                            let k = serde_json::to_value(e.kind).unwrap_or_default();
                            (k.as_str().unwrap_or("error").to_string(), e.message.clone())
                        })
                        .unwrap_or_default();
                    self.println(format!(
                        "✗ {task_id} {}: {kind}: {message}",
                        status.as_str()
                    ));
                }
            }
            EventKind::BreakerChanged { breaker, to, .. } => {
                self.println(format!("circuit breaker '{breaker}' is now {to:?}"));
            }
            EventKind::RunCancelled { reason } => {
                self.println(format!("run cancelled ({reason:?}): no new tasks start"));
            }
            EventKind::RunFinished { .. } => {
                for (_, bar) in self.running.drain().chain(self.retries.drain()) {
                    bar.finish_and_clear();
                }
                if let Some(main) = self.main.take() {
                    main.finish_and_clear();
                }
                let _ = self.multi.clear();
            }
            EventKind::TaskReady { .. }
            | EventKind::CacheChecked { .. }
            | EventKind::WaitingForWorkers { .. } => {}
        }
        self.update_main();
    }
}
