//! Scale-out on Redis Streams, through the built binary against a real `redis-server`: a
//! coordinator (`run --redis`) and worker processes (`worker --redis`).

mod common;
#[path = "common/redis.rs"]
mod redis_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Sandbox, eventually, processes_matching, sh_task, spawn_with_input};
use redis_support::{RedisServer, Worker, executed_by};
use serde_json::{Value, json};

fn batch(tasks: Vec<Value>) -> String {
    json!({"tasks": tasks}).to_string()
}

/// Starts a coordinator in the background with `batch` on stdin.
fn coordinator(sb: &Sandbox, url: &str, extra: &[&str], batch: &str) -> std::process::Child {
    let mut cmd = sb.cmd(&["run", "--redis", url, "--quiet"]);
    cmd.args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_with_input(cmd, batch)
}

fn finish(sb: &Sandbox, child: std::process::Child) -> common::Run {
    sb.to_run(common::wait_with_deadline(child, Duration::from_secs(120)))
}

/// Attempts (across the trace's tasks) whose error kind is `kind`, with the worker that had them.
fn attempts_with_error(trace: &Value, kind: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for t in trace["tasks"].as_array().unwrap() {
        for a in t["attempts"].as_array().unwrap() {
            if a["error"]["kind"] == kind {
                found.push((
                    t["task_id"].as_str().unwrap().to_string(),
                    a["executed_by"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    found
}

/// Waits until worker `name` reports `n` running attempts in its heartbeat.
fn wait_running(redis: &RedisServer, name: &str, n: u64) -> bool {
    eventually(Duration::from_secs(30), || {
        redis
            .cli(&["GET", &format!("dispatch:worker:{name}")])
            .and_then(|s| serde_json::from_str::<Value>(s.trim()).ok())
            .is_some_and(|v| v["running"].as_u64() >= Some(n))
    })
}

#[test]
fn three_hundred_tasks_over_three_workers_all_succeed_and_leave_no_run_keys() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| Worker::start(sb.path(), &url, n, &["--max-workers", "4"]))
        .collect();
    let tasks = (0..300)
        .map(|i| sh_task(&format!("t{i}"), &format!("sleep 0.02; echo out-{i}"), &[]))
        .collect();
    let run = sb.run(
        &["run", "--redis", &url, "--quiet", "--max-workers", "12"],
        &batch(tasks),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json["summary"]["successful"], 300);
    for i in [0, 150, 299] {
        assert_eq!(
            run.result(&format!("t{i}"))["output"]["stdout"],
            format!("out-{i}\n")
        );
    }
    let used: std::collections::BTreeSet<String> = executed_by(&run.json).into_iter().collect();
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["w1", "w2", "w3"],
        "every worker ran attempts"
    );
    // The trace names the worker of each attempt too.
    let trace = run.trace();
    assert!(
        trace["tasks"][0]["attempts"][0]["executed_by"]
            .as_str()
            .is_some_and(|w| w.starts_with('w'))
    );
    // The run's keys are gone; the pool's (attempt streams, worker heartbeats) stay.
    assert_eq!(redis.keys("dispatch:run:*"), Vec::<String>::new());
    assert_eq!(
        redis
            .cli(&["XLEN", "dispatch:attempts:command"])
            .unwrap()
            .trim(),
        "0"
    );
    // `workers` lists them.
    let out = sb.cmd(&["workers", "--redis", &url]).output().unwrap();
    assert!(out.status.success());
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listed["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["w1", "w2", "w3"]);
    assert_eq!(listed["workers"][0]["capacity"], 4);
    assert_eq!(
        listed["workers"][0]["agents"],
        json!(["command", "coder", "debug", "mcp", "prompt"])
    );
    drop(workers);
}

#[test]
fn a_sigkilled_worker_loses_nothing_and_its_attempts_are_recorded_as_worker_lost() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let mut doomed = Worker::start(sb.path(), &url, "doomed", &["--max-workers", "3"]);
    let tasks: Vec<Value> = (0..6)
        .map(|i| sh_task(&format!("t{i}"), &format!("sleep 1; echo done-{i}"), &[]))
        .collect();
    let child = coordinator(
        &sb,
        &url,
        &["--lease-seconds", "1", "--max-workers", "6"],
        &batch(tasks),
    );
    assert!(wait_running(&redis, "doomed", 3), "{}", doomed.log_text());
    doomed.signal(libc::SIGKILL);
    doomed.wait(Duration::from_secs(10));
    let _survivor = Worker::start(sb.path(), &url, "survivor", &["--max-workers", "6"]);
    let run = finish(&sb, child);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json["summary"]["successful"], 6);
    let lost = attempts_with_error(&run.trace(), "worker_lost");
    assert!(lost.len() >= 3, "the doomed worker's attempts: {lost:?}");
    assert!(lost.iter().all(|(_, w)| w == "doomed"), "{lost:?}");
    for (task, _) in &lost {
        let r = run.result(task);
        assert_eq!(r["executed_by"], "survivor");
        assert!(r["workers_lost"].as_u64() >= Some(1), "{r}");
        assert_eq!(r["output"]["stdout"], format!("done-{}\n", &task[1..]));
    }
}

#[test]
fn a_sigtermed_worker_drains_its_attempts_and_exits_0() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let mut first = Worker::start(sb.path(), &url, "first", &["--max-workers", "2"]);
    let tasks: Vec<Value> = (0..4)
        .map(|i| sh_task(&format!("t{i}"), "sleep 1.5; echo ok", &[]))
        .collect();
    let child = coordinator(&sb, &url, &[], &batch(tasks));
    assert!(wait_running(&redis, "first", 2), "{}", first.log_text());
    first.signal(libc::SIGTERM);
    let _second = Worker::start(sb.path(), &url, "second", &["--max-workers", "2"]);
    assert_eq!(
        first.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        first.log_text()
    );
    assert!(
        first.log_text().contains("draining"),
        "{}",
        first.log_text()
    );
    let run = finish(&sb, child);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let by = executed_by(&run.json);
    assert_eq!(by.iter().filter(|w| *w == "first").count(), 2, "{by:?}");
    assert_eq!(by.iter().filter(|w| *w == "second").count(), 2, "{by:?}");
    assert!(attempts_with_error(&run.trace(), "worker_lost").is_empty());
}

#[test]
fn a_worker_past_its_drain_bound_kills_its_attempts_and_they_run_elsewhere() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let mut first = Worker::start(
        sb.path(),
        &url,
        "first",
        &["--max-workers", "1", "--drain-seconds", "0.5"],
    );
    let child = coordinator(
        &sb,
        &url,
        &[],
        &batch(vec![sh_task("slow", "sleep 3.217; echo ok", &[])]),
    );
    assert!(wait_running(&redis, "first", 1));
    first.signal(libc::SIGTERM);
    assert_eq!(
        first.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        first.log_text()
    );
    // Its process group is gone with it.
    assert!(
        eventually(Duration::from_secs(5), || processes_matching("sleep 3.217")
            .is_empty()),
        "{:?}",
        processes_matching("sleep 3.217")
    );
    let _second = Worker::start(sb.path(), &url, "second", &[]);
    let run = finish(&sb, child);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        attempts_with_error(&run.trace(), "worker_lost"),
        [("slow".to_string(), "first".to_string())]
    );
    assert_eq!(run.result("slow")["executed_by"], "second");
}

#[test]
fn an_interrupted_coordinator_exits_130_writes_its_trace_and_leaves_no_process_on_workers() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let mut worker = Worker::start(sb.path(), &url, "w", &["--max-workers", "3"]);
    let tasks: Vec<Value> = (0..5)
        .map(|i| sh_task(&format!("t{i}"), "exec sleep 41.731", &[]))
        .collect();
    let child = coordinator(&sb, &url, &["--max-workers", "5"], &batch(tasks));
    assert!(wait_running(&redis, "w", 3));
    assert!(eventually(Duration::from_secs(10), || processes_matching(
        "sleep 41.731"
    )
    .len()
        == 3));
    let started = Instant::now();
    common::send_signal(child.id(), libc::SIGINT);
    let run = finish(&sb, child);
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(run.json["summary"]["cancelled"], 5);
    assert!(run.trace()["events"].as_array().is_some());
    assert!(
        eventually(Duration::from_secs(5), || processes_matching(
            "sleep 41.731"
        )
        .is_empty()),
        "{:?}",
        processes_matching("sleep 41.731")
    );
    assert_eq!(redis.keys("dispatch:run:*"), Vec::<String>::new());
    // The worker goes on serving.
    assert_eq!(worker.wait(Duration::from_millis(200)), None);
    let run = sb.run(
        &["run", "--redis", &url, "--quiet"],
        &batch(vec![sh_task("again", "echo again", &[])]),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn a_duplicate_outcome_is_ignored() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let _w = Worker::start(sb.path(), &url, "w", &["--max-workers", "2"]);
    let tasks = vec![
        sh_task("quick", "echo real", &[]),
        sh_task("slow", "sleep 2; echo slow", &[]),
    ];
    let child = coordinator(&sb, &url, &[], &batch(tasks));
    // The quick task's outcome, as the worker posted it.
    let mut posted: Option<(String, String)> = None;
    assert!(eventually(Duration::from_secs(20), || {
        for key in redis.keys("dispatch:run:*:out") {
            let text = redis
                .cli(&["--json", "XRANGE", &key, "-", "+"])
                .unwrap_or_default();
            let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            for e in entries {
                let m = e[1][1].as_str().unwrap_or("");
                if m.contains("real") && m.contains("succeeded") {
                    posted = Some((key.clone(), m.to_string()));
                    return true;
                }
            }
        }
        false
    }));
    let (key, message) = posted.unwrap();
    // The same outcome again, and one for the same attempt saying something else.
    let forged = message.replace("real", "forged");
    assert!(redis.cli(&["XADD", &key, "*", "m", &message]).is_some());
    assert!(redis.cli(&["XADD", &key, "*", "m", &forged]).is_some());
    let run = finish(&sb, child);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.result("quick")["output"]["stdout"], "real\n");
    assert_eq!(run.result("quick")["attempts"], 1);
    let trace = run.trace();
    let finished = common::events(&trace, "task_finished");
    assert_eq!(finished.len(), 2, "one final result per task");
    assert_eq!(common::events(&trace, "attempt_finished").len(), 2);
}

#[test]
fn two_coordinators_share_the_pool_and_stay_isolated() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let _workers: Vec<Worker> = ["w1", "w2"]
        .iter()
        .map(|n| Worker::start(sb.path(), &url, n, &["--max-workers", "4"]))
        .collect();
    let make = |tag: &str| {
        batch(
            (0..40)
                .map(|i| {
                    sh_task(
                        &format!("t{i}"),
                        &format!("sleep 0.05; echo {tag}-{i}"),
                        &[],
                    )
                })
                .collect(),
        )
    };
    let a = coordinator(&sb, &url, &["--max-workers", "4"], &make("A"));
    let b = coordinator(&sb, &url, &["--max-workers", "4"], &make("B"));
    let (a, b) = (finish(&sb, a), finish(&sb, b));
    for (run, tag) in [(&a, "A"), (&b, "B")] {
        assert_eq!(run.code, 0, "{}", run.stderr);
        for i in 0..40 {
            assert_eq!(
                run.result(&format!("t{i}"))["output"]["stdout"],
                format!("{tag}-{i}\n")
            );
        }
    }
    assert_ne!(a.json["run_id"], b.json["run_id"]);
    assert_eq!(redis.keys("dispatch:run:*"), Vec::<String>::new());
}

#[test]
fn redis_stopped_mid_run_cancels_the_rest_with_a_clear_reason_and_writes_the_trace() {
    let mut redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let mut worker = Worker::start(
        sb.path(),
        &url,
        "w",
        &["--max-workers", "2", "--reconnect-seconds", "2"],
    );
    let tasks: Vec<Value> = (0..4)
        .map(|i| sh_task(&format!("t{i}"), "exec sleep 27.913", &[]))
        .collect();
    let child = coordinator(
        &sb,
        &url,
        &["--redis-reconnect-seconds", "2", "--max-workers", "4"],
        &batch(tasks),
    );
    assert!(wait_running(&redis, "w", 2));
    let stopped = Instant::now();
    redis.stop();
    let run = finish(&sb, child);
    assert!(stopped.elapsed() < Duration::from_secs(20), "bounded");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.json["summary"]["cancelled"], 4);
    let message = run.result("t0")["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("Redis"), "{message}");
    assert!(run.stderr.contains("could not reconnect"), "{}", run.stderr);
    assert!(run.trace()["tasks"].as_array().is_some());
    // The worker gives up too, killing what it ran.
    assert_eq!(
        worker.wait(Duration::from_secs(30)),
        Some(3),
        "{}",
        worker.log_text()
    );
    assert!(eventually(Duration::from_secs(5), || processes_matching(
        "sleep 27.913"
    )
    .is_empty()));
}

#[test]
fn unreachable_redis_is_exit_3_with_the_password_redacted() {
    let sb = Sandbox::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://user:hunter2-very-secret@127.0.0.1:{port}/0");
    let run = sb.run(
        &["run", "--redis", &url],
        &batch(vec![sh_task("a", "true", &[])]),
    );
    assert_eq!(run.code, 3);
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2") && !run.stdout.contains("hunter2"));
    assert_eq!(run.json["status"], "error");
    // Nothing was started: no journal or trace.
    assert!(
        !sb.path().join("traces").exists()
            || std::fs::read_dir(sb.path().join("traces"))
                .unwrap()
                .next()
                .is_none()
    );
    // The URL from the environment works the same; so does a worker.
    let mut cmd = sb.cmd(&["worker"]);
    cmd.env("DISPATCH_REDIS_URL", &url);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach Redis") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

#[test]
fn without_workers_the_queue_timeout_bounds_the_wait() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let run = sb.run(
        &[
            "run",
            "--redis",
            &redis.url(),
            "--quiet",
            "--queue-timeout",
            "1",
        ],
        &batch(vec![sh_task("a", "true", &[])]),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.result("a")["error"]["kind"], "queue_timeout");
    assert_eq!(
        redis
            .cli(&["XLEN", "dispatch:attempts:command"])
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(redis.keys("dispatch:run:*"), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sends_its_runs_to_the_pool_and_delete_reaches_the_workers() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let _w = Worker::start(sb.path(), &url, "w", &["--max-workers", "2"]);
    let mut server = sb
        .cmd(&["serve", "--listen", "127.0.0.1:0", "--redis", &url])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = common::listening_base(&mut server);
    let client = common::client();
    let result: Value = client
        .post(format!("{base}/v1/dispatch"))
        .header("content-type", "application/json")
        .body(batch(vec![sh_task("a", "echo served", &[])]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        result["results"][0]["output"]["stdout"], "served\n",
        "{result}"
    );
    assert_eq!(result["results"][0]["executed_by"], "w");
    // The dashboard's workers panel lists the pool's live workers.
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = client
            .get(format!("{base}/v1/workers"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed["workers"][0]["name"] == "w" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed["available"], true, "{listed}");
    assert_eq!(listed["workers"][0]["name"], "w", "{listed}");
    assert_eq!(listed["workers"][0]["capacity"], 2, "{listed}");

    let accepted: Value = client
        .post(format!("{base}/v1/dispatch?wait=false"))
        .header("content-type", "application/json")
        .body(batch(vec![sh_task("slow", "exec sleep 52.619", &[])]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let location = format!("{base}{}", accepted["location"].as_str().unwrap());
    let started = tokio::task::spawn_blocking(|| {
        eventually(Duration::from_secs(20), || {
            !processes_matching("sleep 52.619").is_empty()
        })
    })
    .await
    .unwrap();
    assert!(started);
    let cancelled: Value = client
        .delete(&location)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cancelled["results"][0]["status"], "cancelled",
        "{cancelled}"
    );
    let gone = tokio::task::spawn_blocking(|| {
        eventually(Duration::from_secs(5), || {
            processes_matching("sleep 52.619").is_empty()
        })
    })
    .await
    .unwrap();
    assert!(gone, "the worker's process was killed");
    assert_eq!(redis.keys("dispatch:run:*"), Vec::<String>::new());
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn an_acl_user_limited_to_the_dispatch_keys_is_enough_and_its_password_is_never_shown() {
    // The user docs/scale-out.md recommends: only `dispatch:` keys, no dangerous commands.
    let redis = RedisServer::start_with(&[
        "--user",
        "pool",
        "on",
        ">pool-pass-7f3a91c2",
        "~dispatch:*",
        "+@all",
        "-@dangerous",
    ]);
    let sb = Sandbox::new();
    let url = format!("redis://pool:pool-pass-7f3a91c2@127.0.0.1:{}/0", redis.port);
    let worker = Worker::start(sb.path(), &url, "acl", &["--max-workers", "2"]);
    let run = sb.run(
        &["run", "--redis", &url],
        &batch(vec![
            sh_task("a", "echo one", &[]),
            sh_task("b", "echo two", &["a"]),
        ]),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.result("b")["executed_by"], "acl");
    let out = sb.cmd(&["workers", "--redis", &url]).output().unwrap();
    assert!(out.status.success());
    let trace =
        std::fs::read_to_string(sb.path().join(run.json["trace_file"].as_str().unwrap())).unwrap();
    for (what, text) in [
        ("stdout", run.stdout.clone()),
        ("stderr", run.stderr.clone()),
        ("trace", trace),
        ("workers", String::from_utf8_lossy(&out.stdout).into_owned()),
        ("worker log", worker.log_text()),
    ] {
        assert!(
            !text.contains("pool-pass-7f3a91c2"),
            "{what} shows the password: {text}"
        );
    }
    // A wrong password is refused at start: exit 3, nothing shown.
    let bad = format!("redis://pool:wrong-pass-1234@127.0.0.1:{}/0", redis.port);
    let run = sb.run(
        &["run", "--redis", &bad],
        &batch(vec![sh_task("a", "true", &[])]),
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(!run.stderr.contains("wrong-pass-1234"), "{}", run.stderr);
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with openssl.
fn make_certificates(dir: &std::path::Path) {
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=test-ca -keyout ca.key -out ca.pem \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign",
    );
    sh(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout server.key -out server.csr",
    );
    sh(
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf && \
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out server.pem",
    );
}

#[test]
fn rediss_urls_use_tls_verified_against_the_configured_ca() {
    let sb = Sandbox::new();
    make_certificates(sb.path());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let p = |f: &str| sb.path().join(f).display().to_string();
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://localhost:{tls_port}/0");
    // The worker trusts the test CA through SSL_CERT_FILE.
    let log = sb.path().join("tls-worker.log");
    let mut worker = std::process::Command::new(common::bin())
        .args([
            "worker",
            "--redis",
            &url,
            "--name",
            "tls",
            "--max-workers",
            "1",
        ])
        .env("SSL_CERT_FILE", &ca)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || redis
        .cli(&["EXISTS", "dispatch:worker:tls"])
        .is_some_and(|s| s.trim() == "1")));
    let mut cmd = sb.cmd(&["run", "--redis", &url, "--quiet"]);
    cmd.env("SSL_CERT_FILE", &ca);
    let run = sb.run_cmd(cmd, &batch(vec![sh_task("a", "echo over-tls", &[])]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.result("a")["executed_by"], "tls");
    // Without the CA the server is not trusted: refused at start.
    let run = sb.run(
        &["run", "--redis", &url],
        &batch(vec![sh_task("a", "true", &[])]),
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn a_killed_coordinator_resumes_on_the_pool_and_its_old_attempts_are_dropped() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let w = Worker::start(sb.path(), &url, "w", &["--max-workers", "2"]);
    let tasks: Vec<Value> = (0..2)
        .map(|i| sh_task(&format!("t{i}"), &format!("sleep 2.731; echo ok-{i}"), &[]))
        .collect();
    let mut child = coordinator(&sb, &url, &[], &batch(tasks));
    assert!(wait_running(&redis, "w", 2));
    child.kill().unwrap();
    child.wait().unwrap();
    let journal = std::fs::read_dir(sb.path().join("traces"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "journal"))
        .expect("the journal of the killed run");
    let run = sb.run(
        &[
            "resume",
            journal.to_str().unwrap(),
            "--redis",
            &url,
            "--quiet",
        ],
        "",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for i in 0..2 {
        let r = run.result(&format!("t{i}"));
        assert_eq!(r["output"]["stdout"], format!("ok-{i}\n"));
    }
    let outcomes = common::attempt_outcomes(&run.trace(), 0);
    assert_eq!(outcomes, ["interrupted", "success"]);
    // The killed run's attempts were stopped on the worker, not left to run out.
    assert!(
        w.log_text().contains("their coordinator is gone"),
        "{}",
        w.log_text()
    );
    assert_eq!(redis.keys("dispatch:run:*"), Vec::<String>::new());
    assert!(eventually(Duration::from_secs(5), || processes_matching(
        "sleep 2.731"
    )
    .is_empty()));
}

#[test]
fn redis_losing_its_data_mid_run_stops_the_run_instead_of_waiting_for_ever() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    let _w = Worker::start(sb.path(), &url, "w", &["--max-workers", "1"]);
    let child = coordinator(
        &sb,
        &url,
        &[],
        &batch(vec![sh_task("a", "exec sleep 36.482", &[])]),
    );
    assert!(wait_running(&redis, "w", 1));
    // As a restart without persistence would.
    assert!(redis.cli(&["FLUSHALL"]).is_some());
    let run = finish(&sb, child);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.status("a"), "cancelled");
    assert!(run.stderr.contains("lost the run's keys"), "{}", run.stderr);
    // Nobody waits for the attempt any more: the worker stops it.
    assert!(eventually(Duration::from_secs(10), || processes_matching(
        "sleep 36.482"
    )
    .is_empty()));
}

#[test]
fn a_worker_refuses_the_agents_only_the_coordinator_runs() {
    // `batch` and `first_success` tasks are run by the coordinator's dispatcher: a worker
    // neither serves them by default nor accepts them in --agents.
    let sb = Sandbox::new();
    for agent in ["batch", "first_success", "nonsense"] {
        let out = sb
            .cmd(&[
                "worker",
                "--redis",
                "redis://127.0.0.1:1/0",
                "--agents",
                &format!("command,{agent}"),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{agent}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("'{agent}' is not an agent a worker runs")),
            "{stderr}"
        );
    }
}

#[test]
fn without_a_worker_for_its_agent_the_progress_line_says_the_run_waits_for_workers() {
    let redis = RedisServer::start();
    let sb = Sandbox::new();
    let url = redis.url();
    // A live worker that serves another agent does not count.
    let _other = Worker::start(sb.path(), &url, "mcp-only", &["--agents", "mcp"]);
    let events = sb.path().join("events.ndjson");
    let mut cmd = sb.cmd(&[
        "run",
        "--redis",
        &url,
        "--status-interval",
        "0.5",
        "--events",
    ]);
    cmd.arg(&events)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_with_input(cmd, &batch(vec![sh_task("a", "echo done", &[])]));
    let waiting = |agents_empty: bool| {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| {
                e["event"] == "waiting_for_workers"
                    && e["agents"]
                        .as_array()
                        .is_some_and(|a| a.is_empty() == agents_empty)
            })
    };
    assert!(
        eventually(Duration::from_secs(30), || waiting(false)),
        "no waiting_for_workers event"
    );
    let _w = Worker::start(sb.path(), &url, "w", &["--agents", "command"]);
    let run = finish(&sb, child);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.result("a")["output"]["stdout"], "done\n");
    assert!(
        run.stderr
            .contains("waiting for workers: 1 queued, no live worker serves command"),
        "{}",
        run.stderr
    );
    let trace = run.trace();
    let notes = common::events(&trace, "waiting_for_workers");
    assert_eq!(notes[0]["queued"], 1);
    assert_eq!(notes[0]["agents"], json!(["command"]));
    // The wait ends before the task does.
    assert_eq!(notes.last().unwrap()["agents"], json!([]));
    assert!(waiting(true));
}
