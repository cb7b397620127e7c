//! Accepting connections so that no client can end the process: the webhook port and the control
//! socket each hold a bounded number of connections, and an accept that fails because the process
//! (or the system) is out of descriptors, or because a connection died before it was taken, is
//! logged and retried after a pause instead of ending the accept loop — and with it `sluice serve`.
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most connections one listener holds at once; further clients wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 512;

/// How long an HTTP client may take to send a request's headers, or its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether an accept error passes with time: out of descriptors or buffers, or a connection
/// that was reset or aborted before it was accepted.
pub fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EPROTO
                | libc::EINTR
        )
    )
}

/// One listener's accept policy: a connection slot first, then the connection.
pub struct Gate {
    slots: Arc<Semaphore>,
    what: &'static str,
}

impl Gate {
    /// A gate of [`MAX_CONNECTIONS`] slots; `what` names the listener in the log.
    pub fn new(what: &'static str) -> Self {
        Gate {
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            what,
        }
    }

    /// Wait for a free slot, then accept with `accept`. Transient errors are logged and retried
    /// with a growing pause (10 ms to 1 s); any other error is returned. The permit frees the
    /// slot when the connection's task drops it.
    pub async fn accept<T, F, Fut>(&self, mut accept: F) -> io::Result<(T, OwnedSemaphorePermit)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the gate's semaphore is never closed");
        let mut pause = Duration::from_millis(10);
        loop {
            match accept().await {
                Ok(conn) => return Ok((conn, permit)),
                Err(e) if transient(&e) => {
                    tracing::warn!(
                        "{}: accepting a connection failed ({e}); retrying in {pause:?}",
                        self.what
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn running_out_of_descriptors_pauses_the_accept_loop_instead_of_ending_it() {
        let gate = Gate::new("test");
        let mut calls = 0;
        let (conn, _permit) = gate
            .accept(|| {
                calls += 1;
                let n = calls;
                async move {
                    match n {
                        1 => Err(io::Error::from_raw_os_error(libc::EMFILE)),
                        2 => Err(io::Error::from_raw_os_error(libc::ECONNABORTED)),
                        _ => Ok(n),
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(conn, 3);
        let e = gate
            .accept(|| async { Err::<(), _>(io::Error::from_raw_os_error(libc::EBADF)) })
            .await
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    #[tokio::test]
    async fn a_full_gate_waits_for_a_connection_to_end() {
        let gate = Arc::new(Gate::new("test"));
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(gate.accept(|| async { Ok(()) }).await.unwrap().1);
        }
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.accept(|| async { Ok(()) }).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a connection beyond the cap was accepted"
        );
        held.pop();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap()
        );
    }
}
