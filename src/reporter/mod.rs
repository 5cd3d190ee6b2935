//! Consumers of the event stream: the recorder (which the result document and the trace are read
//! from) and, one file each, every other output: live progress, the NDJSON event stream,
//! Prometheus metrics, JUnit XML, the HTML report and the Chrome trace. [`outputs`] turns the
//! command-line flags into these sinks; [`compact`] is the agent-sized form of the result.

pub mod chrome_trace;
pub mod compact;
pub mod html;
pub mod junit;
pub mod ledger;
pub mod log;
pub mod metrics;
pub mod ndjson;
pub mod output;
pub mod outputs;
pub mod progress;
pub mod recorder;
pub mod result;
pub mod stream;
pub mod trace;

pub use recorder::{Recorder, RunRecord};
pub use result::{RunResult, TaskResult};
pub use trace::Trace;
