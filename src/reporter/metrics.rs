//! Prometheus metrics of a run, filled from the event stream. A batch run is short-lived, so the
//! metrics leave at the end: as a text-format file (`--metrics-file`, for node_exporter's textfile
//! collector) and/or pushed to a Pushgateway (`--pushgateway`, job `dispatch_runner`). `serve`
//! keeps one [`Metrics`] for all its runs ([`Metrics::for_server`]) and answers it on `/metrics`.
//!
//! One metric name has one type in every output: `dispatch_run_duration_seconds` is a histogram
//! everywhere (a one-shot run's file holds one observation), `dispatch_runs_total` a counter
//! (1 for the run's status in a one-shot file). Only `serve` has `dispatch_runs_in_flight`: a
//! file written when the run has ended would always say 0.
//!
//! Label values come from bounded sets only (agent names, task statuses, attempt outcomes,
//! breaker keys, MCP server and tool names, model backends), never task ids or free text; a
//! label that looks like free text, or one past [`MAX_LABEL_VALUES`] distinct values, is
//! reported as `other`. The bound is per registry: in `serve`, over all the runs it served, so
//! clients cannot grow `/metrics` without end by sending new names in every batch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde_json::Value;

use crate::events::{Event, EventKind, EventSink, RunStatus, TaskStatus};
use crate::policy::breaker::BreakerState;
use crate::reporter::output::FileTarget;

/// Distinct values one label may take before further ones become `other`.
pub const MAX_LABEL_VALUES: usize = 100;

/// The Pushgateway job name.
pub const JOB: &str = "dispatch_runner";

const STATUSES: [TaskStatus; 5] = [
    TaskStatus::Success,
    TaskStatus::Error,
    TaskStatus::Timeout,
    TaskStatus::Skipped,
    TaskStatus::Cancelled,
];

const RUN_STATUSES: [RunStatus; 3] = [RunStatus::Success, RunStatus::Partial, RunStatus::Failure];

fn run_status(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Success => "success",
        RunStatus::Partial => "partial",
        RunStatus::Failure => "failure",
    }
}

/// Every metric of a run (or of every run a server served), in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    tasks: IntCounterVec,
    duration: HistogramVec,
    attempts: IntCounterVec,
    retries: IntCounterVec,
    breaker: IntGaugeVec,
    runs: IntCounterVec,
    run_duration: Histogram,
    /// `serve` only.
    runs_in_flight: Option<IntGauge>,
    /// Shared by every sink filling these metrics, so that the bound on label values holds for
    /// the registry (all the runs a server serves), not just for one run.
    labels: Arc<Mutex<LabelSets>>,
    mcp_calls: IntCounterVec,
    llm_tokens: IntCounterVec,
    llm_cost: CounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let tasks = counter(
            "dispatch_tasks_total",
            "Tasks by agent and final status.",
            &["agent", "status"],
        );
        let attempts = counter(
            "dispatch_task_attempts_total",
            "Attempts started, by agent.",
            &["agent"],
        );
        let retries = counter(
            "dispatch_task_retries_total",
            "Retries scheduled, by agent.",
            &["agent"],
        );
        let mcp_calls = counter(
            "dispatch_mcp_calls_total",
            "MCP tool calls (attempts of mcp tasks) by server, tool and outcome.",
            &["server", "tool", "outcome"],
        );
        let llm_tokens = counter(
            "dispatch_llm_tokens_total",
            "Language-model tokens used by tasks, by backend and direction (input, output).",
            &["backend", "direction"],
        );
        let duration = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "dispatch_task_duration_seconds",
                    "Time from a task's first attempt starting to its final status, by agent.",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    1800.0,
                ]),
                &["agent"],
            )
            .expect("valid metric"),
        );
        let breaker = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "dispatch_circuit_breaker_state",
                    "Circuit breaker state at the end of the run: 0 closed, 1 half-open, 2 open.",
                ),
                &["breaker"],
            )
            .expect("valid metric"),
        );
        let runs = counter(
            "dispatch_runs_total",
            "Runs finished, by run status (success, partial, failure).",
            &["status"],
        );
        for s in RUN_STATUSES {
            runs.with_label_values(&[run_status(s)]);
        }
        let run_duration = reg(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "dispatch_run_duration_seconds",
                    "Wall time of finished runs.",
                )
                .buckets(vec![
                    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                    7200.0,
                ]),
            )
            .expect("valid metric"),
        );
        let llm_cost = reg(
            &registry,
            CounterVec::new(
                Opts::new(
                    "dispatch_llm_cost_usd_total",
                    "Language-model cost in US dollars, by backend.",
                ),
                &["backend"],
            )
            .expect("valid metric"),
        );
        Metrics {
            registry,
            tasks,
            duration,
            attempts,
            retries,
            breaker,
            runs,
            run_duration,
            runs_in_flight: None,
            labels: Arc::default(),
            mcp_calls,
            llm_tokens,
            llm_cost,
        }
    }

    /// The metrics of `serve`: also `dispatch_runs_in_flight`, and every series whose label
    /// values are known before any run (each agent with each task status, each run status) is
    /// exported at zero from start-up, so that a scraper sees it before it first changes.
    pub fn for_server() -> Self {
        let mut m = Self::new();
        let in_flight = IntGauge::new(
            "dispatch_runs_in_flight",
            "Runs started and not yet finished.",
        )
        .expect("valid metric");
        m.registry
            .register(Box::new(in_flight.clone()))
            .expect("metric names are unique");
        m.runs_in_flight = Some(in_flight);
        for agent in crate::agents::ALL_AGENTS {
            for s in STATUSES {
                m.tasks.with_label_values(&[*agent, s.as_str()]);
            }
            m.attempts.with_label_values(&[agent]);
            m.retries.with_label_values(&[agent]);
            m.duration.with_label_values(&[agent]);
        }
        m
    }

    /// Counts a run as in flight until the returned guard is dropped (`serve` only; a no-op
    /// for metrics without that gauge). A guard rather than an event, so a run whose task ends
    /// in any way is never left counted.
    pub fn run_in_flight(&self) -> InFlight {
        if let Some(g) = &self.runs_in_flight {
            g.inc();
        }
        InFlight(self.runs_in_flight.clone())
    }

    /// The Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        crate::redact::redact_text(&String::from_utf8_lossy(&buf)).into_owned()
    }

    /// Pushes every metric to a Pushgateway under job `dispatch_runner`, replacing what that job
    /// pushed before (HTTP PUT).
    pub async fn push(&self, base_url: &str) -> Result<(), String> {
        let url = format!("{}/metrics/job/{JOB}", base_url.trim_end_matches('/'));
        let client = crate::http::client_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        let response = client
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
            .body(self.encode())
            .send()
            .await
            .map_err(|e| format!("cannot push metrics to '{url}': {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = response.text().await.unwrap_or_default();
            Err(format!(
                "pushing metrics to '{url}' failed: HTTP {status}: {}",
                body.trim()
            ))
        }
    }
}

/// See [`Metrics::run_in_flight`].
pub struct InFlight(Option<IntGauge>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// Which label a value is for; each has its own bound.
#[derive(Clone, Copy)]
enum Label {
    Agent,
    Breaker,
    Server,
    Tool,
    Backend,
}

#[derive(Default)]
struct LabelSets {
    agents: Bounded,
    breakers: Bounded,
    servers: Bounded,
    tools: Bounded,
    backends: Bounded,
}

impl Metrics {
    /// `value` as a value of `which`, or `other` (see [`Bounded`]).
    fn label(&self, which: Label, value: &str) -> String {
        let mut sets = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        let set = match which {
            Label::Agent => &mut sets.agents,
            Label::Breaker => &mut sets.breakers,
            Label::Server => &mut sets.servers,
            Label::Tool => &mut sets.tools,
            Label::Backend => &mut sets.backends,
        };
        set.label(value)
    }
}

/// Keeps a label's set of values bounded.
#[derive(Default)]
struct Bounded {
    seen: HashSet<String>,
}

impl Bounded {
    fn label(&mut self, value: &str) -> String {
        let plain = !value.is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'));
        if !plain {
            return "other".into();
        }
        if self.seen.contains(value) || self.seen.len() < MAX_LABEL_VALUES {
            self.seen.insert(value.to_string());
            value.to_string()
        } else {
            "other".into()
        }
    }
}

struct TaskFacts {
    agent: String,
    /// (server, tool) for `mcp` tasks.
    mcp: Option<(String, String)>,
    first_start_ms: Option<f64>,
}

/// The sink that fills [`Metrics`] and, at the end of the run, writes the metrics file.
pub struct MetricsSink {
    metrics: Metrics,
    file: Option<FileTarget>,
    tasks: HashMap<String, TaskFacts>,
}

impl MetricsSink {
    /// A sink filling `metrics` (a cheap handle: clones share the registry), writing the text
    /// format to `file` when the run finishes.
    pub fn new(metrics: Metrics, file: Option<FileTarget>) -> Self {
        MetricsSink {
            metrics,
            file,
            tasks: HashMap::new(),
        }
    }

    fn agent(&self, task_id: &str) -> String {
        self.tasks
            .get(task_id)
            .map_or_else(|| "other".into(), |t| t.agent.clone())
    }

    fn usage(&mut self, output: &Value) {
        let Some(usage) = output.get("usage").filter(|u| u.is_object()) else {
            return;
        };
        let backend = output
            .get("backend")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let backend = self.metrics.label(Label::Backend, backend);
        let m = &self.metrics;
        for (field, direction) in [("input_tokens", "input"), ("output_tokens", "output")] {
            if let Some(n) = usage.get(field).and_then(Value::as_u64) {
                m.llm_tokens
                    .with_label_values(&[backend.as_str(), direction])
                    .inc_by(n);
            }
        }
        if let Some(cost) = usage.get("cost_usd").and_then(Value::as_f64)
            && cost.is_finite()
            && cost >= 0.0
        {
            m.llm_cost
                .with_label_values(&[backend.as_str()])
                .inc_by(cost);
        }
    }
}

fn mcp_labels(input: &Value) -> (String, String) {
    let server = match (input.get("server"), input.get("url")) {
        (Some(Value::String(s)), _) => s.clone(),
        // An ad-hoc endpoint is free text; the URL never becomes a label.
        (_, Some(_)) => "url".into(),
        _ => "archon".into(),
    };
    let tool = input
        .get("tool")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    (server, tool)
}

impl EventSink for MetricsSink {
    fn on_event(&mut self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted { tasks, .. } => {
                for t in tasks {
                    let agent = self.metrics.label(Label::Agent, &t.agent);
                    let mcp = (t.agent == "mcp").then(|| {
                        let (server, tool) = mcp_labels(&t.input);
                        (
                            self.metrics.label(Label::Server, &server),
                            self.metrics.label(Label::Tool, &tool),
                        )
                    });
                    // Zero series for every status, so a rate() sees a status appear.
                    for s in STATUSES {
                        self.metrics
                            .tasks
                            .with_label_values(&[agent.as_str(), s.as_str()]);
                    }
                    self.metrics.attempts.with_label_values(&[&agent]);
                    self.metrics.retries.with_label_values(&[&agent]);
                    self.tasks.insert(
                        t.task_id.clone(),
                        TaskFacts {
                            agent,
                            mcp,
                            first_start_ms: None,
                        },
                    );
                }
            }
            EventKind::AttemptStarted {
                task_id, breaker, ..
            } => {
                let agent = self.agent(task_id);
                self.metrics.attempts.with_label_values(&[&agent]).inc();
                if let Some(t) = self.tasks.get_mut(task_id) {
                    t.first_start_ms.get_or_insert(event.elapsed_ms);
                }
                if let Some(breaker) = breaker {
                    let b = self.metrics.label(Label::Breaker, breaker);
                    // Seen breakers start closed; later changes overwrite this.
                    self.metrics.breaker.with_label_values(&[&b]);
                }
            }
            EventKind::AttemptFinished {
                task_id, outcome, ..
            } => {
                if let Some(TaskFacts {
                    mcp: Some((server, tool)),
                    ..
                }) = self.tasks.get(task_id)
                {
                    let outcome = serde_json::to_value(outcome).expect("serializable");
                    self.metrics
                        .mcp_calls
                        .with_label_values(&[
                            server.as_str(),
                            tool.as_str(),
                            outcome.as_str().unwrap_or("other"),
                        ])
                        .inc();
                }
            }
            EventKind::RetryScheduled { task_id, .. } => {
                let agent = self.agent(task_id);
                self.metrics.retries.with_label_values(&[&agent]).inc();
            }
            EventKind::TaskFinished {
                task_id,
                status,
                output,
                ..
            } => {
                let agent = self.agent(task_id);
                self.metrics
                    .tasks
                    .with_label_values(&[agent.as_str(), status.as_str()])
                    .inc();
                if let Some(start) = self.tasks.get(task_id).and_then(|t| t.first_start_ms) {
                    self.metrics
                        .duration
                        .with_label_values(&[&agent])
                        .observe(((event.elapsed_ms - start) / 1000.0).max(0.0));
                }
                if let Some(output) = output {
                    self.usage(output);
                }
            }
            EventKind::BreakerChanged { breaker, to, .. } => {
                let b = self.metrics.label(Label::Breaker, breaker);
                let v = match to {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                };
                self.metrics.breaker.with_label_values(&[&b]).set(v);
            }
            EventKind::RunFinished { status, summary } => {
                self.metrics
                    .runs
                    .with_label_values(&[run_status(*status)])
                    .inc();
                self.metrics
                    .run_duration
                    .observe(summary.total_time_ms as f64 / 1000.0);
                if let Some(file) = &self.file {
                    file.write(self.metrics.encode().as_bytes());
                }
            }
            EventKind::TaskReady { .. }
            | EventKind::TaskProgress { .. }
            | EventKind::CacheChecked { .. }
            | EventKind::WaitingForWorkers { .. }
            | EventKind::RunCancelled { .. } => {}
        }
    }
}

/// A parsed sample of the text format: name, labels, value. Enough to read our own metrics
/// back (tests, and anyone checking a metrics file).
pub type Sample = (String, Vec<(String, String)>, f64);

/// Parses the Prometheus text exposition format (comments skipped; no timestamps expected).
pub fn parse_text(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: cannot parse '{line}'", n + 1);
        let (head, value) = line.rsplit_once(' ').ok_or_else(bad)?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad())?,
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or_else(bad)?;
                (name.to_string(), parse_labels(body).ok_or_else(bad)?)
            }
        };
        out.push((name, labels, value));
    }
    Ok(out)
}

fn parse_labels(mut body: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    loop {
        body = body.trim_start_matches(',').trim();
        if body.is_empty() {
            return Some(labels);
        }
        let (key, rest) = body.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        body = &rest[end + 1..];
    }
}

/// The value of the sample with this name and exactly these labels (in any order).
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AttemptOutcome, RunStatus, Summary, TaskInfo};
    use serde_json::json;

    fn ev(seq: u64, elapsed_ms: f64, kind: EventKind) -> Event {
        Event {
            seq,
            at: "2026-01-01T00:00:00.000Z".into(),
            elapsed_ms,
            kind,
        }
    }

    fn info(id: &str, agent: &str, input: Value) -> TaskInfo {
        TaskInfo {
            task_id: id.into(),
            agent: agent.into(),
            description: String::new(),
            dependencies: vec![],
            input,
        }
    }

    fn started(id: &str, attempt: u32, breaker: &str) -> EventKind {
        EventKind::AttemptStarted {
            task_id: id.into(),
            attempt,
            worker: 0,
            breaker: (!breaker.is_empty()).then(|| breaker.into()),
            timeout: None,
        }
    }

    fn finished_attempt(id: &str, attempt: u32, outcome: AttemptOutcome) -> EventKind {
        EventKind::AttemptFinished {
            task_id: id.into(),
            attempt,
            outcome,
            duration_ms: 5.0,
            error: None,
            executed_by: None,
            files: Default::default(),
        }
    }

    fn finished(id: &str, status: TaskStatus, output: Option<Value>, attempts: u32) -> EventKind {
        EventKind::TaskFinished {
            task_id: id.into(),
            status,
            output,
            error: None,
            attempts,
            reused: false,
            cached: false,
            files: Default::default(),
        }
    }

    /// MCP and model metrics from synthetic events shaped like those agents' outputs.
    #[test]
    fn mcp_and_llm_metrics_from_events() {
        let metrics = Metrics::new();
        let mut sink = MetricsSink::new(metrics.clone(), None);
        let events = vec![
            EventKind::RunStarted {
                run_id: "r".into(),
                previous_run_id: None,
                config: json!({}),
                tasks: vec![
                    info("q", "mcp", json!({"server": "archon", "tool": "rag_query"})),
                    info(
                        "adhoc",
                        "mcp",
                        json!({"url": "http://127.0.0.1:9/mcp?key=x", "tool": "echo"}),
                    ),
                    info("gen", "coder", json!({"contract_description": "x"})),
                ],
            },
            started("q", 1, "mcp:archon"),
            finished_attempt("q", 1, AttemptOutcome::Error),
            EventKind::RetryScheduled {
                task_id: "q".into(),
                attempt: 2,
                delay_ms: 10,
            },
            started("q", 2, "mcp:archon"),
            finished_attempt("q", 2, AttemptOutcome::Success),
            finished(
                "q",
                TaskStatus::Success,
                Some(json!({"server": "archon", "tool": "rag_query"})),
                2,
            ),
            started("adhoc", 1, "mcp:url"),
            finished_attempt("adhoc", 1, AttemptOutcome::Timeout),
            finished("adhoc", TaskStatus::Timeout, None, 1),
            started("gen", 1, "coder"),
            finished_attempt("gen", 1, AttemptOutcome::Success),
            finished(
                "gen",
                TaskStatus::Success,
                Some(
                    json!({"backend": "anthropic", "usage": {"input_tokens": 1200, "output_tokens": 345, "cost_usd": 0.0125}}),
                ),
                1,
            ),
            EventKind::BreakerChanged {
                breaker: "mcp:url".into(),
                from: BreakerState::Closed,
                to: BreakerState::Open,
            },
            EventKind::RunFinished {
                status: RunStatus::Partial,
                summary: Summary {
                    total_tasks: 3,
                    successful: 2,
                    timed_out: 1,
                    total_time_ms: 2500,
                    ..Summary::default()
                },
            },
        ];
        for (i, k) in events.into_iter().enumerate() {
            sink.on_event(&ev(i as u64, i as f64 * 100.0, k));
        }
        let s = parse_text(&metrics.encode()).unwrap();
        let get = |name: &str, labels: &[(&str, &str)]| {
            sample(&s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {s:?}"))
        };
        let call = |server, tool, outcome| {
            get(
                "dispatch_mcp_calls_total",
                &[("server", server), ("tool", tool), ("outcome", outcome)],
            )
        };
        assert_eq!(call("archon", "rag_query", "error"), 1.0);
        assert_eq!(call("archon", "rag_query", "success"), 1.0);
        assert_eq!(call("url", "echo", "timeout"), 1.0);
        let tokens = |d| {
            get(
                "dispatch_llm_tokens_total",
                &[("backend", "anthropic"), ("direction", d)],
            )
        };
        assert_eq!(tokens("input"), 1200.0);
        assert_eq!(tokens("output"), 345.0);
        assert!(
            (get("dispatch_llm_cost_usd_total", &[("backend", "anthropic")]) - 0.0125).abs() < 1e-9
        );
        assert_eq!(
            get("dispatch_circuit_breaker_state", &[("breaker", "mcp:url")]),
            2.0
        );
        assert_eq!(
            get(
                "dispatch_circuit_breaker_state",
                &[("breaker", "mcp:archon")]
            ),
            0.0
        );
        assert_eq!(get("dispatch_task_retries_total", &[("agent", "mcp")]), 1.0);
        assert_eq!(
            get("dispatch_task_attempts_total", &[("agent", "mcp")]),
            3.0
        );
        assert_eq!(
            get(
                "dispatch_tasks_total",
                &[("agent", "mcp"), ("status", "timeout")]
            ),
            1.0
        );
        assert_eq!(
            get(
                "dispatch_tasks_total",
                &[("agent", "coder"), ("status", "error")]
            ),
            0.0
        );
        assert_eq!(get("dispatch_run_duration_seconds_sum", &[]), 2.5);
        assert_eq!(get("dispatch_run_duration_seconds_count", &[]), 1.0);
        assert_eq!(get("dispatch_runs_total", &[("status", "partial")]), 1.0);
        assert_eq!(get("dispatch_runs_total", &[("status", "success")]), 0.0);
        assert!(!text_has(&metrics, "dispatch_runs_in_flight"));
        assert_eq!(
            get("dispatch_task_duration_seconds_count", &[("agent", "mcp")]),
            2.0
        );
        // No task id and no URL ever becomes a label value.
        let text = metrics.encode();
        assert!(
            !text.contains("\"q\"") && !text.contains("127.0.0.1"),
            "{text}"
        );
    }

    fn text_has(m: &Metrics, name: &str) -> bool {
        m.encode().contains(name)
    }

    #[test]
    fn server_metrics_start_at_zero_and_count_runs_in_flight() {
        let m = Metrics::for_server();
        let s = parse_text(&m.encode()).unwrap();
        for agent in crate::agents::ALL_AGENTS {
            assert_eq!(
                sample(
                    &s,
                    "dispatch_tasks_total",
                    &[("agent", agent), ("status", "cancelled")]
                ),
                Some(0.0)
            );
        }
        assert_eq!(
            sample(&s, "dispatch_runs_total", &[("status", "failure")]),
            Some(0.0)
        );
        let in_flight = || {
            sample(
                &parse_text(&m.encode()).unwrap(),
                "dispatch_runs_in_flight",
                &[],
            )
        };
        assert_eq!(in_flight(), Some(0.0));
        let a = m.run_in_flight();
        let b = m.run_in_flight();
        assert_eq!(in_flight(), Some(2.0));
        drop(a);
        assert_eq!(in_flight(), Some(1.0));
        drop(b);
        assert_eq!(in_flight(), Some(0.0));
    }

    #[test]
    fn the_label_bound_holds_across_sinks_sharing_metrics() {
        let metrics = Metrics::for_server();
        for run in 0..2 {
            let mut sink = MetricsSink::new(metrics.clone(), None);
            for i in 0..MAX_LABEL_VALUES {
                sink.on_event(&ev(i as u64, 0.0, started("t", 1, &format!("r{run}-b{i}"))));
            }
        }
        let s = parse_text(&metrics.encode()).unwrap();
        let breakers: Vec<&Sample> = s
            .iter()
            .filter(|x| x.0 == "dispatch_circuit_breaker_state")
            .collect();
        assert_eq!(
            breakers.len(),
            MAX_LABEL_VALUES + 1,
            "100 names and `other`"
        );
        assert!(
            breakers
                .iter()
                .any(|x| x.1 == [("breaker".to_string(), "other".to_string())])
        );
    }

    #[test]
    fn labels_stay_bounded() {
        let mut b = Bounded::default();
        assert_eq!(b.label("has space"), "other");
        assert_eq!(b.label(""), "other");
        for i in 0..MAX_LABEL_VALUES {
            assert_eq!(b.label(&format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(b.label("one-too-many"), "other");
        assert_eq!(b.label("t3"), "t3");
    }

    #[test]
    fn parses_escaped_labels() {
        let s = parse_text("# HELP x y\nm{a=\"q\\\"uote\",b=\"z\"} 3\nn 1.5\n").unwrap();
        assert_eq!(sample(&s, "m", &[("a", "q\"uote"), ("b", "z")]), Some(3.0));
        assert_eq!(sample(&s, "n", &[]), Some(1.5));
        assert!(parse_text("garbage").is_err());
    }
}
