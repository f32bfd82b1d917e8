//! A process's cache of answers read from the database, emptied whenever a NOTIFY
//! on its channel says that what they were read from changed.
//!
//! An answer is kept only while the cache listens ([`keep_fresh`]): a cache whose
//! listener is not running, or lost its connection, keeps nothing. Every
//! notification, every (re)connection and every lost connection empties it, and
//! an answer read from the database before one of these is refused when it is put
//! in afterwards (see [`Ticket`]). So an answer is served stale only for as long
//! as a committed change's notification takes to arrive (normally well under a
//! millisecond on one host). A listener whose connection stops answering without
//! a word (a network that drops packets instead of refusing them) misses its own
//! heartbeat and counts as lost within [`HEARTBEAT`] + [`BEAT_WAIT`]; and no answer
//! is served older than [`MAX_AGE`], counted from when its read began, whatever the
//! listener does. (An answer's `until`, a session's expiry, is the database's time
//! compared with the process's clock: a clock behind the database's serves an
//! expired session for as long as it is behind, at most [`MAX_AGE`].)

use std::{
    any::Any,
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use super::listen::BEAT_WAIT;
use super::listen::{self, Heard};

/// The longest an answer is served from the cache, counted from when its read
/// began: the bound on its staleness if the listener failed to notice anything.
pub const MAX_AGE: Duration = Duration::from_secs(10);
/// How long the listener may hear nothing before it checks, with a heartbeat, that
/// its connection still delivers.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// The most answers kept; a full cache drops the expired ones, then all.
pub const CAPACITY: usize = 10_000;

/// The cache (cheap to clone: clones share it).
#[derive(Clone, Default)]
pub struct NotifiedCache(Arc<Mutex<Inner>>);

impl std::fmt::Debug for NotifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("NotifiedCache")
            .field("listening", &inner.listening)
            .field("epoch", &inner.epoch)
            .field("answers", &inner.answers.len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    /// Whether the listener listens: nothing is kept otherwise.
    listening: bool,
    /// Counts the times the cache was emptied.
    epoch: u64,
    answers: HashMap<[u8; 32], Answer>,
}

struct Answer {
    value: Arc<dyn Any + Send + Sync>,
    /// When its read began (its ticket's time).
    stored: Instant,
    /// When the answer stops being true by itself (a session's expiry).
    until: DateTime<Utc>,
}

/// Taken before an answer is read from the database, and given back with it to
/// [`NotifiedCache::put`]: if the cache was emptied in between (a change may have
/// been committed after the read began), the answer is not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    taken: Instant,
}

impl NotifiedCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock is never held across anything that can panic; a poisoned one still
        // holds a consistent map.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer kept for `key`, if there is one, it is younger than [`MAX_AGE`]
    /// and its `until` has not passed.
    pub fn get<V: Clone + Send + Sync + 'static>(&self, key: &[u8; 32]) -> Option<V> {
        let inner = self.lock();
        let answer = inner.answers.get(key)?;
        if answer.stored.elapsed() >= MAX_AGE || answer.until <= Utc::now() {
            return None;
        }
        answer.value.downcast_ref::<V>().cloned()
    }

    /// A ticket for an answer about to be read, if the cache listens.
    pub fn ticket(&self) -> Option<Ticket> {
        let inner = self.lock();
        inner.listening.then_some(Ticket { epoch: inner.epoch, taken: Instant::now() })
    }

    /// Keeps `value` for `key` until `until` (or for [`MAX_AGE`]), unless the cache
    /// was emptied since `ticket` was taken.
    pub fn put<V: Send + Sync + 'static>(&self, ticket: Ticket, key: [u8; 32], value: V, until: DateTime<Utc>) {
        let mut inner = self.lock();
        if !inner.listening || ticket.epoch != inner.epoch {
            return;
        }
        if inner.answers.len() >= CAPACITY {
            let now = Utc::now();
            inner.answers.retain(|_, a| a.stored.elapsed() < MAX_AGE && a.until > now);
            if inner.answers.len() >= CAPACITY {
                inner.answers.clear();
            }
        }
        inner.answers.insert(key, Answer { value: Arc::new(value), stored: ticket.taken, until });
    }

    /// How many times the cache was emptied (a test waits on it to see a change
    /// arrive).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Whether the listener listens.
    pub fn listening(&self) -> bool {
        self.lock().listening
    }

    /// Empties the cache after what the listener heard.
    fn heard(&self, heard: &Heard) {
        let mut inner = self.lock();
        inner.listening = match heard {
            Heard::Listening | Heard::Message(_) => true,
            Heard::Lost => false,
        };
        inner.epoch += 1;
        inner.answers.clear();
    }

    /// Stops keeping anything (the listener stopped).
    fn stop(&self) {
        self.heard(&Heard::Lost);
    }
}

/// Keeps `cache` listening on `channel` until `stop` is cancelled: each notification
/// empties it. Spawned once per web process. However this ends (stopped, panicked,
/// aborted), the cache keeps nothing after it.
pub async fn keep_fresh(cache: NotifiedCache, pool: PgPool, channel: &'static str, stop: CancellationToken) {
    struct StopOnDrop(NotifiedCache);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let cache = StopOnDrop(cache);
    let mut heard =
        listen::notifications(pool, channel, "answers are read from the database meanwhile", Some(HEARTBEAT));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            next = heard.next() => match next {
                Some(h) => cache.0.heard(&h),
                None => break,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::hours(1)
    }

    #[test]
    fn nothing_is_kept_until_the_cache_listens() {
        let cache = NotifiedCache::default();
        assert_eq!(cache.ticket(), None);
        cache.heard(&Heard::Listening);
        let ticket = cache.ticket().unwrap();
        cache.put(ticket, [1; 32], 7u32, later());
        assert_eq!(cache.get::<u32>(&[1; 32]), Some(7));
        assert_eq!(cache.get::<u64>(&[1; 32]), None, "another type is no answer");
        assert_eq!(cache.get::<u32>(&[2; 32]), None);
    }

    #[test]
    fn a_notification_or_a_lost_connection_empties_it_and_refuses_answers_read_before() {
        let cache = NotifiedCache::default();
        cache.heard(&Heard::Listening);
        let before = cache.ticket().unwrap();
        cache.put(before, [1; 32], 1u32, later());
        cache.heard(&Heard::Message(String::new()));
        assert_eq!(cache.get::<u32>(&[1; 32]), None, "emptied");
        // Read before the change, put after it: refused.
        cache.put(before, [1; 32], 1u32, later());
        assert_eq!(cache.get::<u32>(&[1; 32]), None, "a stale answer is not kept");
        let after = cache.ticket().unwrap();
        cache.put(after, [1; 32], 2u32, later());
        assert_eq!(cache.get::<u32>(&[1; 32]), Some(2));
        cache.heard(&Heard::Lost);
        assert_eq!(cache.get::<u32>(&[1; 32]), None);
        assert_eq!(cache.ticket(), None, "nothing is kept while not listening");
        cache.put(after, [1; 32], 3u32, later());
        assert_eq!(cache.get::<u32>(&[1; 32]), None);
        cache.heard(&Heard::Listening);
        cache.put(after, [1; 32], 4u32, later());
        assert_eq!(cache.get::<u32>(&[1; 32]), None, "a ticket from before the connection was lost");
    }

    #[test]
    fn an_answer_past_its_own_end_is_not_served() {
        let cache = NotifiedCache::default();
        cache.heard(&Heard::Listening);
        let ticket = cache.ticket().unwrap();
        cache.put(ticket, [1; 32], 1u32, Utc::now() - chrono::Duration::seconds(1));
        assert_eq!(cache.get::<u32>(&[1; 32]), None);
    }

    #[test]
    fn an_answer_older_than_max_age_counted_from_its_read_is_not_served() {
        let cache = NotifiedCache::default();
        cache.heard(&Heard::Listening);
        let mut ticket = cache.ticket().unwrap();
        ticket.taken = Instant::now().checked_sub(MAX_AGE).expect("the machine has been up longer than MAX_AGE");
        cache.put(ticket, [1; 32], 1u32, later());
        assert_eq!(cache.get::<u32>(&[1; 32]), None, "a read begun MAX_AGE ago");
        let mut ticket = cache.ticket().unwrap();
        ticket.taken = Instant::now().checked_sub(MAX_AGE / 2).unwrap();
        cache.put(ticket, [1; 32], 2u32, later());
        assert_eq!(cache.get::<u32>(&[1; 32]), Some(2), "one begun half of it ago");
    }

    #[test]
    fn a_full_cache_makes_room() {
        let cache = NotifiedCache::default();
        cache.heard(&Heard::Listening);
        let ticket = cache.ticket().unwrap();
        for i in 0..CAPACITY + 5 {
            let mut key = [0; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.put(ticket, key, i, later());
        }
        let kept = cache.lock().answers.len();
        assert!(kept <= CAPACITY, "{kept}");
        let mut last = [0; 32];
        last[..8].copy_from_slice(&((CAPACITY + 4) as u64).to_le_bytes());
        assert_eq!(cache.get::<usize>(&last), Some(CAPACITY + 4), "the newest is kept");
    }
}
