//! The gateway's clock. Every decision that depends on the time of day reads it: token expiry
//! and not-before, session idle and absolute lifetimes, revocation instants, throttle windows,
//! refresh-token grace, the instants in audit events. The gateway owns one ([`crate::Gateway::clock`])
//! and hands it, or the instant read from it once per request, to every stage.
//!
//! In production it is the system clock. Tests start a gateway with [`Clock::manual`] and move
//! it forward with [`Clock::advance`], so "the access token has expired" or "the idle timeout
//! has passed" costs no waiting and cannot race a slow machine.
//!
//! What does not read it: timeouts and rates measured on the monotonic clock (`Instant`: the
//! upstream and body timeouts, the store's staleness bound, the heartbeat), which are about how
//! long the gateway itself waited, and cache eviction, which only frees memory (every cached
//! verdict is re-checked against this clock when it is used). Redis measures its own key
//! lifetimes; the store scripts compare the caller's `now` wherever a decision depends on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The time source: the system clock, or a manual one that moves only when told.
/// Cloning shares it: every clone of a manual clock sees the same time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds since the Unix epoch, when manual.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A manual clock that starts at the system time now and moves only with [`advance`].
    ///
    /// [`advance`]: Clock::advance
    pub fn manual() -> Self {
        Self::manual_at(system_millis())
    }

    /// A manual clock that starts at `unix_millis`.
    pub fn manual_at(unix_millis: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(unix_millis))),
        }
    }

    /// Whether this clock moves only when told.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Seconds since the Unix epoch (the unit of JWT claims and of the store's records).
    pub fn now(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_millis(&self) -> i64 {
        match &self.manual {
            Some(ms) => ms.load(Ordering::Relaxed),
            None => system_millis(),
        }
    }

    /// Moves a manual clock forward by `by`.
    ///
    /// # Panics
    /// On the system clock, which cannot be moved: a test that advances time must have started
    /// its gateway with [`Clock::manual`].
    pub fn advance(&self, by: Duration) {
        let ms = self
            .manual
            .as_ref()
            .expect("only a manual clock can be advanced");
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        ms.fetch_add(by, Ordering::Relaxed);
    }

    /// Sets a manual clock to `unix_millis` (forwards or back: a test of clock skew).
    ///
    /// # Panics
    /// On the system clock.
    pub fn set_millis(&self, unix_millis: i64) {
        self.manual
            .as_ref()
            .expect("only a manual clock can be set")
            .store(unix_millis, Ordering::Relaxed);
    }
}

/// The system clock in milliseconds since the epoch; 0 before it (a clock set before 1970 makes
/// every token look issued in the future, which fails closed).
fn system_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = Clock::manual_at(1_700_000_000_500);
        let shared = clock.clone();
        assert_eq!(clock.now(), 1_700_000_000);
        assert_eq!(clock.now_millis(), 1_700_000_000_500);
        shared.advance(Duration::from_millis(600));
        assert_eq!(clock.now(), 1_700_000_001);
        assert_eq!(clock.now_millis(), 1_700_000_001_100);
        clock.set_millis(1_000);
        assert_eq!(shared.now(), 1);
    }

    #[test]
    fn the_system_clock_follows_the_system() {
        let clock = Clock::system();
        assert!(!clock.is_manual());
        let before = system_millis();
        let now = clock.now_millis();
        assert!(now >= before && now - before < 60_000);
    }

    #[test]
    #[should_panic(expected = "only a manual clock can be advanced")]
    fn the_system_clock_cannot_be_advanced() {
        Clock::system().advance(Duration::from_secs(1));
    }
}
