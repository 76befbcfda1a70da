//! The tokio runtime every object-store request runs on. The store clients keep pooled
//! connections whose tasks live on the runtime that opened them, so all requests go through this
//! one runtime, whoever calls: async callers await a task spawned on it, sync callers (the shard
//! writer, the trainer's checkpoint save) block on it, from a scoped thread when they are
//! themselves inside another runtime (where blocking on a runtime would panic).
use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::{Handle, Runtime};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("albef-store")
            .enable_all()
            .build()
            .expect("cannot start the object-store runtime")
    })
}

/// Runs `work` on the store runtime and awaits it from any runtime.
pub(crate) async fn on_store<F>(work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match runtime().spawn(work).await {
        Ok(out) => out,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Runs `work` on the store runtime and blocks this thread until it ends.
pub fn block_on<F>(work: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if Handle::try_current().is_err() {
        return runtime().block_on(work);
    }
    std::thread::scope(|s| {
        s.spawn(|| runtime().block_on(work))
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}
