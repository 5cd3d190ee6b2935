//! Which task runs next. Holds the ready set over the dependency graph, ordered critical path
//! first (the task with the longest chain of dependents still ahead of it), ties in input order.
//! The chain is counted in tasks, or, when the run history knows durations, in estimated time
//! ([`Scheduler::weigh`]).
//!
//! It knows nothing about processes, time or workers: the dispatcher tells it what finished and
//! asks it what is ready. A distributed executor would reuse it unchanged.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::graph::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Ready,
    Started,
    Done,
}

pub struct Scheduler {
    plan: Plan,
    /// Dependencies of each task that have not succeeded yet.
    unmet: Vec<usize>,
    state: Vec<State>,
    ready: BinaryHeap<(u64, Reverse<usize>)>,
    /// Longest remaining path in estimated time, when the history gave durations.
    weighted: Option<Vec<u64>>,
}

impl Scheduler {
    pub fn new(plan: Plan) -> Self {
        let n = plan.len();
        let unmet: Vec<usize> = (0..n).map(|i| plan.deps(i).len()).collect();
        let mut s = Scheduler {
            plan,
            unmet,
            state: vec![State::Waiting; n],
            ready: BinaryHeap::new(),
            weighted: None,
        };
        for i in 0..n {
            if s.unmet[i] == 0 {
                s.make_ready(i);
            }
        }
        s
    }

    /// Orders ready tasks by the longest remaining path in estimated time, each task weighing
    /// `weight[i]` (its estimated duration in any unit).
    pub fn weigh(&mut self, weight: &[u64]) {
        self.weighted = Some(self.plan.weighted_chain(weight));
        let ready: Vec<usize> = self.ready.drain().map(|(_, Reverse(i))| i).collect();
        for i in ready {
            self.ready.push((self.priority(i), Reverse(i)));
        }
    }

    fn priority(&self, i: usize) -> u64 {
        match self.weighted.as_ref().and_then(|w| w.get(i)) {
            Some(w) => *w,
            // Unweighted, or a child batch's task that joined after the weights were set (the
            // history knows nothing of it): by task count.
            None => self.plan.chain_len(i) as u64,
        }
    }

    /// Adds the tasks of `plan` (a child batch joining the run) after the known ones, with their
    /// ids `ids`; returns those that are ready at once.
    pub fn extend(&mut self, plan: Plan, ids: Vec<String>) -> Vec<usize> {
        let base = self.plan.len();
        self.plan.extend(plan, ids);
        let n = self.plan.len();
        self.unmet
            .extend((base..n).map(|i| self.plan.deps(i).len()));
        self.state.resize(n, State::Waiting);
        let ready: Vec<usize> = (base..n).filter(|&i| self.unmet[i] == 0).collect();
        for &i in &ready {
            self.make_ready(i);
        }
        ready
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Tasks that are ready now, in input order (for announcing them).
    pub fn ready_tasks(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&i| self.state[i] == State::Ready)
            .collect()
    }

    pub fn has_ready(&self) -> bool {
        self.ready
            .iter()
            .any(|(_, Reverse(i))| self.state[*i] == State::Ready)
    }

    /// The ready task to start next.
    pub fn pop_ready(&mut self) -> Option<usize> {
        self.pop_ready_where(|_| true)
    }

    /// The best ready task that `allowed` accepts (e.g. its agent is under its concurrency cap);
    /// the others stay ready in their places.
    pub fn pop_ready_where(&mut self, mut allowed: impl FnMut(usize) -> bool) -> Option<usize> {
        let mut passed_over = Vec::new();
        let mut found = None;
        while let Some(entry) = self.ready.pop() {
            let i = entry.1.0;
            // Entries of tasks finished while waiting (e.g. reused from an earlier run) are stale.
            if self.state[i] != State::Ready {
                continue;
            }
            if allowed(i) {
                found = Some(i);
                break;
            }
            passed_over.push(entry);
        }
        self.ready.extend(passed_over);
        let i = found?;
        self.state[i] = State::Started;
        Some(i)
    }

    /// Puts a started task back in the ready set (its retry is due).
    pub fn requeue(&mut self, i: usize) {
        debug_assert_eq!(self.state[i], State::Started);
        self.make_ready(i);
    }

    /// Records a success; returns the tasks it made ready, in input order.
    pub fn succeeded(&mut self, i: usize) -> Vec<usize> {
        self.state[i] = State::Done;
        let mut newly = Vec::new();
        for &d in self.plan.dependents(i) {
            self.unmet[d] -= 1;
            if self.unmet[d] == 0 && self.state[d] == State::Waiting {
                newly.push(d);
            }
        }
        newly.sort_unstable();
        for &d in &newly {
            self.make_ready(d);
        }
        newly
    }

    /// Records a final failure (or a skip, or a cancel); returns every task that can now never run,
    /// each with the dependency that blocked it, nearest first, then in input order.
    pub fn failed(&mut self, i: usize) -> Vec<(usize, usize)> {
        self.state[i] = State::Done;
        let mut skipped = Vec::new();
        let mut frontier = vec![i];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for &f in &frontier {
                for &d in self.plan.dependents(f) {
                    if self.state[d] == State::Waiting {
                        self.state[d] = State::Done;
                        next.push((d, f));
                    }
                }
            }
            next.sort_unstable();
            frontier = next.iter().map(|&(d, _)| d).collect();
            skipped.extend(next);
        }
        skipped
    }

    /// Marks a task finished without effect on others (used when cancelling the rest of a run).
    pub fn finish(&mut self, i: usize) {
        self.state[i] = State::Done;
    }

    /// Tasks not finished yet, in input order.
    pub fn unfinished(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&i| self.state[i] != State::Done)
            .collect()
    }

    fn make_ready(&mut self, i: usize) {
        self.state[i] = State::Ready;
        self.ready.push((self.priority(i), Reverse(i)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphInput;

    fn plan(spec: &[&[usize]]) -> Plan {
        let inputs: Vec<GraphInput> = spec
            .iter()
            .enumerate()
            .map(|(i, deps)| GraphInput {
                id: Some(format!("t{i}")),
                deps: deps
                    .iter()
                    .enumerate()
                    .map(|(j, d)| (j, format!("t{d}")))
                    .collect(),
            })
            .collect();
        Plan::build(&inputs).unwrap()
    }

    #[test]
    fn critical_path_first_then_input_order() {
        // t0, t1 independent; t2 -> t3 -> t4 is a chain listed after them.
        let mut s = Scheduler::new(plan(&[&[], &[], &[], &[2], &[3]]));
        assert_eq!(s.ready_tasks(), vec![0, 1, 2]);
        assert_eq!(s.pop_ready(), Some(2));
        assert_eq!(s.pop_ready(), Some(0));
        assert_eq!(s.pop_ready(), Some(1));
        assert_eq!(s.pop_ready(), None);
        assert_eq!(s.succeeded(2), vec![3]);
        assert_eq!(s.pop_ready(), Some(3));
    }

    #[test]
    fn weighted_priority_prefers_the_longest_path_in_time() {
        // t0 -> t1 -> t2 (short tasks) and t3 -> t4 (long), listed after them.
        let mut s = Scheduler::new(plan(&[&[], &[0], &[1], &[], &[3]]));
        assert_eq!(
            s.pop_ready(),
            Some(0),
            "by task count the longer chain first"
        );
        s.requeue(0);
        s.weigh(&[1, 1, 1, 10, 10]);
        assert_eq!(s.pop_ready(), Some(3));
        assert_eq!(s.pop_ready(), Some(0));
        let (path, total) = s.plan().critical_path_weighted(&[1, 1, 1, 10, 10]);
        assert_eq!((path, total), (vec![3, 4], 20));
    }

    #[test]
    fn join_waits_for_all_dependencies() {
        let mut s = Scheduler::new(plan(&[&[], &[], &[0, 1]]));
        s.pop_ready();
        s.pop_ready();
        assert!(s.succeeded(0).is_empty());
        assert_eq!(s.succeeded(1), vec![2]);
    }

    #[test]
    fn failure_skips_all_descendants_but_not_other_branches() {
        // t0 -> t1 -> t2, t3 independent, t4 depends on t1 and t3.
        let mut s = Scheduler::new(plan(&[&[], &[0], &[1], &[], &[1, 3]]));
        assert_eq!(s.pop_ready(), Some(0));
        assert_eq!(s.failed(0), vec![(1, 0), (2, 1), (4, 1)]);
        assert_eq!(s.unfinished(), vec![3]);
        assert_eq!(s.pop_ready(), Some(3));
        assert!(s.succeeded(3).is_empty(), "t4 was skipped, never ready");
    }

    #[test]
    fn pop_where_skips_refused_tasks_without_losing_them() {
        let mut s = Scheduler::new(plan(&[&[], &[], &[]]));
        assert_eq!(s.pop_ready_where(|i| i != 0), Some(1));
        assert_eq!(s.pop_ready_where(|i| i != 0), Some(2));
        assert_eq!(s.pop_ready_where(|i| i != 0), None);
        assert!(s.has_ready());
        assert_eq!(s.pop_ready(), Some(0));
        assert!(!s.has_ready());
    }

    #[test]
    fn requeued_task_is_ready_again() {
        let mut s = Scheduler::new(plan(&[&[]]));
        assert_eq!(s.pop_ready(), Some(0));
        assert!(!s.has_ready());
        s.requeue(0);
        assert_eq!(s.pop_ready(), Some(0));
    }
}
