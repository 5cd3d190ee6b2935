//! The `dispatch_runner` binary: flags in, one library call, an exit code out. Everything else
//! (reading and checking the batch, settings, running, the JSON document) is
//! [`dispatch_runner::frontend`], shared with the server.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = dispatch_runner::cli::Cli::parse();
    ExitCode::from(dispatch_runner::frontend::main(cli))
}
