//! The configuration file and environment: where settings come from below the batch and the
//! command line.
//!
//! The file is YAML, found at `--config PATH`, else `$PARALLEL_DISPATCH_CONFIG`, else
//! `./dispatch.yaml`, else `/etc/parallel-dispatch/config.yaml`; having none is fine. Precedence,
//! highest first: command-line flag, the batch's `config`, environment, configuration file,
//! built-in default. Per-task settings beat per-agent ones, which beat the dispatcher's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::batch::{BatchConfig, BreakerConfig};
use crate::journal::FsyncPolicy;
use crate::llm::LlmConfig;
use crate::mcp::McpConfig;

pub const CONFIG_ENV: &str = "PARALLEL_DISPATCH_CONFIG";
pub const LOCAL_CONFIG: &str = "dispatch.yaml";
pub const SYSTEM_CONFIG: &str = "/etc/parallel-dispatch/config.yaml";

/// The configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub dispatcher: DispatcherSection,
    /// Settings per agent name (`command`, `coder`, `debug`, `mcp`).
    #[serde(default)]
    pub agents: BTreeMap<String, AgentSection>,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    #[serde(default)]
    pub mcp: McpConfig,
    /// Model backends of the `coder` and `debug` agents.
    #[serde(default)]
    pub llm: LlmConfig,
    #[serde(default)]
    pub logging: LoggingSection,
    /// The result cache of tasks with a `cache` object (`<trace_dir>/cache`).
    #[serde(default)]
    pub cache: crate::cache::CacheConfig,
    /// Where attempts run: in this process (default) or on a Redis pool's workers.
    #[serde(default)]
    pub executor: ExecutorSection,
    /// The run history (`<trace_dir>/history.sqlite`): durations that order the critical path
    /// and set `"auto"` timeouts.
    #[serde(default)]
    pub history: crate::history::HistorySection,
    /// Old traces and journals removed at the end of each run and by `dispatch_runner prune`.
    #[serde(default)]
    pub trace_retention: crate::retention::Retention,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSection {
    pub redis: Option<RedisSection>,
}

/// `executor.redis`: the pool `run` sends attempts to (see docs/scale-out.md). Flags and
/// `DISPATCH_REDIS_URL` win over it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://[user:password@]host:port/db` or `rediss://` (TLS).
    pub url: Option<String>,
    /// An attempt whose worker has not renewed it for this long is lost (default 30).
    pub lease_seconds: Option<f64>,
    /// Most times a task's attempt is lost with its worker and started again (default 3).
    pub max_redeliveries: Option<u32>,
    /// How long to keep reconnecting to Redis before giving up (default 30).
    pub reconnect_seconds: Option<f64>,
    /// Longest an attempt waits for a worker (default: no limit).
    pub queue_timeout_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSection {
    pub max_workers: Option<usize>,
    pub timeout_seconds: Option<f64>,
    pub trace_dir: Option<String>,
    pub retries: Option<u32>,
    pub retry_backoff_ms: Option<u64>,
    pub retry_backoff_max_ms: Option<u64>,
    pub fail_fast: Option<bool>,
    pub max_output_bytes: Option<usize>,
    pub max_expanded_input_bytes: Option<usize>,
    /// Root that agents' file paths must stay inside (default: the current directory).
    pub workspace: Option<String>,
    /// When the run's journal is forced to disk: `always`, `interval` (default) or `never`.
    /// `--journal-fsync` and `PARALLEL_DISPATCH_JOURNAL_FSYNC` win over it.
    pub journal_fsync: Option<FsyncPolicy>,
}

/// Per-agent settings; they override the dispatcher's and are overridden by the task's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub timeout_seconds: Option<f64>,
    pub retries: Option<u32>,
    /// Most tasks of this agent running at once, inside the global worker limit.
    pub max_concurrency: Option<usize>,
    /// Backend for agents that have several (`coder`, `debug`, `prompt`).
    pub backend: Option<String>,
    /// Put every task of this agent under one named circuit breaker (opt-in; a task's own
    /// `breaker` wins). 1 to 64 of `A-Za-z0-9_.-`.
    pub breaker: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// `error`, `warn`, `info`, `debug` or `trace` (default `warn`); RUST_LOG wins over it.
    pub level: Option<String>,
    pub format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A configuration problem: bad file, bad value, bad environment variable. Exit code 3.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Where: a file path with a key path, or an environment variable.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The loaded configuration: the file (if any) and the environment layer.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub file_path: Option<PathBuf>,
    pub file: FileConfig,
    pub env: BatchConfig,
    /// Which variable set each environment-layer field, for `dispatch_runner config`.
    pub env_sources: BTreeMap<&'static str, &'static str>,
    /// `PARALLEL_DISPATCH_JOURNAL_FSYNC`: not a batch setting (a batch cannot weaken the
    /// operator's durability choice), so it lives beside the environment layer.
    pub env_journal_fsync: Option<FsyncPolicy>,
    pub debug: bool,
}

impl Config {
    /// Finds and reads the configuration file and the environment.
    pub fn load(explicit: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
        let path = locate(explicit)?;
        let file = match &path {
            Some(p) => parse_file(p)?,
            None => FileConfig::default(),
        };
        let (env, env_sources) = env_layer()?;
        let env_journal_fsync = env_fsync()?;
        Ok(Config {
            file_path: path,
            file,
            env,
            env_sources,
            env_journal_fsync,
            debug: std::env::var("DISPATCH_DEBUG").is_ok_and(|v| v == "1" || v == "true"),
        })
    }

    /// The file's dispatcher and breaker settings as a configuration layer.
    pub fn file_layer(&self) -> BatchConfig {
        let d = &self.file.dispatcher;
        BatchConfig {
            max_workers: d.max_workers,
            timeout_seconds: d.timeout_seconds,
            trace_dir: d.trace_dir.clone(),
            retries: d.retries,
            retry_backoff_ms: d.retry_backoff_ms,
            retry_backoff_max_ms: d.retry_backoff_max_ms,
            fail_fast: d.fail_fast,
            max_output_bytes: d.max_output_bytes,
            max_expanded_input_bytes: d.max_expanded_input_bytes,
            max_batch_depth: None,
            circuit_breaker: self.file.circuit_breaker.clone(),
        }
    }

    /// The journal's fsync policy: the flag, else the environment, else the file, else
    /// `interval`.
    pub fn journal_fsync(&self, flag: Option<FsyncPolicy>) -> FsyncPolicy {
        flag.or(self.env_journal_fsync)
            .or(self.file.dispatcher.journal_fsync)
            .unwrap_or_default()
    }

    /// What runs keep between runs (journal fsync, result cache, history, retention), the
    /// flags of the command line over the file's settings.
    pub fn stores(
        &self,
        journal_fsync: Option<FsyncPolicy>,
        no_history: bool,
        no_cache: bool,
    ) -> crate::runner::StoreOptions {
        let mut cache = self.file.cache.clone();
        if no_cache {
            cache.enabled = Some(false);
        }
        crate::runner::StoreOptions {
            journal_fsync: self.journal_fsync(journal_fsync),
            cache,
            use_history: !no_history && self.file.history.enabled != Some(false),
            history: self.file.history.options(),
            retention: self.file.trace_retention.clone(),
        }
    }

    /// The log filter directive: RUST_LOG, else DISPATCH_DEBUG=1, else the file, else `warn`.
    pub fn log_directive(&self) -> String {
        if let Ok(v) = std::env::var("RUST_LOG")
            && !v.is_empty()
        {
            return v;
        }
        if self.debug {
            return "debug".into();
        }
        self.file
            .logging
            .level
            .clone()
            .unwrap_or_else(|| "warn".into())
    }

    pub fn workspace(&self) -> Option<PathBuf> {
        self.file.dispatcher.workspace.as_ref().map(PathBuf::from)
    }

    /// The configured MCP servers plus the built-in `archon`.
    pub fn mcp_servers(&self) -> McpConfig {
        self.file.mcp.clone().with_defaults()
    }

    /// Model settings: the file's `llm:` section, `agents.<name>.backend` as each agent's default
    /// backend, then the environment for whatever is still unset (keys are registered as
    /// secrets there).
    pub fn llm(&self) -> LlmConfig {
        let mut llm = self.file.llm.clone();
        let backend = |agent: &str| self.file.agents.get(agent).and_then(|a| a.backend.clone());
        if let Some(b) = backend("coder") {
            llm.agents.coder = Some(b);
        }
        if let Some(b) = backend("debug") {
            llm.agents.debug = Some(b);
        }
        if let Some(b) = backend("prompt") {
            llm.agents.prompt = Some(b);
        }
        llm.fill_from_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        llm
    }
}

fn locate(explicit: Option<&Path>) -> Result<Option<PathBuf>, Vec<ConfigError>> {
    let must_exist = |p: PathBuf, how: &str| {
        if p.is_file() {
            Ok(Some(p))
        } else {
            Err(vec![ConfigError {
                path: p.display().to_string(),
                message: format!("configuration file given by {how} does not exist"),
            }])
        }
    };
    if let Some(p) = explicit {
        return must_exist(p.to_path_buf(), "--config");
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return must_exist(PathBuf::from(p), CONFIG_ENV);
    }
    Ok([LOCAL_CONFIG, SYSTEM_CONFIG]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file()))
}

/// Parses a configuration file, reporting the key path and line of a problem.
pub fn parse_file(path: &Path) -> Result<FileConfig, Vec<ConfigError>> {
    let err = |message: String| {
        vec![ConfigError {
            path: path.display().to_string(),
            message,
        }]
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    let de = yaml_serde::Deserializer::from_str(&text);
    let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        // The YAML error repeats the parent key ("dispatcher: unknown field ..."); we already
        // give the full key path.
        let inner = match inner.split_once(": ") {
            Some((head, tail)) if !head.contains(' ') => tail.to_string(),
            _ => inner,
        };
        vec![ConfigError {
            path: if key == "." {
                path.display().to_string()
            } else {
                format!("{}: {key}", path.display())
            },
            message: inner,
        }]
    })?;
    let mut problems: Vec<ConfigError> = file
        .mcp
        .check()
        .into_iter()
        .map(|(key, message)| ConfigError {
            path: format!("{}: {key}", path.display()),
            message,
        })
        .collect();
    problems.extend(
        range_problems(&file)
            .into_iter()
            .map(|(key, message)| ConfigError {
                message: match line_of(&text, &key) {
                    Some((line, column)) => format!("{message} at line {line} column {column}"),
                    None => message,
                },
                path: format!("{}: {key}", path.display()),
            }),
    );
    for (name, section) in &file.agents {
        if let Some(b) = &section.breaker
            && !crate::policy::breaker::is_breaker_name(b)
        {
            problems.push(ConfigError {
                path: format!("{}: agents.{name}.breaker", path.display()),
                message: "a breaker name is 1 to 64 letters, digits, '_', '.' or '-'".into(),
            });
        }
        if !crate::agents::is_agent_name(name) {
            problems.push(ConfigError {
                path: format!("{}: agents.{name}", path.display()),
                message: format!(
                    "unknown agent '{name}'; agents are: {}",
                    crate::agents::ALL_AGENTS.join(", ")
                ),
            });
        }
    }
    if problems.is_empty() {
        Ok(file)
    } else {
        Err(problems)
    }
}

/// Values that parsed but are out of range, as `(key path, message)`. The rules are the batch
/// schema's own (the `dispatcher` keys are the batch's `config` keys, an agent's `timeout_seconds`
/// and `retries` are a task's, its `max_concurrency` is a worker count), so a value is accepted
/// in the file exactly when it would be accepted in a batch.
fn range_problems(file: &FileConfig) -> Vec<(String, String)> {
    let defs = &crate::batch::schema::batch_schema()["$defs"];
    let mut checks: Vec<(String, Value, &Value)> = Vec::new();
    let mut floats: Vec<(String, Option<f64>)> = Vec::new();
    let fields = |v: Value| match v {
        Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Vec::new(),
    };
    let dispatcher = serde_json::to_value(&file.dispatcher).expect("serializable");
    for (k, v) in fields(dispatcher) {
        if let Some(rule) = defs["BatchConfig"]["properties"].get(&k) {
            checks.push((format!("dispatcher.{k}"), v, rule));
        }
    }
    floats.push((
        "dispatcher.timeout_seconds".into(),
        file.dispatcher.timeout_seconds,
    ));
    let breaker = serde_json::to_value(&file.circuit_breaker).expect("serializable");
    for (k, v) in fields(breaker) {
        if let Some(rule) = defs["BreakerConfig"]["properties"].get(&k) {
            checks.push((format!("circuit_breaker.{k}"), v, rule));
        }
    }
    floats.push((
        "circuit_breaker.recovery_timeout_seconds".into(),
        file.circuit_breaker.recovery_timeout_seconds,
    ));
    for (name, a) in &file.agents {
        let at = |k: &str| format!("agents.{name}.{k}");
        if let Some(s) = a.timeout_seconds {
            checks.push((
                at("timeout_seconds"),
                json!(s),
                &defs["BatchConfig"]["properties"]["timeout_seconds"],
            ));
        }
        floats.push((at("timeout_seconds"), a.timeout_seconds));
        if let Some(r) = a.retries {
            checks.push((
                at("retries"),
                json!(r),
                &defs["Task"]["properties"]["retries"],
            ));
        }
        if let Some(n) = a.max_concurrency {
            checks.push((
                at("max_concurrency"),
                json!(n),
                &defs["BatchConfig"]["properties"]["max_workers"],
            ));
        }
    }
    // The model section has no batch counterpart: repair rounds are bounded like retries (each
    // one is a paid model call), token limits must allow an answer, prices must be real amounts.
    let llm = &file.llm;
    checks.push((
        "llm.max_repairs".into(),
        json!(llm.max_repairs),
        &defs["Task"]["properties"]["retries"],
    ));
    static AT_LEAST_ONE: LazyLock<Value> = LazyLock::new(|| json!({"minimum": 1}));
    static NOT_NEGATIVE: LazyLock<Value> = LazyLock::new(|| json!({"minimum": 0}));
    let (at_least_one, not_negative) = (&*AT_LEAST_ONE, &*NOT_NEGATIVE);
    checks.push((
        "llm.anthropic.max_tokens".into(),
        json!(llm.anthropic.max_tokens),
        at_least_one,
    ));
    if let Some(n) = llm.openai.max_tokens {
        checks.push(("llm.openai.max_tokens".into(), json!(n), at_least_one));
    }
    for (model, price) in &llm.prices {
        for (k, v) in [
            ("input_per_mtok", price.input_per_mtok),
            ("output_per_mtok", price.output_per_mtok),
        ] {
            let key = format!("llm.prices.{model}.{k}");
            floats.push((key.clone(), Some(v)));
            checks.push((key, json!(v), not_negative));
        }
    }
    if let Some(age) = file.cache.max_age_seconds {
        floats.push(("cache.max_age_seconds".into(), Some(age)));
        checks.push(("cache.max_age_seconds".into(), json!(age), not_negative));
    }
    let mut problems: Vec<(String, String)> = file
        .history
        .problems()
        .into_iter()
        .map(|(k, m)| (format!("history.{k}"), m))
        .collect();
    problems.extend(
        file.trace_retention
            .problems()
            .into_iter()
            .map(|(k, m)| (format!("trace_retention.{k}"), m)),
    );
    // JSON has no NaN or infinity (serde_json turns them into null), so the schema cannot see
    // them: `.nan` and `.inf` are refused here.
    for (key, v) in floats {
        if v.is_some_and(|v| !v.is_finite()) {
            problems.push((key, "must be a finite number".to_string()));
        }
    }
    for (key, value, rule) in checks {
        if problems.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let validator = jsonschema::validator_for(rule).expect("schema compiles");
        if let Some(e) = validator.iter_errors(&value).next() {
            problems.push((key, format!("out of range: {e}")));
        }
    }
    problems
}

/// Line and column of the value at a dotted key path in YAML text, found by walking the
/// document with serde and failing on purpose at that value: the parser's error carries its
/// position. `None` when the path is not there (e.g. inside an alias).
fn line_of(text: &str, key: &str) -> Option<(usize, usize)> {
    use serde::de::DeserializeSeed;
    let path: Vec<&str> = key.split('.').collect();
    let de = yaml_serde::Deserializer::from_str(text);
    let err = Probe(&path).deserialize(de).err()?;
    if !err.to_string().contains(PROBE_HIT) {
        return None;
    }
    err.location().map(|l| (l.line(), l.column()))
}

const PROBE_HIT: &str = "probe reached the key";

/// Walks a document down a key path and errors at the value found there.
struct Probe<'a>(&'a [&'a str]);

impl<'de> serde::de::DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.0.split_first() else {
            return Err(serde::de::Error::custom(PROBE_HIT));
        };
        while let Some(k) = map.next_key::<yaml_serde::Value>()? {
            if k.as_str() == Some(*first) {
                map.next_value_seed(Probe(rest))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.0.is_empty() {
            return Err(serde::de::Error::custom(PROBE_HIT));
        }
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
}

impl Probe<'_> {
    fn scalar<E: serde::de::Error>(&self) -> Result<(), E> {
        if self.0.is_empty() {
            Err(E::custom(PROBE_HIT))
        } else {
            Ok(())
        }
    }
}

/// `PARALLEL_DISPATCH_MAX_WORKERS`, `PARALLEL_DISPATCH_TIMEOUT`, `PARALLEL_DISPATCH_TRACE_DIR`.
fn env_layer() -> Result<(BatchConfig, BTreeMap<&'static str, &'static str>), Vec<ConfigError>> {
    let mut layer = BatchConfig::default();
    let mut sources = BTreeMap::new();
    let mut problems = Vec::new();
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(v) = get("PARALLEL_DISPATCH_MAX_WORKERS") {
        match v.trim().parse::<usize>() {
            Ok(n) if (1..=4096).contains(&n) => {
                layer.max_workers = Some(n);
                sources.insert("max_workers", "PARALLEL_DISPATCH_MAX_WORKERS");
            }
            _ => problems.push(ConfigError {
                path: "PARALLEL_DISPATCH_MAX_WORKERS".into(),
                message: format!("'{v}' is not a whole number from 1 to 4096"),
            }),
        }
    }
    if let Some(v) = get("PARALLEL_DISPATCH_TIMEOUT") {
        match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => {
                layer.timeout_seconds = Some(s);
                sources.insert("timeout_seconds", "PARALLEL_DISPATCH_TIMEOUT");
            }
            _ => problems.push(ConfigError {
                path: "PARALLEL_DISPATCH_TIMEOUT".into(),
                message: format!("'{v}' is not a positive number of seconds"),
            }),
        }
    }
    if let Some(v) = get("PARALLEL_DISPATCH_TRACE_DIR") {
        layer.trace_dir = Some(v);
        sources.insert("trace_dir", "PARALLEL_DISPATCH_TRACE_DIR");
    }
    if problems.is_empty() {
        Ok((layer, sources))
    } else {
        Err(problems)
    }
}

fn env_fsync() -> Result<Option<FsyncPolicy>, Vec<ConfigError>> {
    const NAME: &str = "PARALLEL_DISPATCH_JOURNAL_FSYNC";
    let Some(v) = std::env::var(NAME).ok().filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match v.trim() {
        "always" => Ok(Some(FsyncPolicy::Always)),
        "interval" => Ok(Some(FsyncPolicy::Interval)),
        "never" => Ok(Some(FsyncPolicy::Never)),
        _ => Err(vec![ConfigError {
            path: NAME.into(),
            message: format!(
                "{} is not one of always, interval, never",
                crate::batch::issue::quote(&v)
            ),
        }]),
    }
}

/// A named configuration layer, lowest precedence first when listed.
pub struct Layer<'a> {
    pub source: String,
    pub config: &'a BatchConfig,
}

/// The effective dispatcher settings with the source of each value, for `dispatch_runner config`.
pub fn explain(layers: &[Layer<'_>]) -> Value {
    let defaults = serde_json::to_value(BatchConfig::defaults()).expect("serializable");
    let mut out = serde_json::Map::new();
    for (key, default) in flatten(&defaults) {
        let mut value = default;
        let mut source = "default".to_string();
        for layer in layers {
            let v = serde_json::to_value(layer.config).expect("serializable");
            if let Some((_, set)) = flatten(&v).into_iter().find(|(k, _)| *k == key) {
                value = set;
                source = layer.source.clone();
            }
        }
        out.insert(key, json!({"value": value, "source": source}));
    }
    // Its default follows max_output_bytes, so it has no fixed default of its own.
    if !out.contains_key("max_expanded_input_bytes") {
        let max_output = out["max_output_bytes"]["value"]
            .as_u64()
            .unwrap_or_default();
        let value = crate::settings::default_expanded_input_bytes(max_output as usize);
        out.insert(
            "max_expanded_input_bytes".into(),
            json!({"value": value, "source": "default"}),
        );
    }
    Value::Object(out)
}

/// `{"a": {"b": 1}}` as `[("a.b", 1)]`; nulls are unset and left out.
fn flatten(v: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if let Value::Object(map) = v {
        for (k, v) in map {
            match v {
                Value::Object(_) => out.extend(
                    flatten(v)
                        .into_iter()
                        .map(|(sub, v)| (format!("{k}.{sub}"), v)),
                ),
                Value::Null => {}
                other => out.push((k.clone(), other.clone())),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        parse_file(&p)
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            "dispatcher:\n  max_workers: 3\n  workspace: /tmp\nagents:\n  command:\n    max_concurrency: 2\n    retries: 1\ncircuit_breaker:\n  failure_threshold: 2\nmcp:\n  servers:\n    fs:\n      command: npx\n      args: [x]\nlogging:\n  level: info\n  format: json\n",
        )
        .unwrap();
        assert_eq!(c.dispatcher.max_workers, Some(3));
        assert_eq!(c.agents["command"].max_concurrency, Some(2));
        assert_eq!(c.circuit_breaker.failure_threshold, Some(2));
        assert_eq!(c.mcp.servers["fs"].command.as_deref(), Some("npx"));
        assert_eq!(c.logging.format, Some(LogFormat::Json));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_their_path() {
        let e = parse("dispatcher:\n  max_worker: 3\n").unwrap_err();
        assert!(e[0].path.ends_with("dispatcher.max_worker"), "{e:?}");
        assert!(
            e[0].message
                .starts_with("unknown field `max_worker`, expected one of `max_workers`"),
            "{e:?}"
        );
        assert!(e[0].message.contains("line 2 column 3"), "{e:?}");
        let e = parse("dispatcher:\n  max_workers: lots\n").unwrap_err();
        assert!(e[0].path.ends_with("dispatcher.max_workers"), "{e:?}");
        let e = parse("agents:\n  shell: {}\n").unwrap_err();
        assert!(e[0].path.ends_with("agents.shell"), "{e:?}");
        let e = parse("mcp:\n  servers:\n    x: {}\n").unwrap_err();
        assert!(e[0].path.ends_with("mcp.servers.x"), "{e:?}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_key_and_line() {
        let e = parse(
            "dispatcher:\n  timeout_seconds: -1\n  max_workers: 0\n  retries: 100000\nagents:\n  command:\n    max_concurrency: 0\n    timeout_seconds: .nan\ncircuit_breaker:\n  recovery_timeout_seconds: -2\n",
        )
        .unwrap_err();
        let got: Vec<(String, String)> = e
            .iter()
            .map(|e| {
                (
                    e.path.rsplit(": ").next().unwrap().to_string(),
                    e.message.clone(),
                )
            })
            .collect();
        let find = |k: &str| {
            got.iter()
                .find(|(p, _)| p == k)
                .unwrap_or_else(|| panic!("{k} not reported: {got:?}"))
                .1
                .clone()
        };
        assert!(
            find("dispatcher.timeout_seconds").contains("line 2 column 20"),
            "{got:?}"
        );
        assert!(find("dispatcher.max_workers").contains("line 3"), "{got:?}");
        assert!(find("dispatcher.retries").contains("line 4"), "{got:?}");
        assert!(
            find("agents.command.max_concurrency").contains("line 7"),
            "{got:?}"
        );
        assert!(
            find("agents.command.timeout_seconds").contains("finite"),
            "{got:?}"
        );
        assert!(
            find("circuit_breaker.recovery_timeout_seconds").contains("line 10"),
            "{got:?}"
        );
        assert_eq!(got.len(), 6, "{got:?}");
        assert!(parse("dispatcher:\n  timeout_seconds: 0.5\n  max_workers: 4096\n").is_ok());
        let e = parse(
            "llm:\n  max_repairs: 100000\n  anthropic:\n    max_tokens: 0\n  prices:\n    m:\n      input_per_mtok: -1\n      output_per_mtok: .nan\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = e
            .iter()
            .map(|e| e.path.rsplit(": ").next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "llm.prices.m.output_per_mtok",
                "llm.max_repairs",
                "llm.anthropic.max_tokens",
                "llm.prices.m.input_per_mtok"
            ],
            "{e:?}"
        );
        assert!(e.iter().all(|e| e.message.contains(" at line ")), "{e:?}");
        assert!(parse("dispatcher: {timeout_seconds: 0}\n").is_err());
    }

    #[test]
    fn explain_names_the_winning_layer() {
        let file = BatchConfig {
            max_workers: Some(2),
            retries: Some(1),
            ..Default::default()
        };
        let flags = BatchConfig {
            max_workers: Some(9),
            ..Default::default()
        };
        let e = explain(&[
            Layer {
                source: "file".into(),
                config: &file,
            },
            Layer {
                source: "flag".into(),
                config: &flags,
            },
        ]);
        assert_eq!(e["max_workers"], json!({"value": 9, "source": "flag"}));
        assert_eq!(e["retries"], json!({"value": 1, "source": "file"}));
        assert_eq!(
            e["timeout_seconds"],
            json!({"value": 300.0, "source": "default"})
        );
        assert_eq!(
            e["circuit_breaker.failure_threshold"],
            json!({"value": 5, "source": "default"})
        );
    }
}
