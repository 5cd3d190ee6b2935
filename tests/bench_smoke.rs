//! The benchmark scripts still run: `bench/bench.py --quick` on tiny sizes with the test build of
//! the binary. Peers that are not installed show as "not measured"; the figures are not checked
//! (timing claims belong in BENCHMARKS.md, measured by `bench/run`).

mod common;

#[test]
fn bench_script_runs_on_tiny_sizes_and_prints_every_row() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(root.join("bench/bench.py"))
        .args(["--quick", "--binary"])
        .arg(common::bin())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bench in 1..=8 {
        let rows: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("| {bench} |")))
            .collect();
        assert!(!rows.is_empty(), "no row for benchmark {bench}:\n{stdout}");
        // Our own figure is always measured, whatever peers are missing (server-everything,
        // which benchmark 5 calls, is installed for the tests by scripts/install-test-deps).
        let ours = rows[0].split('|').nth(3).unwrap().trim();
        assert!(
            ours.ends_with(" s")
                || ours.ends_with(" ms")
                || ours.ends_with(" MiB")
                || ours.ends_with(" µs")
                || ours.ends_with(" calls/s"),
            "benchmark {bench} has no figure: {}",
            rows[0]
        );
    }
    // Benchmark 6 (memory and scale): the run's wall time, wall and CPU time per task, peak
    // memory and memory per task beside GNU parallel's, then the validate-only path's wall time,
    // CPU time and memory.
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .filter(|l| l.starts_with("| 6 |"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    let measures: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(rows.len(), 8, "{measures:?}");
    let units = [" s", " µs", " µs", " MiB", " KiB/task", " s", " s", " MiB"];
    for (row, unit) in rows.iter().zip(units) {
        assert!(row[3].ends_with(unit), "ours in {unit}: {row:?}");
    }
    assert!(
        rows[0][2].contains("300 `true` tasks, 64 workers"),
        "{measures:?}"
    );
    assert!(rows[5][2].starts_with("validate 1,000 "), "{measures:?}");
    // Benchmark 7 (scale-out over Redis): the local executor's per-task figure, the Redis
    // executor's, then one row per pool size (1, 2, 4 worker processes), each with our figure.
    // RQ (the peer) needs the bench venv, which only bench/run installs: not measured here.
    let rows7: Vec<Vec<String>> = stdout
        .lines()
        .filter(|l| l.starts_with("| 7 |"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert_eq!(rows7.len(), 5, "{rows7:?}");
        for (row, unit) in rows7.iter().zip([" µs", " µs", " s", " s", " s"]) {
            assert!(row[3].ends_with(unit), "ours in {unit}: {row:?}");
        }
        assert!(rows7[4][2].contains("4 worker processes"), "{rows7:?}");
    }
    // Benchmark 8 (result cache): the warm run beside the same batch cold, both measured.
    let row8: Vec<String> = stdout
        .lines()
        .find(|l| l.starts_with("| 8 |"))
        .expect("benchmark 8 row")
        .split('|')
        .map(|c| c.trim().to_string())
        .collect();
    assert!(row8[2].contains("cached"), "{row8:?}");
    assert!(
        row8[3].ends_with(" s") && row8[5].ends_with(" s"),
        "{row8:?}"
    );
    // GNU parallel is installed by scripts/install-test-deps; when it is there, its figures are
    // measured (its job log checked to hold every job), in the same units as ours.
    if std::process::Command::new("parallel")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        for (row, unit) in rows.iter().zip(&units[..5]) {
            assert!(row[5].ends_with(unit), "GNU parallel in {unit}: {row:?}");
        }
    }
}
