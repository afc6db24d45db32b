//! The store's epoch: how an instance tells that the shared store lost its data, and what it
//! refuses afterwards.
//!
//! Revocations live in the store. A store that loses its data (`FLUSHALL`, a restart without
//! persistence, a failover to an empty replica) forgets every denied `jti` and every "revoked
//! before" instant, and a revoked token would be accepted again until its own `exp`. Session-
//! bound tokens are not at risk — their sessions are lost with the rest, so they are refused
//! as unknown — but tokens of issuers whose sessions the gateway does not hold
//! (`require_session: false`) are.
//!
//! So the store holds one marker, the **epoch**: a random id, the instant it was created, a
//! cutoff and a state. An instance that finds no epoch creates one (an empty store cannot be
//! told apart from one that lost its data, and a whole fleet may restart together), and every
//! instance remembers the epoch it saw. Seeing another id later — on a heartbeat, in another
//! instance's heartbeat on the invalidation channel, or on any read that misses the cache —
//! means the store was reset:
//! - tokens issued at or before the new epoch's creation are refused, on every instance (the
//!   cutoff is part of the epoch, so instances started after the loss refuse them too);
//! - every cached positive verdict is dropped at once;
//! - the event is audited (`store.reset_detected`) and counted;
//! - with `on_data_loss: unavailable`, the epoch is marked halted and every instance answers
//!   503 for store checks until an operator resumes it (`POST /admin/store/resume`).
//!
//! An epoch an instance creates at its start takes `now` as its cutoff as well — a new
//! deployment refuses sessionless tokens minted before it, for at most their lifetime — unless
//! `first_start: true` says this really is the first start (then nothing is cut off).
//!
//! Times are whole seconds, like `iat`; a token issued in the same second as the epoch's
//! creation is refused (its `iat` cannot tell whether it came before or after).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// The wire form's version tag.
const VERSION: &str = "1";

/// One epoch of the store, as written in its marker key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// Random, 128 bits, lower-case hex: what tells one epoch from another.
    pub id: String,
    /// When it was created, seconds since the epoch.
    pub created: i64,
    /// Tokens without a session issued at or before this instant are refused.
    pub cutoff: i64,
    /// Whether store checks are refused (503) until an operator resumes it.
    pub halted: bool,
}

impl Epoch {
    /// A new epoch created at `now`, with a fresh random id.
    pub fn new(now: i64, cutoff: i64, halted: bool) -> Self {
        let mut bytes = [0u8; 16];
        // The OS CSPRNG; a failure here is not recoverable and would be a broken host.
        aws_lc_rs::rand::fill(&mut bytes).expect("the OS random number generator failed");
        Self {
            id: super::cache::hex(&bytes),
            created: now,
            cutoff,
            halted,
        }
    }

    /// The marker's value: `1 <id> <created> <cutoff> <ok|halted>`.
    pub fn encode(&self) -> String {
        format!(
            "{VERSION} {} {} {} {}",
            self.id,
            self.created,
            self.cutoff,
            if self.halted { "halted" } else { "ok" }
        )
    }

    /// Parses a marker's value; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let mut words = text.split(' ');
        if words.next()? != VERSION {
            return None;
        }
        let id = words.next()?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let created = words.next()?.parse().ok()?;
        let cutoff = words.next()?.parse().ok()?;
        let halted = match words.next()? {
            "ok" => false,
            "halted" => true,
            _ => return None,
        };
        if words.next().is_some() {
            return None;
        }
        Some(Self {
            id: id.to_owned(),
            created,
            cutoff,
            halted,
        })
    }
}

/// What to do once a reset is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDataLoss {
    /// Refuse every token issued before the reset (the default): service continues, users of
    /// sessionless tokens get new ones.
    RefuseEarlierTokens,
    /// Answer 503 to every store check until an operator resumes.
    Unavailable,
}

/// What an observation of the marker meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The first epoch this instance saw.
    First,
    /// The epoch it already knew (its state may have changed).
    Same,
    /// Another epoch than the one this instance knew: the store was reset.
    Reset {
        /// The epoch known before.
        previous: Epoch,
    },
}

/// One instance's knowledge of the epoch. Read on every read-through (the cutoff and the
/// halted flag are atomics); changed only by observations, under a mutex (rare: heartbeats).
#[derive(Debug)]
pub struct EpochWatch {
    known: Mutex<Known>,
    /// Tokens without a session issued at or before this are refused; `i64::MIN` before any
    /// epoch was seen.
    cutoff: AtomicI64,
    /// Whether store checks are refused.
    halted: AtomicBool,
    /// Whether any epoch was seen yet.
    seen: AtomicBool,
}

#[derive(Debug, Default)]
struct Known {
    epoch: Option<Epoch>,
    /// This instance detected a reset and asked for the epoch to be halted: it stays halted
    /// until it has seen the store say "halted" and then "ok" (an operator resumed), not merely
    /// because its own request to halt has not landed yet.
    halting: bool,
    /// The store was seen to say "halted" since this instance started halting.
    saw_halted: bool,
}

impl Default for EpochWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl EpochWatch {
    /// Knows no epoch yet.
    pub fn new() -> Self {
        Self {
            known: Mutex::new(Known::default()),
            cutoff: AtomicI64::new(i64::MIN),
            halted: AtomicBool::new(false),
            seen: AtomicBool::new(false),
        }
    }

    /// Tokens without a session issued at or before this instant are refused.
    pub fn cutoff(&self) -> i64 {
        self.cutoff.load(Ordering::Acquire)
    }

    /// Whether store checks are refused until an operator resumes.
    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// Whether an epoch has been seen (before that, nothing is known about resets).
    pub fn has_seen(&self) -> bool {
        self.seen.load(Ordering::Acquire)
    }

    /// The epoch this instance knows.
    pub fn current(&self) -> Option<Epoch> {
        self.lock().epoch.clone()
    }

    /// Whether `id` is the epoch this instance knows.
    pub fn is_current(&self, id: &str) -> bool {
        self.lock().epoch.as_ref().is_some_and(|e| e.id == id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes in the epoch the store holds now. `mode` decides what a reset does to the halted
    /// flag: with [`OnDataLoss::Unavailable`] the instance halts at once, before the store says
    /// so (the caller asks the store to mark the epoch halted).
    pub fn observe(&self, seen: &Epoch, mode: OnDataLoss) -> Observation {
        let mut known = self.lock();
        let observation = match &known.epoch {
            None => Observation::First,
            Some(e) if e.id == seen.id => Observation::Same,
            Some(e) => Observation::Reset {
                previous: e.clone(),
            },
        };
        let mut cutoff = seen.cutoff;
        if let Observation::Reset { .. } = observation {
            // Whatever the new epoch's own cutoff says, this instance knows a reset happened
            // before the new epoch was created.
            cutoff = cutoff.max(seen.created);
            known.halting = mode == OnDataLoss::Unavailable;
            known.saw_halted = false;
        }
        if seen.halted {
            known.saw_halted = true;
        }
        let halted = if seen.halted {
            true
        } else if known.halting && !known.saw_halted {
            // Our own request to halt has not reached the store yet.
            true
        } else {
            known.halting = false;
            false
        };
        known.epoch = Some(seen.clone());
        self.cutoff.fetch_max(cutoff, Ordering::AcqRel);
        self.halted.store(halted, Ordering::Release);
        self.seen.store(true, Ordering::Release);
        observation
    }

    /// Whether a token without a session, issued at `issued_at`, predates the known reset.
    pub fn refuses(&self, issued_at: i64) -> bool {
        issued_at <= self.cutoff()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(id: char, created: i64, cutoff: i64, halted: bool) -> Epoch {
        Epoch {
            id: std::iter::repeat_n(id, 32).collect(),
            created,
            cutoff,
            halted,
        }
    }

    #[test]
    fn epochs_round_trip_through_their_marker_and_nothing_else_parses() {
        let e = Epoch::new(1_700_000_000, 1_700_000_000, false);
        assert_eq!(Epoch::decode(&e.encode()), Some(e.clone()));
        let h = Epoch { halted: true, ..e };
        assert_eq!(Epoch::decode(&h.encode()), Some(h));
        for bad in [
            "",
            "2 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 1 1 ok",
            "1 short 1 1 ok",
            "1 zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz 1 1 ok",
            "1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa x 1 ok",
            "1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 1 1 maybe",
            "1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 1 1 ok extra",
        ] {
            assert_eq!(Epoch::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn new_epochs_have_distinct_random_ids() {
        assert_ne!(Epoch::new(1, 1, false).id, Epoch::new(1, 1, false).id);
    }

    #[test]
    fn the_first_epoch_sets_its_cutoff_and_a_different_one_is_a_reset_cut_off_at_its_creation() {
        let w = EpochWatch::new();
        assert!(!w.has_seen());
        assert!(!w.refuses(0), "nothing is cut off before an epoch is known");
        assert_eq!(
            w.observe(&epoch('a', 100, 90, false), OnDataLoss::RefuseEarlierTokens),
            Observation::First
        );
        assert!(w.refuses(90) && !w.refuses(91));
        assert_eq!(
            w.observe(&epoch('a', 100, 90, false), OnDataLoss::RefuseEarlierTokens),
            Observation::Same
        );
        // The new epoch says "cut off nothing" (made by an instance with first_start), but this
        // instance saw the reset: it cuts off at the new epoch's creation regardless.
        let obs = w.observe(&epoch('b', 200, 0, false), OnDataLoss::RefuseEarlierTokens);
        assert!(matches!(obs, Observation::Reset { previous } if previous.id.starts_with('a')));
        assert!(w.refuses(200) && !w.refuses(201));
        assert!(!w.is_halted());
        // The cutoff never moves back.
        w.observe(&epoch('b', 200, 0, false), OnDataLoss::RefuseEarlierTokens);
        assert!(w.refuses(200));
    }

    #[test]
    fn in_unavailable_mode_a_reset_halts_until_the_store_says_halted_and_then_ok() {
        let w = EpochWatch::new();
        w.observe(&epoch('a', 100, 100, false), OnDataLoss::Unavailable);
        assert!(!w.is_halted());
        w.observe(&epoch('b', 200, 200, false), OnDataLoss::Unavailable);
        assert!(w.is_halted(), "halted at detection");
        w.observe(&epoch('b', 200, 200, false), OnDataLoss::Unavailable);
        assert!(
            w.is_halted(),
            "still halted: the request to halt has not reached the store"
        );
        w.observe(&epoch('b', 200, 200, true), OnDataLoss::Unavailable);
        assert!(w.is_halted());
        w.observe(&epoch('b', 200, 200, false), OnDataLoss::Unavailable);
        assert!(!w.is_halted(), "an operator resumed the epoch");
    }

    #[test]
    fn an_instance_that_first_sees_a_halted_epoch_is_halted_until_it_is_resumed() {
        let w = EpochWatch::new();
        w.observe(&epoch('a', 100, 100, true), OnDataLoss::RefuseEarlierTokens);
        assert!(w.is_halted());
        w.observe(
            &epoch('a', 100, 100, false),
            OnDataLoss::RefuseEarlierTokens,
        );
        assert!(!w.is_halted());
    }
}
