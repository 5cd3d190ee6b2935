//! The worker limit: how many attempts may run at once.
//!
//! The dispatcher takes a slot before starting an attempt and gives it back when the attempt ends,
//! so a task waiting out a retry backoff holds no slot.

/// Counts running attempts against a fixed maximum.
#[derive(Debug, Clone)]
pub struct WorkerLimit {
    max: usize,
    in_use: usize,
}

impl WorkerLimit {
    pub fn new(max: usize) -> Self {
        WorkerLimit {
            max: max.max(1),
            in_use: 0,
        }
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&mut self) -> bool {
        if self.in_use < self.max {
            self.in_use += 1;
            true
        } else {
            false
        }
    }

    pub fn has_room(&self) -> bool {
        self.in_use < self.max
    }

    pub fn release(&mut self) {
        debug_assert!(self.in_use > 0, "release without acquire");
        self.in_use = self.in_use.saturating_sub(1);
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_exceeds_the_maximum() {
        let mut l = WorkerLimit::new(2);
        assert!(l.try_acquire());
        assert!(l.try_acquire());
        assert!(!l.try_acquire());
        assert_eq!(l.in_use(), 2);
        l.release();
        assert!(l.has_room());
        assert!(l.try_acquire());
        assert!(!l.has_room());
    }

    #[test]
    fn zero_means_one() {
        let mut l = WorkerLimit::new(0);
        assert!(l.try_acquire());
        assert!(!l.try_acquire());
    }
}
