//! `dispatch_runner cache stats|prune`: what the result cache of a trace folder holds, and
//! removing from it on demand. One JSON document on stdout.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use super::store::Store;
use super::{CACHE_DIR, CacheConfig};
use crate::config::Config;

pub const CACHE_HELP: &str = "\
The cache lives in <trace_dir>/cache: index.sqlite (one row per stored result) and blobs/
(the declared output files, by content). Deleting the folder is always safe: every task with a
`cache` object then runs again.

Exit codes:
  0    done
  3    the cache cannot be opened or changed";

#[derive(Debug, Args, Clone)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Debug, Subcommand, Clone)]
pub enum CacheAction {
    /// Print the number of stored results, their size, their hits and the stored files.
    #[command(after_help = CACHE_HELP)]
    Stats(CacheDirArgs),
    /// Remove stored results over the age and size caps (configuration `cache:`, or the flags),
    /// then the stored files no result names; print what was removed.
    #[command(after_help = CACHE_HELP)]
    Prune(PruneArgs),
}

#[derive(Debug, Args, Clone, Default)]
pub struct CacheDirArgs {
    /// The trace folder whose cache to use (default: the configured trace_dir, else ./traces).
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct PruneArgs {
    #[command(flatten)]
    pub dir: CacheDirArgs,
    /// Keep at most this many bytes of stored results, least recently used removed first
    /// (default: cache.max_bytes, else 1 GiB).
    #[arg(long, value_name = "BYTES")]
    pub max_bytes: Option<u64>,
    /// Remove results stored longer ago than this (default: cache.max_age_seconds, else 7 days).
    #[arg(long, value_name = "S", value_parser = parse_age)]
    pub max_age_seconds: Option<f64>,
    /// Remove everything.
    #[arg(long, conflicts_with_all = ["max_bytes", "max_age_seconds"])]
    pub all: bool,
}

fn parse_age(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' must be a number of seconds, 0 or more")),
    }
}

fn trace_dir(config: &Config, flag: Option<&PathBuf>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.clone();
    }
    crate::frontend::settings(
        &[config.file_layer(), config.env.clone()],
        &Default::default(),
        &Default::default(),
        &config.file.agents,
    )
    .trace_dir
}

fn print(doc: serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).expect("JSON values serialize")
    );
}

fn fail(message: &str) -> u8 {
    eprintln!("dispatch_runner: error: {message}");
    print(json!({"status": "error", "error": message}));
    crate::frontend::EXIT_RUNNER
}

pub fn main(config: &Config, args: CacheArgs) -> u8 {
    let caps: &CacheConfig = &config.file.cache;
    let (dir_args, prune) = match &args.action {
        CacheAction::Stats(d) => (d, None),
        CacheAction::Prune(p) => (&p.dir, Some(p)),
    };
    let dir = trace_dir(config, dir_args.trace_dir.as_ref()).join(CACHE_DIR);
    let shown = dir.display().to_string();
    if !dir.is_dir() {
        // Nothing stored yet: say so without creating anything.
        let mut doc = json!({"cache_dir": shown, "exists": false, "entries": 0, "bytes": 0});
        if prune.is_some() {
            doc["removed_entries"] = json!(0);
            doc["removed_blobs"] = json!(0);
            doc["freed_bytes"] = json!(0);
        }
        print(doc);
        return crate::frontend::EXIT_OK;
    }
    let mut store = match Store::open(&dir) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let doc = match prune {
        None => store
            .stats()
            .map(|s| serde_json::to_value(s).expect("serializes")),
        Some(p) => {
            let (max_bytes, max_age) = if p.all {
                (0, -1.0)
            } else {
                (
                    p.max_bytes.unwrap_or_else(|| caps.max_bytes()),
                    p.max_age_seconds.unwrap_or_else(|| caps.max_age_seconds()),
                )
            };
            let now = super::now_unix();
            // On demand, unnamed files go at once (a run storing right now may lose an entry:
            // a miss next time, nothing worse).
            store
                .prune(max_bytes, max_age, now, Duration::ZERO)
                .map(|p| serde_json::to_value(p).expect("serializes"))
        }
    };
    match doc {
        Ok(mut doc) => {
            doc["cache_dir"] = json!(shown);
            doc["exists"] = json!(true);
            print(doc);
            crate::frontend::EXIT_OK
        }
        Err(e) => fail(&format!("cache index in '{shown}': {e}")),
    }
}
