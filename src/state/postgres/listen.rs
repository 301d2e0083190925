//! Wake-ups across replicas: a commit that enqueues messages for a hook
//! sends `NOTIFY fhir_bridge_due, '<hook>'` in its own transaction (so it
//! is heard only once the messages are there, and never for a rollback),
//! and each process that waits for a hook keeps one connection of its own
//! (outside the pool: `LISTEN` is session state) that hears them and wakes
//! its local waiters (`state/wake.rs`).
//!
//! A wake-up is a hint, never a record: the worker looks at the outbox
//! within its own timeout anyway. So a notification lost while the
//! listening connection is down (reconnected after a pause), or a pooler
//! in transaction mode that cannot `LISTEN` at all, costs latency, not a
//! message. Cost: PostgreSQL serializes the commits of transactions that
//! notify (one queue lock, held briefly at commit); one notification per
//! hook per page, duplicates folded by the server.

use crate::state::wake::Wakers;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_postgres::AsyncMessage;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

/// The notification channel of due messages; the payload is the hook.
pub(super) const CHANNEL: &str = "fhir_bridge_due";

/// How long the listener waits before connecting again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// This process's listening connection: started by the first wait, ended
/// once the store (every clone) is gone.
#[derive(Clone)]
pub(super) struct Listener {
    task: Arc<Task>,
    started: Arc<AtomicBool>,
    /// Held by the store and its clones only: the task ends when it goes.
    alive: Arc<()>,
}

/// What the listening task holds.
struct Task {
    config: tokio_postgres::Config,
    tls: Option<rustls::ClientConfig>,
    /// Whether the connection is up and listening.
    listening: AtomicBool,
}

impl Listener {
    pub(super) fn new(config: tokio_postgres::Config, tls: Option<rustls::ClientConfig>) -> Self {
        Listener {
            task: Arc::new(Task {
                config,
                tls,
                listening: AtomicBool::new(false),
            }),
            started: Default::default(),
            alive: Default::default(),
        }
    }

    /// Starts listening (once per store and its clones), waking `wakers`.
    pub(super) fn ensure(&self, wakers: &Wakers) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let (task, wakers) = (self.task.clone(), wakers.clone());
        let alive = Arc::downgrade(&self.alive);
        tokio::spawn(async move {
            while alive.strong_count() > 0 {
                let outcome = tokio::select! {
                    outcome = task.connect(&wakers) => outcome,
                    () = gone(&alive) => Ok(()),
                };
                task.listening.store(false, Ordering::SeqCst);
                if let Err(e) = outcome {
                    let e = crate::state::StateError::from(e);
                    tracing::debug!(error = %e, "wake-up listener: connection lost; again shortly");
                }
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT_AFTER) => {}
                    () = gone(&alive) => {}
                }
            }
        });
    }

    #[cfg(test)]
    pub(super) fn is_listening(&self) -> bool {
        self.task.listening.load(Ordering::SeqCst)
    }
}

/// Returns once the store is gone (looked at every few seconds).
async fn gone(alive: &Weak<()>) {
    while alive.strong_count() > 0 {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

impl Task {
    async fn connect(&self, wakers: &Wakers) -> Result<(), tokio_postgres::Error> {
        match &self.tls {
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone());
                self.listen(tls, wakers).await
            }
            None => self.listen(tokio_postgres::NoTls, wakers).await,
        }
    }

    /// One connection's life: `LISTEN`, then every notification heard wakes
    /// its hook's waiters, until the connection ends.
    async fn listen<T>(&self, tls: T, wakers: &Wakers) -> Result<(), tokio_postgres::Error>
    where
        T: MakeTlsConnect<tokio_postgres::Socket>,
        T::TlsConnect: Send,
        T::Stream: Send,
        <T::TlsConnect as TlsConnect<tokio_postgres::Socket>>::Future: Send,
    {
        let (client, mut conn) = self.config.connect(tls).await?;
        // The connection delivers notifications as messages of its own;
        // it must be polled for `LISTEN` to complete too.
        let drive = async {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                        wakers.notify_from_outside(n.payload());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        };
        tokio::pin!(drive);
        let listen = format!("LISTEN {CHANNEL}");
        tokio::select! {
            ended = &mut drive => return ended,
            listened = client.batch_execute(&listen) => listened?,
        }
        self.listening.store(true, Ordering::SeqCst);
        let ended = drive.await;
        drop(client);
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::super::outbox::insert_messages;
    use super::super::{PgSettings, PgStore, test_server};
    use crate::state::{Fence, NewMessage, PageCommit};
    use std::time::Duration;

    fn page(hook: &str, mid: &str) -> PageCommit {
        PageCommit {
            source: "s".into(),
            resource_type: "Observation".into(),
            messages: vec![NewMessage::test(hook, mid, "Observation", mid)],
            ..Default::default()
        }
    }

    /// A page committed by one replica wakes the hook's waiter in another;
    /// a rolled-back enqueue wakes nobody, and another hook's commit does
    /// not wake this hook.
    #[tokio::test]
    async fn a_commit_in_one_replica_wakes_the_hooks_waiter_in_another() {
        let Some(url) = test_server::fresh_database().await else {
            return;
        };
        let settings = PgSettings {
            url,
            pool_size: 2,
            tls: None,
        };
        let a = PgStore::connect(&settings).unwrap();
        let b = PgStore::connect(&settings).unwrap();
        let short = Duration::from_millis(300);
        // The first wait starts the listener.
        assert!(!b.wait_due("h", Duration::from_millis(1)).await);
        for _ in 0..1000 {
            if b.listener.is_listening() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(b.listener.is_listening());
        let f = Fence::private();
        let (woken, ()) = tokio::join!(b.wait_due("h", Duration::from_secs(30)), async {
            a.commit_page(&f, page("h", "m1")).await.unwrap();
        });
        assert!(woken, "woken by the other replica's commit");

        let mut client = a.client().await.unwrap();
        let tx = client.transaction().await.unwrap();
        insert_messages(&tx, &page("h", "m2").messages)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert!(!b.wait_due("h", short).await, "a rollback wakes nobody");

        a.commit_page(&f, page("g", "m3")).await.unwrap();
        assert!(!b.wait_due("h", short).await, "another hook's commit");
        assert!(b.wait_due("g", Duration::from_secs(30)).await);
    }

    /// Any session of the database may NOTIFY the channel with any text: a
    /// flood of made-up hook names does not grow a replica's wake-ups
    /// without end, and a real hook is still woken.
    #[tokio::test]
    async fn made_up_hook_names_from_the_channel_are_bounded() {
        let Some(url) = test_server::fresh_database().await else {
            return;
        };
        let settings = PgSettings {
            url,
            pool_size: 2,
            tls: None,
        };
        let a = PgStore::connect(&settings).unwrap();
        let b = PgStore::connect(&settings).unwrap();
        assert!(!b.wait_due("h", Duration::from_millis(1)).await);
        for _ in 0..1000 {
            if b.listener.is_listening() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let c = a.client().await.unwrap();
        c.batch_execute(&format!(
            "SELECT pg_notify('{}', 'made-up-' || g || repeat('x', 1000))
             FROM generate_series(1, 5000) g",
            super::CHANNEL
        ))
        .await
        .unwrap();
        let (woken, ()) = tokio::join!(b.wait_due("h", Duration::from_secs(30)), async {
            a.commit_page(&Fence::private(), page("h", "m1"))
                .await
                .unwrap();
        });
        assert!(woken, "a real hook's commit, after the flood");
        let n = b.wakers.len();
        assert!(n <= 1024, "{n} hooks known");
    }
}
