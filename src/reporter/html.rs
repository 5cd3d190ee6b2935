//! The run report: ONE self-contained HTML file (inline CSS, SVG and a little JS; a Content
//! Security Policy forbids every network request) with the summary, a timeline of every attempt
//! on its worker lane coloured by outcome, the dependency graph, and each task's details.
//!
//! Everything is rendered here, server-side, as static markup: the page reads without JS, opens
//! instantly for 1,000 tasks (no layout work in script), and the script only filters and jumps.
//!
//! Task output is hostile input: every piece of it goes through [`esc`], and the Content Security
//! Policy admits only this file's own script and style, by hash, so even markup that slipped
//! through escaping could not run a script or an inline event handler.

use std::collections::HashMap;
use std::fmt::Write;

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::events::{AttemptOutcome, EventKind, TaskStatus};
use crate::reporter::recorder::{AttemptRecord, RunRecord, TaskRecord};

/// At most this much of a task's input or output is shown; the trace has all of it.
const MAX_SHOWN: usize = 16 * 1024;
/// Above this many edges the graph shows nodes only; thousands of crossing lines help nobody.
const MAX_EDGES: usize = 10_000;

const LANE_H: f64 = 18.0;
const LANE_GAP: f64 = 4.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 24.0;
const NODE_W: f64 = 170.0;
const NODE_H: f64 = 20.0;
const COL_W: f64 = 220.0;
/// Leaves a 12 px corridor between rows for edges that skip columns.
const ROW_H: f64 = 32.0;
/// Graph margin left of the first column and above the first row.
const MARGIN: f64 = 10.0;
/// A bar never gets narrower than this, however short the attempt (its title keeps the time).
const MIN_BAR_W: f64 = 3.0;

/// Renders the record (already redacted) as one HTML document.
pub fn render(record: &RunRecord) -> Vec<u8> {
    let mut h = String::with_capacity(64 * 1024 + record.tasks.len() * 2048);
    let title = format!("dispatch_runner run {}", record.run_id);
    let status = record
        .status
        .map(|s| format!("{s:?}").to_lowercase())
        .unwrap_or_else(|| "unfinished".into());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src '{}'; script-src '{}'; base-uri 'none'; form-action 'none'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body>\n",
        csp_hash(CSS),
        csp_hash(JS),
        esc(&title)
    );
    let _ = writeln!(
        h,
        "<header><h1>{}</h1><span class=\"badge s-{status}\">{status}</span></header>",
        esc(&title)
    );
    summary(&mut h, record);
    timeline(&mut h, record);
    graph(&mut h, record);
    tasks(&mut h, record);
    let _ = write!(h, "<script>{JS}</script>\n</body></html>\n");
    h.into_bytes()
}

fn summary(h: &mut String, r: &RunRecord) {
    let s = &r.summary;
    let attempts: usize = r.tasks.iter().map(|t| t.attempts.len()).sum();
    let retries = r
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::RetryScheduled { .. }))
        .count();
    let cancelled = r.events.iter().find_map(|e| match &e.kind {
        EventKind::RunCancelled { reason } => Some(format!("{reason:?}")),
        _ => None,
    });
    h.push_str("<section id=\"summary\"><h2>Summary</h2><div class=\"cards\">");
    let card = |h: &mut String, class: &str, label: &str, value: String| {
        let _ = write!(
            h,
            "<div class=\"card {class}\"><div class=\"v\">{}</div><div class=\"l\">{label}</div></div>",
            esc(&value)
        );
    };
    card(h, "", "tasks", s.total_tasks.to_string());
    card(h, "s-success", "succeeded", s.successful.to_string());
    card(h, "s-error", "failed", s.failed.to_string());
    card(h, "s-timeout", "timed out", s.timed_out.to_string());
    card(h, "s-skipped", "skipped", s.skipped.to_string());
    card(h, "s-cancelled", "cancelled", s.cancelled.to_string());
    card(
        h,
        "flaky",
        "flaky",
        r.tasks.iter().filter(|t| is_flaky(t)).count().to_string(),
    );
    card(h, "", "attempts", attempts.to_string());
    card(h, "", "retries", retries.to_string());
    card(h, "", "wall time", human_ms(s.total_time_ms as f64));
    if !s.files.is_empty() {
        card(h, "", "files read", s.files.read.to_string());
        card(h, "", "files written", s.files.written.to_string());
    }
    h.push_str("</div><table class=\"kv\">");
    let mut row = |k: &str, v: &str| {
        let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(v));
    };
    row("run id", &r.run_id);
    row("started", &r.started_at);
    row("finished", r.finished_at.as_deref().unwrap_or("-"));
    if let Some(c) = &cancelled {
        row("cancelled", &c.to_lowercase());
    }
    for key in ["max_workers", "timeout_seconds", "retries", "fail_fast"] {
        if let Some(v) = r.config.get(key) {
            row(&format!("config.{key}"), &v.to_string());
        }
    }
    h.push_str("</table></section>\n");
}

fn timeline(h: &mut String, r: &RunRecord) {
    let end_ms = r
        .events
        .last()
        .map_or(r.summary.total_time_ms as f64, |e| e.elapsed_ms)
        .max(1.0);
    let lanes = r
        .tasks
        .iter()
        .flat_map(|t| t.attempts.iter().map(|a| a.worker + 1))
        .max()
        .unwrap_or(0)
        .max(
            r.config
                .get("max_workers")
                .and_then(Value::as_u64)
                .unwrap_or(1) as usize,
        )
        .max(1);
    let mut per_lane = vec![0usize; lanes];
    for a in r.tasks.iter().flat_map(|t| &t.attempts) {
        per_lane[a.worker.min(lanes - 1)] += 1;
    }
    let busiest = per_lane.iter().copied().max().unwrap_or(0);
    // Wide enough that the busiest lane gets ~14 px per bar, within what a browser scrolls well.
    let width = (busiest as f64 * 14.0).clamp(1000.0, 16000.0);
    let px = width / end_ms;
    let height = TOP + lanes as f64 * (LANE_H + LANE_GAP) + 8.0;
    let _ = write!(
        h,
        "<section id=\"timeline\"><h2>Timeline</h2><p class=\"legend\">One bar per attempt, on the worker lane it ran on: \
         <i class=\"o-success\"></i>success <i class=\"o-error\"></i>error <i class=\"o-timeout\"></i>timeout \
         <i class=\"o-cancelled\"></i>cancelled <i class=\"flaky-swatch\"></i>flaky (the passing attempt of a task that failed first). \
         Bars are at least {MIN_BAR_W} px wide; hover for the real duration, click to open the task.</p>\
         <div class=\"scroll\"><svg id=\"timeline-svg\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\">",
        (LEFT + width + 20.0).round(),
        height.round()
    );
    // Axis: about ten ticks at round numbers.
    let step = nice_step(end_ms / 10.0);
    let mut t = 0.0;
    while t <= end_ms + 0.5 {
        let x = LEFT + t * px;
        let _ = write!(
            h,
            "<line class=\"tick\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{height:.0}\"/><text class=\"axis\" x=\"{x:.1}\" y=\"14\">{}</text>",
            TOP - 4.0,
            human_ms(t)
        );
        t += step;
    }
    for lane in 0..lanes {
        let y = TOP + lane as f64 * (LANE_H + LANE_GAP);
        let _ = write!(
            h,
            "<rect class=\"lane\" x=\"{LEFT}\" y=\"{y}\" width=\"{width:.0}\" height=\"{LANE_H}\"/><text class=\"lane-label\" x=\"4\" y=\"{}\">worker {lane}</text>",
            y + 13.0
        );
    }
    for t in &r.tasks {
        let flaky = is_flaky(t);
        for a in &t.attempts {
            let dur = a.duration_ms.unwrap_or((end_ms - a.start_ms).max(0.0));
            let x = LEFT + a.start_ms * px;
            // A few milliseconds in a long run is a fraction of a pixel: drawn at the minimum
            // width so it can be seen and hovered, with the measured time in its title.
            let w = (dur * px).max(MIN_BAR_W);
            let y = TOP + a.worker as f64 * (LANE_H + LANE_GAP);
            let outcome = outcome(a);
            let _ = write!(
                h,
                "<rect class=\"bar o-{outcome}\" data-task=\"{}\" data-attempt=\"{}\" data-ms=\"{dur:.3}\" x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{LANE_H}\"><title>{}</title></rect>",
                esc(&t.task_id),
                a.attempt,
                esc(&attempt_tooltip(t, a, dur))
            );
            if flaky && a.outcome == Some(AttemptOutcome::Success) {
                // A tab on top of the passing bar, wider than a minimum-width bar.
                let mw = w.max(9.0);
                let _ = write!(
                    h,
                    "<rect class=\"flaky-mark\" data-task=\"{}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{mw:.1}\" height=\"6\" rx=\"1.5\"><title>{} is flaky: failed, then passed on a retry</title></rect>",
                    esc(&t.task_id),
                    x + (w - mw) / 2.0,
                    y - 3.0,
                    esc(&t.task_id),
                );
            }
            // Wide bars carry their task id; the tooltip has it for the rest.
            let fits = ((w - 6.0) / 6.5).floor() as usize;
            if fits >= 4 {
                let _ = write!(
                    h,
                    "<text class=\"bar-label\" x=\"{:.1}\" y=\"{}\">{}</text>",
                    x + 3.0,
                    y + 13.0,
                    esc(&short(&t.task_id, fits))
                );
            }
        }
    }
    h.push_str("</svg></div></section>\n");
}

fn attempt_tooltip(t: &TaskRecord, a: &AttemptRecord, dur: f64) -> String {
    let mut s = format!(
        "{} ({}) attempt {}: {} in {}",
        t.task_id,
        t.agent,
        a.attempt,
        outcome(a),
        human_ms(dur)
    );
    if let Some(e) = &a.error {
        let _ = write!(s, "\n{}", short(&e.message, 300));
    }
    if is_flaky(t) && a.outcome == Some(AttemptOutcome::Success) {
        s.push_str("\nflaky: earlier attempts failed");
    }
    s
}

/// Failed (or timed out) at least once, then passed: what JUnit consumers call flaky.
fn is_flaky(t: &TaskRecord) -> bool {
    t.status == Some(TaskStatus::Success)
        && t.attempts
            .iter()
            .any(|a| a.error.is_some() || a.outcome != Some(AttemptOutcome::Success))
}

fn graph(h: &mut String, r: &RunRecord) {
    let index: HashMap<&str, usize> = r
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.task_id.as_str(), i))
        .collect();
    let levels = levels(r, &index);
    let mut rows = vec![0usize; levels.iter().copied().max().map_or(0, |m| m + 1)];
    // (column, row) of each task.
    let mut cell = vec![(0usize, 0usize); r.tasks.len()];
    for (i, &l) in levels.iter().enumerate() {
        cell[i] = (l, rows[l]);
        rows[l] += 1;
    }
    let pos =
        |(col, row): (usize, usize)| (MARGIN + col as f64 * COL_W, MARGIN + row as f64 * ROW_H);
    let width = 2.0 * MARGIN + rows.len() as f64 * COL_W;
    let height = 2.0 * MARGIN + rows.iter().copied().max().unwrap_or(0) as f64 * ROW_H;
    let edges: usize = r.tasks.iter().map(|t| t.dependencies.len()).sum();
    let _ = write!(
        h,
        "<section id=\"graph\"><h2>Dependency graph</h2><p class=\"legend\">Columns are dependency levels; an arrow runs from a dependency to the task that waits for it \
         (arrows that skip columns run between the rows). Outline: final status; <span class=\"flaky-pill\">flaky</span> failed, then passed on a retry.{}</p>\
         <div class=\"scroll tall\"><svg id=\"graph-svg\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\">",
        if edges > MAX_EDGES {
            format!(" {edges} dependencies are too many to draw; see each task's details.")
        } else {
            String::new()
        }
    );
    if edges <= MAX_EDGES {
        h.push_str("<defs><marker id=\"arrow\" viewBox=\"0 0 8 8\" refX=\"8\" refY=\"4\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto\"><path d=\"M0,0 L8,4 L0,8 z\" fill=\"#9aa3ad\"/></marker></defs><g class=\"edges\">");
        let mut k = 0usize;
        for (i, t) in r.tasks.iter().enumerate() {
            for d in &t.dependencies {
                if let Some(&j) = index.get(d.as_str()) {
                    let _ = write!(
                        h,
                        "<path data-from=\"{}\" data-to=\"{}\" d=\"{}\"/>",
                        esc(d),
                        esc(&t.task_id),
                        edge_path(cell[j], cell[i], k, &pos)
                    );
                    k += 1;
                }
            }
        }
        h.push_str("</g>");
    }
    for (i, t) in r.tasks.iter().enumerate() {
        let (x, y) = pos(cell[i]);
        let status = t.status.map_or("unfinished", TaskStatus::as_str);
        let flaky = is_flaky(t);
        let _ = write!(
            h,
            "<g class=\"node s-{status}{}\" data-task=\"{id}\"><rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"4\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text>",
            if flaky { " flaky" } else { "" },
            x + 6.0,
            y + 14.0,
            esc(&short(&t.task_id, if flaky { 17 } else { 24 })),
            id = esc(&t.task_id),
        );
        if flaky {
            let _ = write!(
                h,
                "<g class=\"flaky-mark\"><rect x=\"{:.0}\" y=\"{:.0}\" width=\"38\" height=\"14\" rx=\"7\"/><text x=\"{:.0}\" y=\"{:.0}\">flaky</text></g>",
                x + NODE_W - 42.0,
                y + 3.0,
                x + NODE_W - 23.0,
                y + 13.5,
            );
        }
        let _ = write!(
            h,
            "<title>{} ({}): {status}{}</title></g>",
            esc(&t.task_id),
            esc(&t.agent),
            if flaky {
                ", flaky: failed, then passed on a retry"
            } else {
                ""
            }
        );
    }
    h.push_str("</svg></div></section>\n");
}

/// The path of an edge from the right side of `from`'s box to the left side of `to`'s box
/// that crosses no other box. Between neighbouring columns a curve through the gap between
/// them suffices. An edge that skips columns (or, in a hand-edited trace with a cycle, runs
/// backwards) goes right into the gap after its source column, along it to the corridor between
/// two rows next to the target, along that corridor (boxes never reach into it) to the gap
/// before the target column, and into the target. `k` spreads edges over a few parallel tracks
/// in each gap and corridor so that they do not all draw on top of one another.
fn edge_path(
    from: (usize, usize),
    to: (usize, usize),
    k: usize,
    pos: &dyn Fn((usize, usize)) -> (f64, f64),
) -> String {
    if to.0 == from.0 + 1 {
        let (fx, fy) = pos(from);
        let (tx, ty) = pos(to);
        let (x1, y1) = (fx + NODE_W, fy + NODE_H / 2.0);
        let (x2, y2) = (tx, ty + NODE_H / 2.0);
        let mx = (x1 + x2) / 2.0;
        return format!("M{x1:.1},{y1:.1} C{mx:.1},{y1:.1} {mx:.1},{y2:.1} {x2:.1},{y2:.1}");
    }
    rounded(&route(from, to, k, pos))
}

/// The corners of an edge that does not run between neighbouring columns (see [`edge_path`]).
fn route(
    from: (usize, usize),
    to: (usize, usize),
    k: usize,
    pos: &dyn Fn((usize, usize)) -> (f64, f64),
) -> Vec<(f64, f64)> {
    let (fx, fy) = pos(from);
    let (tx, ty) = pos(to);
    let (x1, y1) = (fx + NODE_W, fy + NODE_H / 2.0);
    let (x2, y2) = (tx, ty + NODE_H / 2.0);
    let gutter = COL_W - NODE_W;
    let track = (k % 7) as f64 * (gutter - 20.0) / 6.0;
    let out_x = x1 + 10.0 + track;
    let in_x = x2 - 10.0 - track;
    let gap = ROW_H - NODE_H;
    let shift = ((k % 3) as f64 - 1.0) * gap / 4.0;
    // The corridor on the side of the target row that faces the source.
    let corridor = if y1 <= y2 {
        ty - gap / 2.0 + shift
    } else {
        ty + NODE_H + gap / 2.0 + shift
    };
    vec![
        (x1, y1),
        (out_x, y1),
        (out_x, corridor),
        (in_x, corridor),
        (in_x, y2),
        (x2, y2),
    ]
}

/// An orthogonal polyline as a path with small rounded corners. A corner's curve stays within
/// `RADIUS` of the corner on its two legs, which lie in free space (gaps and corridors).
fn rounded(points: &[(f64, f64)]) -> String {
    const RADIUS: f64 = 4.0;
    let mut pts: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for &p in points {
        if pts
            .last()
            .is_none_or(|q| (q.0 - p.0).abs() > 0.05 || (q.1 - p.1).abs() > 0.05)
        {
            pts.push(p);
        }
    }
    let mut d = format!("M{:.1},{:.1}", pts[0].0, pts[0].1);
    for i in 1..pts.len() {
        let (x, y) = pts[i];
        if i + 1 == pts.len() {
            let _ = write!(d, " L{x:.1},{y:.1}");
            break;
        }
        let (px, py) = pts[i - 1];
        let (nx, ny) = pts[i + 1];
        let len_in = (x - px).abs() + (y - py).abs();
        let len_out = (nx - x).abs() + (ny - y).abs();
        let r = RADIUS.min(len_in / 2.0).min(len_out / 2.0);
        let toward = |ax: f64, ay: f64, bx: f64, by: f64, len: f64| {
            (ax + (bx - ax) * r / len, ay + (by - ay) * r / len)
        };
        let (ix, iy) = toward(x, y, px, py, len_in);
        let (ox, oy) = toward(x, y, nx, ny, len_out);
        let _ = write!(d, " L{ix:.1},{iy:.1} Q{x:.1},{y:.1} {ox:.1},{oy:.1}");
    }
    d
}

/// Dependency level of each task: 0 for no dependencies, else one more than its deepest one.
fn levels(r: &RunRecord, index: &HashMap<&str, usize>) -> Vec<usize> {
    let n = r.tasks.len();
    let mut level = vec![usize::MAX; n];
    // Iterative depth-first search; validated batches are acyclic, but a hand-edited trace
    // may not be, so a task on a cycle is placed at level 0 instead of looping.
    let mut on_stack = vec![false; n];
    for start in 0..n {
        let mut stack = vec![(start, 0usize)];
        while let Some(top) = stack.last_mut() {
            let i = top.0;
            if level[i] != usize::MAX {
                stack.pop();
                continue;
            }
            on_stack[i] = true;
            let deps = &r.tasks[i].dependencies;
            if top.1 < deps.len() {
                let d = &deps[top.1];
                top.1 += 1;
                if let Some(&j) = index.get(d.as_str())
                    && level[j] == usize::MAX
                    && !on_stack[j]
                {
                    stack.push((j, 0));
                }
                continue;
            }
            level[i] = deps
                .iter()
                .filter_map(|d| index.get(d.as_str()))
                .filter(|&&j| level[j] != usize::MAX)
                .map(|&j| level[j] + 1)
                .max()
                .unwrap_or(0);
            on_stack[i] = false;
            stack.pop();
        }
    }
    level
}

fn tasks(h: &mut String, r: &RunRecord) {
    let inputs: HashMap<&str, &Value> = r
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::RunStarted { tasks, .. } => Some(tasks),
            _ => None,
        })
        .map(|ts| ts.iter().map(|t| (t.task_id.as_str(), &t.input)).collect())
        .unwrap_or_default();
    h.push_str(
        "<section id=\"tasks\"><h2>Tasks</h2><div class=\"filters\"><input id=\"filter\" type=\"search\" placeholder=\"filter by id, agent or error\">",
    );
    for s in [
        "all",
        "success",
        "flaky",
        "error",
        "timeout",
        "skipped",
        "cancelled",
    ] {
        let _ = write!(
            h,
            "<label><input type=\"radio\" name=\"status\" value=\"{s}\"{}> {s}</label>",
            if s == "all" { " checked" } else { "" }
        );
    }
    h.push_str("<span id=\"shown\"></span></div><div id=\"task-list\">\n");
    for t in &r.tasks {
        let status = t.status.map_or("unfinished", TaskStatus::as_str);
        let flaky = is_flaky(t);
        let err = t
            .error
            .as_ref()
            .map(|e| short(&e.message, 160))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<details class=\"task\" id=\"task-{id}\" data-status=\"{status}\" data-flaky=\"{}\" data-text=\"{text}\"><summary><span class=\"id\">{id}</span><span class=\"agent\">{agent}</span><span class=\"st\"><span class=\"badge s-{status}\">{status}</span>{}</span><span class=\"n\">{n} attempt{pl}</span><span class=\"n\">{time}</span><span class=\"err\">{err}</span></summary><div class=\"body\">",
            u8::from(flaky),
            if flaky {
                "<span class=\"badge flaky\" title=\"failed, then passed on a retry\">flaky</span>"
            } else {
                ""
            },
            id = esc(&t.task_id),
            text = esc(&format!("{} {} {}", t.task_id, t.agent, err).to_lowercase()),
            agent = esc(&t.agent),
            n = t.attempts.len(),
            pl = if t.attempts.len() == 1 { "" } else { "s" },
            time = human_ms(t.execution_time_ms as f64),
            err = esc(&err),
        );
        if !t.description.is_empty() {
            let _ = write!(h, "<p>{}</p>", esc(&t.description));
        }
        if !t.dependencies.is_empty() {
            h.push_str("<p>depends on: ");
            for d in &t.dependencies {
                let _ = write!(
                    h,
                    "<a href=\"#task-{0}\" data-task=\"{0}\">{0}</a> ",
                    esc(d)
                );
            }
            h.push_str("</p>");
        }
        if let Some(e) = &t.error {
            let kind = serde_json::to_value(e.kind).unwrap_or_default();
            let _ = write!(
                h,
                "<p class=\"error\"><b>{}</b> {}</p>",
                esc(kind.as_str().unwrap_or("error")),
                esc(&e.message)
            );
        }
        if !t.attempts.is_empty() {
            h.push_str("<table class=\"attempts\"><tr><th>#</th><th>worker</th><th>started</th><th>duration</th><th>outcome</th><th>error</th></tr>");
            for a in &t.attempts {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"o-text-{o}\">{o}</td><td>{}</td></tr>",
                    a.attempt,
                    a.worker,
                    esc(&a.started_at),
                    a.duration_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                    esc(&a
                        .error
                        .as_ref()
                        .map(|e| e.message.clone())
                        .unwrap_or_default()),
                    o = outcome(a),
                );
            }
            h.push_str("</table>");
        }
        files_table(h, &t.files);
        if let Some(input) = inputs.get(t.task_id.as_str()).filter(|v| !v.is_null()) {
            let _ = write!(h, "<h4>input</h4><pre>{}</pre>", esc(&shown(input)));
        }
        if let Some(output) = &t.output {
            output_blocks(h, output);
        }
        h.push_str("</div></details>\n");
    }
    h.push_str("</div></section>\n");
}

/// The files a task read and wrote: path, size and the start of the digest (all of it on
/// hover). Paths are hostile input like any output.
fn files_table(h: &mut String, files: &crate::files::FilesTouched) {
    if files.is_empty() {
        return;
    }
    h.push_str(
        "<h4>files</h4><table class=\"files\"><tr><th></th><th>path</th><th>size</th><th>sha256</th></tr>",
    );
    for (what, list) in [("read", &files.read), ("written", &files.written)] {
        for f in list {
            let hex = f.digest.strip_prefix("sha256:").unwrap_or(&f.digest);
            let _ = write!(
                h,
                "<tr><td>{what}</td><td class=\"path\">{}</td><td>{}</td><td title=\"{}\">{}</td></tr>",
                esc(&f.path),
                human_bytes(f.bytes),
                esc(&f.digest),
                esc(&hex.chars().take(12).collect::<String>()),
            );
        }
    }
    h.push_str("</table>");
    if files.omitted > 0 {
        let _ = write!(
            h,
            "<p class=\"note\">{} more not recorded (caps on file lists)</p>",
            files.omitted
        );
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A task's output. Text fields (a command's `stdout` and `stderr`, any string with line breaks)
/// are shown as the text they are, each in its own block, instead of as JSON strings full of
/// `\n`; the rest of the output follows as JSON.
fn output_blocks(h: &mut String, output: &Value) {
    // Empty streams stay in the JSON (as "") rather than as blocks of their own.
    let is_text = |k: &str, v: &Value| {
        v.as_str().is_some_and(|s| {
            !s.is_empty() && (matches!(k, "stdout" | "stderr") || s.contains('\n'))
        })
    };
    type Fields<'a> = Vec<(&'a String, &'a Value)>;
    let (texts, rest): (Fields, Fields) = match output {
        Value::Object(m) => m.iter().partition(|(k, v)| is_text(k, v)),
        Value::String(s) if s.contains('\n') => {
            let _ = write!(
                h,
                "<h4>output</h4><pre class=\"text\" data-field=\"\">{}</pre>",
                esc(&tail(s))
            );
            return;
        }
        _ => {
            let _ = write!(h, "<h4>output</h4><pre>{}</pre>", esc(&shown(output)));
            return;
        }
    };
    for (k, v) in texts {
        let text = v.as_str().unwrap_or_default();
        let _ = write!(
            h,
            "<h4>output.{k}</h4><pre class=\"text\" data-field=\"{k}\">{}</pre>",
            esc(&tail(text)),
            k = esc(k),
        );
    }
    if !rest.is_empty() {
        let rest: serde_json::Map<String, Value> = rest
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let _ = write!(
            h,
            "<h4>output</h4><pre>{}</pre>",
            esc(&shown(&Value::Object(rest)))
        );
    }
}

/// The end of a long text (where test runners and compilers put the failure), at most
/// [`MAX_SHOWN`] bytes.
fn tail(text: &str) -> String {
    if text.len() <= MAX_SHOWN {
        return text.to_string();
    }
    let mut start = text.len() - MAX_SHOWN;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[... {start} earlier bytes; the trace file has everything]\n{}",
        &text[start..]
    )
}

fn shown(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    if text.len() <= MAX_SHOWN {
        return text;
    }
    let mut end = MAX_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[... {} more bytes; the trace file has everything]",
        &text[..end],
        text.len() - end
    )
}

fn outcome(a: &AttemptRecord) -> String {
    a.outcome
        .map(|o| format!("{o:?}").to_lowercase())
        .unwrap_or_else(|| "unfinished".into())
}

fn short(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() <= max && line.len() == s.len() {
        return line.to_string();
    }
    let cut: String = line.chars().take(max).collect();
    format!("{cut}…")
}

fn human_ms(ms: f64) -> String {
    if ms < 10.0 && ms.fract() != 0.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 120_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{:.1} min", ms / 60_000.0)
    }
}

/// A round step (1, 2 or 5 times a power of ten) at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1.0);
    let pow = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * pow)
}

/// A CSP source for an inline script or style: its SHA-256, base64-encoded.
pub(crate) fn csp_hash(text: &str) -> String {
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root{--ok:#2e9e44;--err:#d63b3b;--to:#e8890c;--skip:#9aa3ad;--can:#5f6b76;--flaky:#f2c200;--bg:#fff;--fg:#1d232a;--mut:#66707a;--line:#e3e7eb}
*{box-sizing:border-box}body{margin:0;padding:16px 24px;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:center;gap:12px}h1{font-size:20px;margin:0}h2{font-size:16px;margin:24px 0 8px}h4{margin:10px 0 4px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;background:var(--can)}
.s-success .v,.o-text-success{color:var(--ok)}.s-error .v,.o-text-error{color:var(--err)}.s-timeout .v,.o-text-timeout{color:var(--to)}.s-skipped .v{color:var(--skip)}.s-cancelled .v{color:var(--can)}
.badge.s-success{background:var(--ok)}.badge.s-error,.badge.s-failure{background:var(--err)}.badge.s-timeout{background:var(--to)}.badge.s-skipped{background:var(--skip)}.badge.s-partial{background:var(--to)}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid var(--line);border-radius:6px;padding:6px 12px;min-width:90px}.card .v{font-size:20px;font-weight:600}.card .l{color:var(--mut);font-size:12px}
table{border-collapse:collapse}.kv{margin-top:8px}.kv th{text-align:left;color:var(--mut);font-weight:normal;padding:1px 12px 1px 0}
.legend{color:var(--mut);margin:4px 0}.legend i{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;border-radius:2px}
.scroll{overflow:auto;border:1px solid var(--line);border-radius:6px;max-height:520px}.scroll.tall{max-height:600px}
svg text{font-size:11px;fill:var(--fg)}.axis{fill:var(--mut)!important;text-anchor:middle}.tick{stroke:var(--line)}.lane{fill:#f5f7f9}.lane-label{fill:var(--mut)!important}
.bar{cursor:pointer;stroke:#fff;stroke-width:.5}.bar:hover{stroke:#000;stroke-width:1}
.o-success{fill:var(--ok);background:var(--ok)}.o-error{fill:var(--err);background:var(--err)}.o-timeout{fill:var(--to);background:var(--to)}.o-cancelled,.o-interrupted,.o-unfinished{fill:var(--can);background:var(--can)}
.edges path{fill:none;stroke:#b6bec6;stroke-width:1;marker-end:url(#arrow)}.bar-label{fill:#fff!important;pointer-events:none;font-size:10px}.node{cursor:pointer}.node>rect{fill:#fff;stroke-width:2;stroke:var(--can)}
.node.s-success>rect{stroke:var(--ok)}.node.s-error>rect{stroke:var(--err)}.node.s-timeout>rect{stroke:var(--to)}.node.s-skipped>rect{stroke:var(--skip);stroke-dasharray:3 2}
rect.flaky-mark,.flaky-mark rect{fill:var(--flaky);stroke:#a07800;stroke-width:.5}.flaky-mark text{fill:#3d2c00!important;font-size:10px;font-weight:600;text-anchor:middle}rect.flaky-mark{cursor:pointer}
.badge.flaky,.flaky-pill{background:var(--flaky);color:#3d2c00;margin-left:4px}.flaky-pill{display:inline-block;padding:0 6px;border-radius:7px;font-size:11px;font-weight:600}.legend i.flaky-swatch{background:var(--flaky)}.card.flaky .v{color:#a07800}
.filters{display:flex;gap:10px;align-items:center;flex-wrap:wrap;margin-bottom:8px}#filter{padding:4px 8px;min-width:260px}#shown{color:var(--mut)}
.task{border-bottom:1px solid var(--line)}.task summary{display:grid;grid-template-columns:minmax(160px,2fr) 80px 130px 90px 80px 4fr;gap:8px;align-items:center;padding:3px 4px;cursor:pointer}
.task summary:hover{background:#f5f7f9}.task .id{font-family:ui-monospace,monospace;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}.task .agent,.task .n{color:var(--mut)}
.task .err{color:var(--err);overflow:hidden;text-overflow:ellipsis;white-space:nowrap}.task .body{padding:4px 12px 12px}
.attempts td,.attempts th,.files td,.files th{border:1px solid var(--line);padding:2px 6px;text-align:left;vertical-align:top}.files .path{font-family:ui-monospace,monospace;word-break:break-all}.note{color:var(--mut)}
pre{background:#f5f7f9;padding:8px;border-radius:4px;max-height:320px;overflow:auto;white-space:pre-wrap;word-break:break-word}pre.text{font:12px/1.35 ui-monospace,monospace}
.error{color:var(--err)}.error,.attempts td{white-space:pre-wrap;word-break:break-word}
.hl{outline:2px solid #2a7de1}
"#;

const JS: &str = r#"
(function(){
  var list=document.getElementById('task-list');
  var rows=Array.prototype.slice.call(list.querySelectorAll('details.task'));
  var input=document.getElementById('filter');
  var shown=document.getElementById('shown');
  function apply(){
    var q=input.value.trim().toLowerCase();
    var s=document.querySelector('input[name=status]:checked').value;
    var n=0;
    rows.forEach(function(r){
      var ok=(s==='all'||r.dataset.status===s||(s==='flaky'&&r.dataset.flaky==='1'))&&(!q||r.dataset.text.indexOf(q)>=0);
      r.hidden=!ok; if(ok){n++;}
    });
    shown.textContent=n+' of '+rows.length+' tasks';
  }
  input.addEventListener('input',apply);
  document.querySelectorAll('input[name=status]').forEach(function(r){r.addEventListener('change',apply);});
  document.addEventListener('click',function(e){
    var el=e.target.closest('[data-task]');
    if(!el||el.tagName==='DETAILS'){return;}
    var d=document.getElementById('task-'+el.dataset.task);
    if(!d){return;}
    e.preventDefault();
    d.hidden=false; d.open=true; d.scrollIntoView({block:'center'});
    d.classList.add('hl'); setTimeout(function(){d.classList.remove('hl');},1200);
  });
  apply();
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(nice_step(0.2), 1.0);
        assert_eq!(nice_step(4000.0), 5000.0);
    }

    /// Every edge that skips columns, between any two cells of a 6 x 8 grid full of boxes, on
    /// any of its tracks, stays clear of every box's outline (stroke included): its segments,
    /// and the square each rounded corner is drawn in.
    #[test]
    fn routed_edges_cross_no_box() {
        let pos = |(c, r): (usize, usize)| (MARGIN + c as f64 * COL_W, MARGIN + r as f64 * ROW_H);
        let stroke = 1.0;
        let radius = 4.0;
        let cells: Vec<(usize, usize)> = (0..6).flat_map(|c| (0..8).map(move |r| (c, r))).collect();
        let meets = |(x0, y0, x1, y1): (f64, f64, f64, f64), cell: (usize, usize), m: f64| {
            let (bx, by) = pos(cell);
            x1 > bx - m && x0 < bx + NODE_W + m && y1 > by - m && y0 < by + NODE_H + m
        };
        for &from in &cells {
            for &to in &cells {
                if to.0 == from.0 + 1 || from == to {
                    continue;
                }
                for k in 0..21 {
                    let pts = route(from, to, k, &pos);
                    let n = pts.len();
                    let mut areas = Vec::new();
                    for (i, seg) in pts.windows(2).enumerate() {
                        let (a, b) = (seg[0], seg[1]);
                        assert!(a.0 == b.0 || a.1 == b.1, "orthogonal: {pts:?}");
                        let area = (a.0.min(b.0), a.1.min(b.1), a.0.max(b.0), a.1.max(b.1));
                        // The first and last segments end on their own boxes' sides.
                        let own = if i == 0 {
                            Some(from)
                        } else if i == n - 2 {
                            Some(to)
                        } else {
                            None
                        };
                        areas.push((area, own));
                    }
                    for c in &pts[1..n - 1] {
                        let corner = (c.0 - radius, c.1 - radius, c.0 + radius, c.1 + radius);
                        areas.push((corner, None));
                    }
                    for (area, own) in areas {
                        for &cell in &cells {
                            let m = if own == Some(cell) { -0.01 } else { stroke };
                            assert!(
                                !meets(area, cell, m),
                                "{from:?} -> {to:?} track {k}: {area:?} meets box {cell:?}: {pts:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn csp_hash_is_base64_sha256() {
        // The SHA-256 of nothing, as browsers expect it in a policy.
        assert_eq!(
            csp_hash(""),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn long_text_keeps_its_end() {
        let text = format!("{}é{}", "a".repeat(MAX_SHOWN), "the failure");
        let shown = tail(&text);
        assert!(shown.ends_with("the failure"), "{shown}");
        assert!(shown.starts_with("[... "), "{shown}");
        assert_eq!(tail("short\ntext"), "short\ntext");
    }

    #[test]
    fn short_times_keep_a_decimal() {
        assert_eq!(human_ms(1.36), "1.4 ms");
        assert_eq!(human_ms(7.0), "7 ms");
        assert_eq!(human_ms(250.4), "250 ms");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<script>'&\""), "&lt;script&gt;&#39;&amp;&quot;");
    }
}
