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
    for bench in 1..=5 {
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
                || ours.ends_with(" calls/s"),
            "benchmark {bench} has no figure: {}",
            rows[0]
        );
    }
}
