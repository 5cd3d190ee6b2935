//! Property tests: random acyclic graphs are never called cyclic and run in dependency order;
//! planted cycles are all reported, each as a real cycle; the worker limit is never exceeded
//! (scheduler level with random completion orders, and a real run through the dispatcher).

use std::collections::HashSet;

use dispatch_runner::events::{EventKind, TaskStatus};
use dispatch_runner::graph::{GraphInput, Plan};
use dispatch_runner::scheduler::Scheduler;
use dispatch_runner::{RunOptions, RunSettings, validate_value};
use proptest::prelude::*;
use serde_json::json;

/// A DAG on `n` nodes: node `i` depends on some of the nodes before it in a random order, then
/// the nodes are listed in a random order so input order says nothing about the graph.
fn dag(max_n: usize) -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1..=max_n)
        .prop_flat_map(|n| {
            let deps =
                proptest::collection::vec(proptest::collection::vec(any::<usize>(), 0..4), n);
            let perm = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            (deps, perm)
        })
        .prop_map(|(raw, perm)| {
            // Node at rank r may depend only on lower ranks; perm[r] is its position in the input.
            let n = raw.len();
            let mut deps = vec![Vec::new(); n];
            for (rank, picks) in raw.iter().enumerate() {
                if rank == 0 {
                    continue;
                }
                let mut chosen: Vec<usize> = picks.iter().map(|p| perm[p % rank]).collect();
                chosen.sort_unstable();
                chosen.dedup();
                deps[perm[rank]] = chosen;
            }
            deps
        })
}

fn inputs(deps: &[Vec<usize>]) -> Vec<GraphInput> {
    deps.iter()
        .enumerate()
        .map(|(i, ds)| GraphInput {
            id: Some(format!("t{i}")),
            deps: ds
                .iter()
                .enumerate()
                .map(|(j, d)| (j, format!("t{d}")))
                .collect(),
        })
        .collect()
}

/// Drives a scheduler like the dispatcher does, finishing running tasks in an order given by
/// `picks`; returns the start order and checks the limit and dependency order on the way.
fn simulate(deps: &[Vec<usize>], workers: usize, picks: &[usize]) -> Vec<usize> {
    let plan = Plan::build(&inputs(deps)).expect("acyclic");
    let mut s = Scheduler::new(plan);
    let mut running: Vec<usize> = Vec::new();
    let mut done = vec![false; deps.len()];
    let mut started = Vec::new();
    let mut k = 0;
    loop {
        while running.len() < workers {
            let Some(i) = s.pop_ready() else { break };
            for &d in &deps[i] {
                assert!(done[d], "t{i} started before its dependency t{d}");
            }
            running.push(i);
            started.push(i);
        }
        assert!(running.len() <= workers, "worker limit exceeded");
        if running.is_empty() {
            break;
        }
        let pick = picks.get(k).copied().unwrap_or(0) % running.len();
        k += 1;
        let i = running.swap_remove(pick);
        done[i] = true;
        s.succeeded(i);
    }
    started
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn acyclic_graphs_are_accepted_and_run_in_dependency_order(
        deps in dag(40),
        workers in 1usize..6,
        picks in proptest::collection::vec(any::<usize>(), 0..80),
    ) {
        let plan = Plan::build(&inputs(&deps));
        prop_assert!(plan.is_ok(), "acyclic graph rejected: {:?}", plan.err());
        let started = simulate(&deps, workers, &picks);
        prop_assert_eq!(started.len(), deps.len(), "every task runs exactly once");
        let unique: HashSet<usize> = started.iter().copied().collect();
        prop_assert_eq!(unique.len(), deps.len());
    }

    #[test]
    fn planted_cycles_are_all_reported_as_real_cycles(
        base in dag(25),
        groups in proptest::collection::vec(1usize..5, 1..4),
        seed in any::<u64>(),
    ) {
        let n = base.len();
        let mut deps = base.clone();
        // Plant cycles on disjoint groups of nodes: g0 -> g1 -> ... -> g0 (x -> y: x depends on y).
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut free: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut free);
        let mut planted = Vec::new();
        for size in groups {
            if free.len() < size { break; }
            let group: Vec<usize> = free.drain(..size).collect();
            for (k, &x) in group.iter().enumerate() {
                let y = group[(k + 1) % size];
                if !deps[x].contains(&y) { deps[x].push(y); }
            }
            planted.push(group);
        }
        prop_assume!(!planted.is_empty());

        // Reference answer: reachability by brute force.
        let mut reach = vec![vec![false; n]; n];
        for (x, ds) in deps.iter().enumerate() {
            for &y in ds { reach[x][y] = true; }
        }
        for k in 0..n {
            let via = reach[k].clone();
            for row in reach.iter_mut() {
                if row[k] {
                    for (cell, &v) in row.iter_mut().zip(&via) {
                        *cell |= v;
                    }
                }
            }
        }
        let same_scc = |a: usize, b: usize| a == b || (reach[a][b] && reach[b][a]);
        let mut sccs: Vec<usize> = Vec::new(); // one representative per non-trivial component
        for i in 0..n {
            if (0..n).any(|j| j != i && same_scc(i, j)) && !sccs.iter().any(|&r| same_scc(r, i)) {
                sccs.push(i);
            }
        }

        let issues = Plan::build(&inputs(&deps)).expect_err("cyclic graph accepted");
        let cycles: Vec<Vec<usize>> = issues
            .iter()
            .filter_map(|e| e.message.strip_prefix("dependency cycle: "))
            .map(|m| {
                m.split(" (").next().unwrap().split(" -> ")
                    .map(|t| t.trim_start_matches('t').parse::<usize>().unwrap())
                    .collect()
            })
            .collect();
        prop_assert_eq!(cycles.len(), sccs.len(), "one report per cyclic component: {:?}", issues);
        for c in &cycles {
            prop_assert_eq!(c.first(), c.last());
            for w in c.windows(2) {
                prop_assert!(deps[w[0]].contains(&w[1]), "reported cycle {:?} uses a missing edge", c);
            }
        }
        for group in &planted {
            if group.len() == 1 {
                let expected = format!("task 't{}' depends on itself", group[0]);
                prop_assert!(issues.iter().any(|e| e.message == expected), "no self-dependency report: {:?}", issues);
            } else {
                prop_assert!(cycles.iter().any(|c| same_scc(c[0], group[0])),
                    "planted cycle {:?} not reported: {:?}", group, issues);
            }
        }
    }
}

proptest! {
    // Each case starts real processes, so few cases with small graphs.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn dispatcher_never_exceeds_the_worker_limit(deps in dag(14), workers in 1usize..5) {
        let trace_dir = tempfile::tempdir().unwrap();
        let tasks: Vec<_> = deps.iter().enumerate().map(|(i, ds)| json!({
            "task_id": format!("t{i}"), "agent": "command",
            "input_data": {"argv": ["sleep", format!("0.0{}", i % 4)]},
            "dependencies": ds.iter().map(|d| format!("t{d}")).collect::<Vec<_>>(),
        })).collect();
        let batch = json!({"tasks": tasks, "config": {
            "max_workers": workers, "trace_dir": trace_dir.path().to_str().unwrap()}});
        let validated = validate_value(batch).expect("valid");
        let settings = RunSettings::resolve(&[&validated.batch.config]);
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let report = rt.block_on(dispatch_runner::run(validated, RunOptions::new(settings))).unwrap();

        let mut running = 0usize;
        let mut peak = 0usize;
        let mut succeeded: HashSet<String> = HashSet::new();
        let record = report.record().unwrap();
        for e in &record.events {
            match &e.kind {
                EventKind::AttemptStarted { task_id, worker, .. } => {
                    running += 1;
                    peak = peak.max(running);
                    prop_assert!(*worker < workers, "lane {} out of range", worker);
                    let i: usize = task_id[1..].parse().unwrap();
                    for d in &deps[i] {
                        prop_assert!(succeeded.contains(&format!("t{d}")), "{} started before t{}", task_id, d);
                    }
                }
                EventKind::AttemptFinished { .. } => running -= 1,
                EventKind::TaskFinished { task_id, status, .. } => {
                    prop_assert_eq!(*status, TaskStatus::Success);
                    succeeded.insert(task_id.clone());
                }
                _ => {}
            }
        }
        prop_assert!(peak <= workers, "{} attempts ran at once with max_workers {}", peak, workers);
        prop_assert_eq!(succeeded.len(), deps.len());
    }
}
