//! The outputs a user asked for on the command line (`--events`, `--junit`, `--html`,
//! `--chrome-trace`, `--metrics-file`, `--pushgateway`, live progress), turned into event sinks
//! for a run, or replayed from a trace file by `dispatch_runner report`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::events::EventSink;
use crate::reporter::metrics::{Metrics, MetricsSink};
use crate::reporter::ndjson::NdjsonSink;
use crate::reporter::output::{FileTarget, Problems, RenderSink, check_writable, replay};
use crate::reporter::{chrome_trace, html, junit, progress};

type Render = fn(&crate::reporter::RunRecord) -> Vec<u8>;

/// Which outputs to produce.
#[derive(Debug, Clone, Default)]
pub struct OutputPlan {
    pub events: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    /// The dialect of the `--junit` file.
    pub junit_format: junit::JunitFormat,
    pub html: Option<PathBuf>,
    pub chrome_trace: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    pub pushgateway: Option<String>,
    /// Live progress on stderr, with this interval between plain status lines when stderr is
    /// not a terminal; `None` for no progress.
    pub progress: Option<Duration>,
}

/// The sinks of a plan, plus what is needed after the run to deliver and report.
pub struct Outputs {
    pub sinks: Vec<Box<dyn EventSink>>,
    problems: Problems,
    metrics: Option<Metrics>,
    pushgateway: Option<String>,
    written: Vec<(&'static str, PathBuf)>,
}

/// How delivering the outputs went.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Outputs asked for and not written (a failed run of the tool, exit 3).
    pub errors: Vec<String>,
    /// Problems that do not fail the run (a Pushgateway that cannot be reached).
    pub warnings: Vec<String>,
    /// Files written, by flag.
    pub written: Vec<(&'static str, PathBuf)>,
}

impl OutputPlan {
    fn files(&self) -> Vec<(&'static str, &Path)> {
        [
            ("--events", &self.events),
            ("--junit", &self.junit),
            ("--html", &self.html),
            ("--chrome-trace", &self.chrome_trace),
            ("--metrics-file", &self.metrics_file),
        ]
        .into_iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
        .collect()
    }

    /// Whether any file output was asked for (the `report` subcommand needs one).
    pub fn has_files(&self) -> bool {
        !self.files().is_empty()
    }

    /// Checks before anything runs that every file can be written.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let errors: Vec<String> = self
            .files()
            .into_iter()
            .filter_map(|(flag, p)| check_writable(flag, p).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Builds the sinks. The events file is created now, so that a follower can open it at once.
    pub fn build(&self) -> Result<Outputs, String> {
        let problems = Problems::default();
        if let Some(password) = self
            .pushgateway
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .and_then(|u| u.password().map(str::to_string))
        {
            // Basic-auth credentials in the URL must not show up in a warning or a log line.
            crate::redact::register_secret(&password);
        }
        let mut sinks: Vec<Box<dyn EventSink>> = Vec::new();
        let mut written = Vec::new();
        let target =
            |flag: &'static str, p: &PathBuf| FileTarget::new(flag, p.clone(), problems.clone());
        if let Some(p) = &self.events {
            sinks.push(Box::new(NdjsonSink::create(p, problems.clone())?));
            written.push(("--events", p.clone()));
        }
        let renders: [(&'static str, &Option<PathBuf>, Render); 3] = [
            (
                "--junit",
                &self.junit,
                match self.junit_format {
                    junit::JunitFormat::Jenkins => junit::render,
                    junit::JunitFormat::Surefire => junit::render_surefire,
                },
            ),
            ("--html", &self.html, html::render),
            ("--chrome-trace", &self.chrome_trace, chrome_trace::render),
        ];
        for (flag, path, render) in renders {
            if let Some(p) = path {
                sinks.push(Box::new(RenderSink::new(target(flag, p), render)));
                written.push((flag, p.clone()));
            }
        }
        let metrics =
            (self.metrics_file.is_some() || self.pushgateway.is_some()).then(Metrics::new);
        if let Some(m) = &metrics {
            let file = self
                .metrics_file
                .as_ref()
                .map(|p| target("--metrics-file", p));
            if let Some(p) = &self.metrics_file {
                written.push(("--metrics-file", p.clone()));
            }
            sinks.push(Box::new(MetricsSink::new(m.clone(), file)));
        }
        if let Some(interval) = self.progress {
            sinks.push(progress::for_stderr(interval));
        }
        Ok(Outputs {
            sinks,
            problems,
            metrics,
            pushgateway: self.pushgateway.clone(),
            written,
        })
    }

    /// `dispatch_runner report`: replays a trace file's events through the file outputs.
    pub fn replay_trace(&self, trace: &Path) -> Result<Delivery, String> {
        let trace = crate::reporter::trace::read_trace(trace)?;
        let plan = OutputPlan {
            progress: None,
            pushgateway: None,
            ..self.clone()
        };
        let mut outputs = plan.build()?;
        replay(&trace.run.events, &mut outputs.sinks);
        drop(std::mem::take(&mut outputs.sinks));
        Ok(outputs.delivery(Vec::new()))
    }
}

impl Outputs {
    /// Call once the run is over (and the sinks are back): pushes the metrics if asked, and
    /// reports what could not be written.
    pub async fn finish(mut self, sinks: Vec<Box<dyn EventSink>>) -> Delivery {
        // Dropping the sinks closes files and stops progress threads before anything is printed.
        drop(sinks);
        drop(std::mem::take(&mut self.sinks));
        let mut warnings = Vec::new();
        if let (Some(m), Some(url)) = (&self.metrics, &self.pushgateway)
            && let Err(e) = m.push(url).await
        {
            warnings.push(crate::redact::redact_text(&e).into_owned());
        }
        self.delivery(warnings)
    }

    fn delivery(self, warnings: Vec<String>) -> Delivery {
        let errors = self.problems.take();
        let written = self
            .written
            .into_iter()
            .filter(|(flag, _)| !errors.iter().any(|e| e.contains(flag)))
            .collect();
        Delivery {
            errors,
            warnings,
            written,
        }
    }
}
