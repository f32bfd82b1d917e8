//! Password hashing with argon2id, off the async threads, at most one hash per core
//! at a time: argon2 is built to cost CPU and memory (19 MiB each), so unbounded
//! sign-ins would starve every other request. Sign-ins beyond the cap wait for a
//! slot up to `PASSWORD_HASH_WAIT_MS`, then get [`Busy`] (a 503).

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use rand::RngCore;
use tokio::sync::Semaphore;

/// A PHC string for `password`.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let salt = SaltString::encode_b64(&raw).map_err(|e| anyhow::anyhow!("making a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// Every hashing slot was busy for longer than the caller would wait.
#[derive(Debug, PartialEq)]
pub struct Busy;

/// Checks `password` against `phc`, waiting at most `max_wait` for a hashing slot.
/// An unparsable hash (an account that cannot sign in) verifies against a dummy
/// hash, so timing does not tell accounts apart. The slot moves into the blocking
/// task, so it is held exactly as long as the hash runs, even when the client goes
/// away and this future is dropped.
pub async fn verify(password: String, phc: Option<String>, max_wait: Duration) -> Result<bool, Busy> {
    let permit = acquire(max_wait).await?;
    let hashed = tokio::task::spawn_blocking(move || {
        let _slot = InFlight::enter(permit);
        let dummy = dummy_hash();
        let (phc, real) = match phc.as_deref().map(PasswordHash::new) {
            Some(Ok(h)) => (h, true),
            _ => (PasswordHash::new(dummy).expect("dummy hash parses"), false),
        };
        Argon2::default().verify_password(password.as_bytes(), &phc).is_ok() && real
    });
    Ok(hashed.await.unwrap_or(false))
}

/// The process's hashing slots: one per core (the CPU is the process's).
fn slots() -> &'static Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(Semaphore::new(cap())))
}

/// How many hashes may run at once: the number of cores.
pub fn cap() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

async fn acquire(max_wait: Duration) -> Result<tokio::sync::OwnedSemaphorePermit, Busy> {
    if let Ok(p) = slots().clone().try_acquire_owned() {
        return Ok(p);
    }
    STATS.waited.fetch_add(1, Ordering::Relaxed);
    match tokio::time::timeout(max_wait, slots().clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => {
            STATS.busy.fetch_add(1, Ordering::Relaxed);
            Err(Busy)
        }
    }
}

struct Counters {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    waited: AtomicU64,
    busy: AtomicU64,
}

static STATS: Counters = Counters {
    in_flight: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
    waited: AtomicU64::new(0),
    busy: AtomicU64::new(0),
};

/// A running hash: counted while it lives, and holding its slot.
struct InFlight {
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl InFlight {
    fn enter(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        let now = STATS.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        STATS.peak.fetch_max(now, Ordering::SeqCst);
        Self { _slot: permit }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Runs before the slot (a field) is released, so in_flight never exceeds the cap.
        STATS.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// This process's hashing figures, for tests and diagnostics.
#[derive(Clone, Copy, Debug)]
pub struct HashStats {
    /// Slots (the cap).
    pub cap: usize,
    /// Hashes running now.
    pub in_flight: usize,
    /// The most that ever ran at once (since [`reset_peak`]).
    pub peak: usize,
    /// Sign-ins that found every slot busy and waited.
    pub waited: u64,
    /// Sign-ins that waited too long and were answered 503.
    pub busy: u64,
}

/// See [`HashStats`].
pub fn stats() -> HashStats {
    HashStats {
        cap: cap(),
        in_flight: STATS.in_flight.load(Ordering::SeqCst),
        peak: STATS.peak.load(Ordering::SeqCst),
        waited: STATS.waited.load(Ordering::Relaxed),
        busy: STATS.busy.load(Ordering::Relaxed),
    }
}

/// Starts measuring the peak afresh (from what runs now).
pub fn reset_peak() {
    STATS.peak.store(STATS.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("not-a-real-password").expect("hashing works"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn verifies_only_the_right_password() {
        let h = hash("correct horse").unwrap();
        assert_eq!(verify("correct horse".into(), Some(h.clone()), WAIT).await, Ok(true));
        assert_eq!(verify("wrong".into(), Some(h), WAIT).await, Ok(false));
        assert_eq!(verify("not-a-real-password".into(), Some("!".into()), WAIT).await, Ok(false));
        assert_eq!(verify("x".into(), None, WAIT).await, Ok(false));
    }

    #[tokio::test]
    async fn a_sign_in_that_finds_every_slot_busy_waits_then_gives_up() {
        let h = hash("pw").unwrap();
        let all = slots().clone().acquire_many_owned(cap() as u32).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(verify("pw".into(), Some(h.clone()), Duration::from_millis(200)).await, Err(Busy));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(verify("pw".into(), Some(h.clone()), Duration::ZERO).await, Err(Busy));
        // A slot freed while waiting is taken.
        let waiting = tokio::spawn(verify("pw".into(), Some(h), Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(all);
        assert_eq!(waiting.await.unwrap(), Ok(true));
    }
}
