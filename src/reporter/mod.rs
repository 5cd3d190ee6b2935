//! Consumers of the event stream: the recorder (which the result document and the trace are read
//! from) and, one file each, every other output.

pub mod log;
pub mod recorder;
pub mod result;
pub mod trace;

pub use recorder::{Recorder, RunRecord};
pub use result::{RunResult, TaskResult};
pub use trace::Trace;
