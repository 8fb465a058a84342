//! Runs a list of jobs on a few threads, stopping at the first failure.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Result;

/// Runs `job` on every item, `threads` at a time, in item order per thread. After a failure
/// no new item starts. Returns each item's outcome, `None` for items never started.
pub fn run<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    job: impl Fn(&T) -> Result<R> + Sync,
) -> Vec<Option<Result<R>>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outcomes: Vec<Mutex<Option<Result<R>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= items.len() || failed.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = job(&items[i]);
                    if r.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    *outcomes[i].lock().expect("outcome lock") = Some(r);
                }
            });
        }
    });
    outcomes
        .into_iter()
        .map(|o| o.into_inner().expect("outcome lock"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_and_a_failure_stops_new_ones() {
        let items: Vec<u32> = (0..20).collect();
        let out = run(&items, 3, |&i| Ok(i * 2));
        let got: Vec<u32> = out.into_iter().map(|o| o.unwrap().unwrap()).collect();
        assert_eq!(got, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let out = run(&items, 1, |&i| {
            if i == 3 {
                anyhow::bail!("boom")
            }
            Ok(i)
        });
        assert!(out[3].as_ref().unwrap().is_err());
        assert!(
            out[4..].iter().all(Option::is_none),
            "nothing starts after a failure"
        );
    }
}
