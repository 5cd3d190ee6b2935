//! The dependency graph of a batch: structural checks (unknown tasks, self-dependencies, cycles),
//! dependency levels, and each task's critical-path priority.
//!
//! This module only knows task indices and ids; it never runs anything. The scheduler consumes the
//! `Plan` it builds.

use petgraph::algo::kosaraju_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};

use foldhash::fast::FixedState;

use crate::batch::issue::{Issue, pointer_token, quote};

/// Task ids to their index. foldhash hashes a million ids several times faster than the
/// standard SipHash. Ids are the batch author's, so each map gets a random seed: a fixed one would
/// let an author pick ids that collide.
pub(crate) type IdIndex<'a> = HashMap<&'a str, usize, FixedState>;

/// An empty [`IdIndex`] with room for `capacity` ids.
pub(crate) fn id_index<'a>(capacity: usize) -> IdIndex<'a> {
    HashMap::with_capacity_and_hasher(capacity, random_state())
}

fn random_state() -> FixedState {
    FixedState::with_seed(fastrand::u64(..))
}

/// The checked dependency structure of a batch. Task `i` is the `i`-th task of the input.
#[derive(Debug, Clone)]
pub struct Plan {
    ids: Vec<String>,
    /// `deps[i]`: indices of the tasks task `i` waits for.
    deps: Vec<Vec<usize>>,
    /// `dependents[i]`: indices of the tasks waiting for task `i`.
    dependents: Vec<Vec<usize>>,
    /// `level[i]`: 0 for tasks without dependencies, else 1 + the highest level among its deps.
    level: Vec<usize>,
    /// `chain[i]`: tasks on the longest chain from `i` to the end of the graph, `i` included.
    chain: Vec<usize>,
}

/// A task as the graph checker sees it: its id (if it had a usable one) and its dependencies with
/// their position in the `dependencies` array.
#[derive(Debug, Clone, Default)]
pub struct GraphInput {
    pub id: Option<String>,
    pub deps: Vec<(usize, String)>,
}

/// The plan summary printed by `dispatch_runner validate`. `S` is how a task id is held: owned,
/// or borrowed from the plan (see [`Plan::summary_by`]).
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary<S = String> {
    pub task_count: usize,
    pub dependency_count: usize,
    /// Tasks that can run together: level 0 has no dependencies, level n waits only on lower levels.
    pub levels: Vec<Vec<S>>,
    /// The longest dependency chain, first task first.
    pub critical_path: Vec<S>,
}

impl Plan {
    /// Checks the graph and builds the plan, reporting every problem found rather than the first.
    pub fn build(tasks: &[GraphInput]) -> Result<Plan, Vec<Issue>> {
        Plan::build_with(
            tasks.len(),
            |i| tasks[i].id.as_deref(),
            |i| tasks[i].deps.iter().map(|(j, d)| (*j, d.as_str())),
        )
    }

    /// As [`Plan::build`], for `n` tasks seen through `id_of(i)` (task `i`'s id, if usable) and
    /// `deps_of(i)` (its dependencies with their position in its `dependencies` array), so a
    /// caller holding typed tasks need not copy a million ids into [`GraphInput`]s first.
    pub fn build_with<'a, D>(
        n: usize,
        id_of: impl Fn(usize) -> Option<&'a str>,
        deps_of: impl Fn(usize) -> D,
    ) -> Result<Plan, Vec<Issue>>
    where
        D: Iterator<Item = (usize, &'a str)>,
    {
        let mut issues = Vec::new();
        let mut index = id_index(n);
        for i in 0..n {
            if let Some(id) = id_of(i) {
                if let Some(&first) = index.get(id) {
                    issues.push(Issue::new(
                        format!("/tasks/{i}/task_id"),
                        format!(
                            "duplicate task_id {} (first used by /tasks/{first})",
                            quote(id)
                        ),
                    ));
                } else {
                    index.insert(id, i);
                }
            }
        }

        let mut deps = vec![Vec::new(); n];
        // The position in its task's `dependencies` array of each edge, in the order of `deps`:
        // the label of its edge in the graph built if there is a cycle, for error paths.
        let mut labels = Vec::new();
        for (i, ds) in deps.iter_mut().enumerate() {
            let name = id_of(i).unwrap_or("?");
            for (j, dep) in deps_of(i) {
                // Only built for an issue: this loop runs over every edge of every batch.
                let path = || format!("/tasks/{i}/dependencies/{j}");
                match index.get(dep) {
                    None => issues.push(Issue::new(
                        path(),
                        format!("task '{name}' depends on unknown task {}", quote(dep)),
                    )),
                    Some(&d) if d == i => issues.push(Issue::new(
                        path(),
                        format!("task '{name}' depends on itself"),
                    )),
                    Some(&d) => {
                        if ds.contains(&d) {
                            issues.push(Issue::new(
                                path(),
                                format!("task '{name}' lists dependency '{dep}' more than once"),
                            ));
                        } else {
                            ds.push(d);
                            labels.push(j);
                        }
                    }
                }
            }
        }

        // Most graphs have no cycle, and Kahn's order shows that without building a graph.
        if topological_order(&deps, &dependents_of(&deps)).len() < n {
            // Edges from each task to what it depends on, in input order.
            let mut graph: DiGraph<usize, usize> = DiGraph::with_capacity(n, labels.len());
            let nodes: Vec<NodeIndex> = (0..n).map(|i| graph.add_node(i)).collect();
            let mut label = labels.into_iter();
            for (i, ds) in deps.iter().enumerate() {
                for &d in ds {
                    let j = label.next().expect("one label per edge");
                    graph.add_edge(nodes[i], nodes[d], j);
                }
            }
            // Kosaraju's algorithm is iterative; petgraph's Tarjan recurses once per task on a
            // path and overflows the stack on a long chain or cycle.
            for scc in kosaraju_scc(&graph) {
                if scc.len() > 1 {
                    issues.push(describe_cycle(&graph, &scc, &id_of));
                }
            }
        }
        if !issues.is_empty() {
            issues.sort_by(|a, b| natural_path_cmp(&a.path, &b.path));
            return Err(issues);
        }

        let ids = (0..n)
            .map(|i| id_of(i).unwrap_or_default().to_string())
            .collect();
        Ok(Plan::from_deps(ids, deps).expect("no cycle: every component is a single task"))
    }

    /// The plan of a graph without any problem, or `None` if it has one (a duplicate or unknown
    /// id, a self-dependency, a repeated dependency, a cycle); [`Plan::build`] then names them.
    /// Valid batches take this way: it builds no petgraph graph and formats nothing.
    /// `deps_of(i)` is task `i`'s dependency list.
    pub fn build_valid<'a>(
        ids: Vec<String>,
        deps_of: impl Fn(usize) -> &'a [String],
    ) -> Option<Plan> {
        let mut deps = Vec::with_capacity(ids.len());
        {
            let mut index = id_index(ids.len());
            for (i, id) in ids.iter().enumerate() {
                if index.insert(id, i).is_some() {
                    return None;
                }
            }
            for i in 0..ids.len() {
                let names = deps_of(i);
                let mut ds = Vec::with_capacity(names.len());
                for name in names {
                    let &d = index.get(name.as_str())?;
                    if d == i || ds.contains(&d) {
                        return None;
                    }
                    ds.push(d);
                }
                deps.push(ds);
            }
        }
        Plan::from_deps(ids, deps)
    }

    /// Builds a plan from dependency lists in range; `None` if they hold a cycle.
    fn from_deps(ids: Vec<String>, deps: Vec<Vec<usize>>) -> Option<Plan> {
        let n = ids.len();
        let dependents = dependents_of(&deps);
        let order = topological_order(&deps, &dependents);
        if order.len() < n {
            return None;
        }
        let mut level = vec![0usize; n];
        for &i in &order {
            level[i] = deps[i].iter().map(|&d| level[d] + 1).max().unwrap_or(0);
        }
        let mut chain = vec![1usize; n];
        for &i in order.iter().rev() {
            chain[i] = 1 + dependents[i].iter().map(|&d| chain[d]).max().unwrap_or(0);
        }
        Some(Plan {
            ids,
            deps,
            dependents,
            level,
            chain,
        })
    }

    /// Appends the tasks of `other` (a child batch added to a running run, see
    /// `runner::groups`), their indices shifted past this plan's, their ids as given in `ids`.
    pub fn extend(&mut self, other: Plan, ids: Vec<String>) {
        let base = self.ids.len();
        let shift = |v: Vec<Vec<usize>>| -> Vec<Vec<usize>> {
            v.into_iter()
                .map(|ds| ds.into_iter().map(|d| d + base).collect())
                .collect()
        };
        self.ids.extend(ids);
        self.deps.extend(shift(other.deps));
        self.dependents.extend(shift(other.dependents));
        self.level.extend(other.level);
        self.chain.extend(other.chain);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    pub fn deps(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    pub fn dependents(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    /// Length of the longest chain starting at task `i` (itself included): the scheduler's priority.
    pub fn chain_len(&self, i: usize) -> usize {
        self.chain[i]
    }

    /// For each task, the longest path in estimated time from it to the end of the graph, itself
    /// included: the scheduler's priority when the history knows durations. Iterative (one pass
    /// in reverse topological order), so a chain of a million tasks costs no stack.
    pub fn weighted_chain(&self, weight: &[u64]) -> Vec<u64> {
        let order = topological_order(&self.deps, &self.dependents);
        let mut chain = vec![0u64; self.len()];
        for &i in order.iter().rev() {
            let longest = self.dependents[i]
                .iter()
                .map(|&d| chain[d])
                .max()
                .unwrap_or(0);
            chain[i] = weight[i].saturating_add(longest);
        }
        chain
    }

    /// The path through the graph that takes longest by `weight`, first task first, with its
    /// total: the critical path in time.
    pub fn critical_path_weighted(&self, weight: &[u64]) -> (Vec<usize>, u64) {
        let chain = self.weighted_chain(weight);
        let mut path = Vec::new();
        let mut cur = (0..self.len()).max_by_key(|&i| (chain[i], std::cmp::Reverse(i)));
        let total = cur.map_or(0, |i| chain[i]);
        while let Some(i) = cur {
            path.push(i);
            cur = self.dependents[i]
                .iter()
                .copied()
                .filter(|&d| chain[d].saturating_add(weight[i]) == chain[i])
                .min();
        }
        (path, total)
    }

    pub fn summary(&self) -> PlanSummary {
        self.summary_by(str::to_string)
    }

    /// The summary with each id as `id(..)` makes it: `validate` borrows the ids rather than
    /// copying a million of them.
    pub fn summary_by<'a, S>(&'a self, id: impl Fn(&'a str) -> S) -> PlanSummary<S> {
        let depth = self.level.iter().max().map_or(0, |m| m + 1);
        let mut sizes = vec![0usize; depth];
        for &l in &self.level {
            sizes[l] += 1;
        }
        let mut levels: Vec<Vec<S>> = sizes.into_iter().map(Vec::with_capacity).collect();
        for (i, &l) in self.level.iter().enumerate() {
            levels[l].push(id(&self.ids[i]));
        }
        let mut critical_path = Vec::new();
        // Start at the earliest task with the longest chain and follow the longest continuation.
        let mut cur = (0..self.len()).max_by_key(|&i| (self.chain[i], std::cmp::Reverse(i)));
        while let Some(i) = cur {
            critical_path.push(id(&self.ids[i]));
            cur = self.dependents[i]
                .iter()
                .copied()
                .filter(|&d| self.chain[d] + 1 == self.chain[i])
                .min();
        }
        PlanSummary {
            task_count: self.len(),
            dependency_count: self.deps.iter().map(Vec::len).sum(),
            levels,
            critical_path,
        }
    }
}

/// `dependents[i]`: the tasks that list task `i` in `deps`, in input order.
fn dependents_of(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut dependents = vec![Vec::new(); deps.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    dependents
}

/// Kahn's algorithm; ties keep input order so levels and paths are deterministic.
fn topological_order(deps: &[Vec<usize>], dependents: &[Vec<usize>]) -> Vec<usize> {
    let mut remaining: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut queue: VecDeque<usize> = (0..deps.len()).filter(|&i| remaining[i] == 0).collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for &d in &dependents[i] {
            remaining[d] -= 1;
            if remaining[d] == 0 {
                queue.push_back(d);
            }
        }
    }
    order
}

/// Names one cycle through the earliest task of a strongly connected component, found by a
/// breadth-first search so the reported cycle is a shortest one.
fn describe_cycle<'a>(
    graph: &DiGraph<usize, usize>,
    scc: &[NodeIndex],
    id_of: &impl Fn(usize) -> Option<&'a str>,
) -> Issue {
    let start = *scc
        .iter()
        .min_by_key(|n| graph[**n])
        .expect("non-empty scc");
    let mut in_scc = HashSet::with_capacity_and_hasher(scc.len(), random_state());
    in_scc.extend(scc.iter().copied());
    let mut prev: HashMap<NodeIndex, NodeIndex, _> = HashMap::with_hasher(random_state());
    let mut queue = VecDeque::from([start]);
    let mut closing = None;
    'search: while let Some(n) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = graph.neighbors(n).filter(|m| in_scc.contains(m)).collect();
        next.sort_by_key(|m| graph[*m]);
        for m in next {
            if m == start {
                closing = Some(n);
                break 'search;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    let mut path = vec![start];
    if let Some(mut n) = closing {
        let mut back = Vec::new();
        while n != start {
            back.push(n);
            n = prev[&n];
        }
        path.extend(back.into_iter().rev());
    }
    let name = |n: &NodeIndex| id_of(graph[*n]).unwrap_or_default();
    let mut names: Vec<&str> = path.iter().map(name).collect();
    names.push(name(&start));
    let first = graph[start];
    let second = path.get(1).copied().unwrap_or(start);
    let dep_pos = graph
        .edges_connecting(start, second)
        .next()
        .map(|e| *e.weight())
        .unwrap_or(0);
    Issue::new(
        format!("/tasks/{first}/dependencies/{dep_pos}"),
        format!(
            "dependency cycle: {} (each task depends on the next)",
            join_capped(&names, CYCLE_SHOWN)
        ),
    )
}

/// Task names shown at each end of a long cycle: a cycle of a million tasks is named by its
/// start and its end, not in a message of a million names.
const CYCLE_SHOWN: usize = 10;

/// `names` joined with ` -> `; more than `2 * shown` of them are cut to the first and last
/// `shown`, with the count of those left out between.
fn join_capped(names: &[&str], shown: usize) -> String {
    if names.len() <= 2 * shown + 1 {
        return names.join(" -> ");
    }
    format!(
        "{} -> ... ({} more) ... -> {}",
        names[..shown].join(" -> "),
        names.len() - 2 * shown,
        names[names.len() - shown..].join(" -> ")
    )
}

/// Orders JSON Pointers so `/tasks/2` comes before `/tasks/10`.
pub fn natural_path_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<(u64, String)> {
        s.split('/')
            .map(|t| match t.parse::<u64>() {
                Ok(n) => (n, String::new()),
                Err(_) => (u64::MAX, t.to_string()),
            })
            .collect()
    };
    key(a).cmp(&key(b))
}

/// Returns the pointer of task `i`'s field, for callers that build issues.
pub fn task_pointer(i: usize, field: &str) -> String {
    format!("/tasks/{i}/{}", pointer_token(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(spec: &[(&str, &[&str])]) -> Vec<GraphInput> {
        spec.iter()
            .map(|(id, deps)| GraphInput {
                id: Some(id.to_string()),
                deps: deps
                    .iter()
                    .enumerate()
                    .map(|(j, d)| (j, d.to_string()))
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn levels_and_critical_path() {
        let plan = Plan::build(&input(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &["b", "c"]),
            ("e", &[]),
        ]))
        .unwrap();
        let s = plan.summary();
        assert_eq!(s.levels, vec![vec!["a", "e"], vec!["b", "c"], vec!["d"]]);
        assert_eq!(s.critical_path, vec!["a", "b", "d"]);
        assert_eq!(plan.chain_len(0), 3);
        assert_eq!(plan.chain_len(4), 1);
        assert_eq!(s.dependency_count, 4);
    }

    #[test]
    fn reports_every_problem() {
        let errs = Plan::build(&input(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("d", &["d"]),
            ("e", &["zz"]),
            ("a", &[]),
            ("x", &["y"]),
            ("y", &["x"]),
        ]))
        .unwrap_err();
        let messages: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            messages,
            vec![
                "/tasks/0/dependencies/0: dependency cycle: a -> b -> c -> a (each task depends on the next)",
                "/tasks/3/dependencies/0: task 'd' depends on itself",
                "/tasks/4/dependencies/0: task 'e' depends on unknown task 'zz'",
                "/tasks/5/task_id: duplicate task_id 'a' (first used by /tasks/0)",
                "/tasks/6/dependencies/0: dependency cycle: x -> y -> x (each task depends on the next)",
            ]
        );
    }

    #[test]
    fn cycle_names_a_real_cycle_inside_a_larger_component() {
        // a->b, b->a, b->c, c->b: one component, the shortest cycle through a is a->b->a.
        let errs =
            Plan::build(&input(&[("a", &["b"]), ("b", &["c", "a"]), ("c", &["b"])])).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("a -> b -> a"),
            "{}",
            errs[0].message
        );
    }

    fn ring(n: usize, closed: bool) -> Vec<GraphInput> {
        (0..n)
            .map(|i| GraphInput {
                id: Some(format!("t{i}")),
                deps: if i > 0 {
                    vec![(0, format!("t{}", i - 1))]
                } else if closed {
                    vec![(0, format!("t{}", n - 1))]
                } else {
                    vec![]
                },
            })
            .collect()
    }

    #[test]
    fn a_million_task_cycle_is_one_short_issue() {
        let errs = Plan::build(&ring(1_000_000, true)).unwrap_err();
        assert_eq!(errs.len(), 1);
        let m = &errs[0].message;
        assert_eq!(errs[0].path, "/tasks/0/dependencies/0");
        assert!(
            m.starts_with("dependency cycle: t0 -> t999999 -> t999998 -> "),
            "{m}"
        );
        assert!(m.contains(" -> ... (999981 more) ... -> "), "{m}");
        assert!(m.contains("t2 -> t1 -> t0 (each task"), "{m}");
        assert!(m.len() < 400, "{} bytes", m.len());
    }

    #[test]
    fn a_million_task_chain_with_an_unrelated_error() {
        // Listed last task first, so the graph is walked against input order.
        let mut tasks = ring(1_000_000, false);
        tasks.reverse();
        assert_eq!(
            Plan::build(&tasks).unwrap().summary().critical_path.len(),
            1_000_000
        );
        tasks.push(GraphInput {
            id: Some("x".into()),
            deps: vec![(0, "nope".into())],
        });
        let errs = Plan::build(&tasks).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("unknown task 'nope'"));
    }

    #[test]
    fn short_cycles_are_named_in_full() {
        let names: Vec<String> = (0..21).map(|i| i.to_string()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(join_capped(&names, 10), names.join(" -> "));
        let more: Vec<&str> = (0..22).map(|_| "x").collect();
        assert!(join_capped(&more, 10).contains("... (2 more) ..."));
    }

    #[test]
    fn natural_order_of_pointers() {
        let mut v = vec!["/tasks/10/x", "/tasks/2/x", "", "/tasks/2"];
        v.sort_by(|a, b| natural_path_cmp(a, b));
        assert_eq!(v, vec!["", "/tasks/2", "/tasks/2/x", "/tasks/10/x"]);
    }
}
