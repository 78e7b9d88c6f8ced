//! The one retry policy of the release: how long to pause before trying again what another
//! transaction's lock refused. Every pause grows the same way — from a first pause, doubling,
//! up to a cap, with equal jitter (half of it fixed, half random, so that two sessions polling
//! for the same row do not keep meeting) — and no pause runs past the deadline of the wait it
//! belongs to. Two scales of it: [`RetryPolicy::POLL`], polling for a row a checkout holds
//! (2 ms, doubling up to 32 ms, for `LOCK_TIMEOUT_MS`), and [`RetryPolicy::backoff`], backing
//! off between whole tries (`RETRY_BACKOFF_MS`, doubling up to 2 s). [`HeldRowRetry`] chains
//! them for a caller that never waits in a lock queue — release on request, revive: poll, then
//! back off and poll again, `BATCH_MAX_ATTEMPTS` times. A caller rolls back every row it took
//! before it pauses: it never keeps a row while it polls for another.

use std::time::{Duration, Instant};

use crate::config::ReleaseSettings;

/// The first pause before looking again for a row another transaction holds: a checkout holds
/// a hot row for a few milliseconds.
pub const POLL_FIRST: Duration = Duration::from_millis(2);
/// The longest pause between two looks for a held row: a row held for long costs a few looks,
/// not hundreds.
pub const POLL_CAP: Duration = Duration::from_millis(32);
/// The longest backoff between two tries of a batch (or of a release on request, a revive).
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Doublings after which a pause grows no more (every cap is reached long before): keeps the
/// arithmetic within range.
const MAX_DOUBLINGS: u32 = 16;

/// How the pauses of one kind of wait grow: the `n`-th pause (from 1) is `first × 2^(n−1)`, at
/// most `cap`, with equal jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// Polling for a row another transaction holds: 2 ms, then 4, ... up to 32 ms.
    pub const POLL: RetryPolicy = RetryPolicy {
        first: POLL_FIRST,
        cap: POLL_CAP,
    };

    /// Backing off between whole tries: `base_ms` (`RETRY_BACKOFF_MS`), doubling up to
    /// [`BACKOFF_CAP`].
    pub fn backoff(base_ms: u32) -> RetryPolicy {
        RetryPolicy {
            first: Duration::from_millis(u64::from(base_ms)),
            cap: BACKOFF_CAP,
        }
    }

    /// The `n`-th pause (from 1) before jitter: `first × 2^(n−1)`, at most `cap`.
    pub fn step(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(MAX_DOUBLINGS);
        self.first.saturating_mul(1 << doublings).min(self.cap)
    }

    /// The `n`-th pause (from 1): its [`step`](Self::step) with equal jitter, between half the
    /// step and the step.
    pub fn pause(&self, n: u32) -> Duration {
        let half = self.step(n) / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// The pauses of a wait that ends at `deadline` (None: it never ends by time).
    pub fn until(self, deadline: Option<Instant>) -> Poller {
        Poller {
            policy: self,
            deadline,
            pauses: 0,
            waited: Duration::ZERO,
        }
    }

    /// The pauses of a wait that ends `patience` from now.
    pub fn within(self, patience: Duration) -> Poller {
        self.until(Some(later(Instant::now(), patience)))
    }
}

/// The pauses of one wait, in order: each the next of its [`RetryPolicy`], cut to end at the
/// deadline; once the deadline is reached there is none (the wait is over: give up). The last
/// try thus comes at the deadline, never after a pause past it.
#[derive(Debug, Clone)]
pub struct Poller {
    policy: RetryPolicy,
    deadline: Option<Instant>,
    pauses: u32,
    waited: Duration,
}

impl Poller {
    /// The next pause, or None when the deadline is reached.
    pub fn next_pause(&mut self) -> Option<Duration> {
        self.next_pause_at(Instant::now())
    }

    fn next_pause_at(&mut self, now: Instant) -> Option<Duration> {
        let left = match self.deadline {
            Some(deadline) if now >= deadline => return None,
            deadline => deadline.map(|d| d - now),
        };
        self.pauses += 1;
        let pause = self.policy.pause(self.pauses);
        let pause = left.map_or(pause, |left| pause.min(left));
        self.waited += pause;
        Some(pause)
    }

    /// Sleeps the next pause and says that another try may follow; false, at once, when the
    /// deadline is reached.
    pub async fn pause(&mut self) -> bool {
        sleep(self.next_pause()).await
    }

    /// The pauses taken so far, summed.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// How many pauses were taken.
    pub fn pauses(&self) -> u32 {
        self.pauses
    }
}

/// How a caller that never waits in a lock queue (release on request, revive) waits for a
/// held row: an attempt polls for it ([`RetryPolicy::POLL`]) for `patience`
/// (`LOCK_TIMEOUT_MS`); then it backs off ([`RetryPolicy::backoff`], `RETRY_BACKOFF_MS`) and
/// the next attempt polls again, `attempts` (`BATCH_MAX_ATTEMPTS`) in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldRowRetry {
    pub attempts: u32,
    pub patience: Duration,
    pub backoff: RetryPolicy,
}

impl HeldRowRetry {
    /// The release's settings' retry.
    pub fn of(settings: &ReleaseSettings) -> HeldRowRetry {
        HeldRowRetry {
            attempts: settings.batch_max_attempts.max(1),
            patience: Duration::from_millis(u64::from(settings.lock_timeout_ms)),
            backoff: RetryPolicy::backoff(settings.retry_backoff_ms),
        }
    }

    /// The first attempt, polling from now.
    pub fn start(self) -> Tries {
        Tries {
            retry: self,
            attempt: 1,
            poll: RetryPolicy::POLL.within(self.patience),
        }
    }
}

/// Where a [`HeldRowRetry`] stands: which attempt, and its poll.
#[derive(Debug, Clone)]
pub struct Tries {
    retry: HeldRowRetry,
    attempt: u32,
    poll: Poller,
}

impl Tries {
    /// The attempt running, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After a try met a held row (and rolled back): waits for the next try — a poll pause,
    /// or, once this attempt has polled for its patience, a backoff and the next attempt.
    /// False, at once, after the last attempt: give up.
    pub async fn after_held(&mut self) -> bool {
        sleep(self.after_held_at(Instant::now())).await
    }

    /// Ends the attempt running (its patience ran out, or a try was cut): backs off and starts
    /// the next attempt. False, at once, when it was the last.
    pub async fn back_off(&mut self) -> bool {
        sleep(self.back_off_at(Instant::now())).await
    }

    fn after_held_at(&mut self, now: Instant) -> Option<Duration> {
        self.poll
            .next_pause_at(now)
            .or_else(|| self.back_off_at(now))
    }

    fn back_off_at(&mut self, now: Instant) -> Option<Duration> {
        if self.attempt >= self.retry.attempts {
            return None;
        }
        let pause = self.retry.backoff.pause(self.attempt);
        tracing::debug!(
            attempt = self.attempt,
            looks = self.poll.pauses() + 1,
            polled_ms = self.poll.waited().as_millis() as u64,
            pause_ms = pause.as_millis() as u64,
            "a row stayed held: backing off"
        );
        self.attempt += 1;
        // The next attempt polls for its whole patience once the backoff is over.
        self.poll =
            RetryPolicy::POLL.until(Some(later(now, pause.saturating_add(self.retry.patience))));
        Some(pause)
    }
}

/// `by` after `now`; `now` itself if that is past what an [`Instant`] holds (a wait over at
/// once, never one without end).
fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by).unwrap_or(now)
}

/// Sleeps `pause`, if any, and says whether there was one.
async fn sleep(pause: Option<Duration>) -> bool {
    match pause {
        Some(pause) => {
            tokio::time::sleep(pause).await;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_doubles_from_the_first_and_stops_at_the_cap() {
        let poll = RetryPolicy::POLL;
        let steps: Vec<u64> = (1..=7).map(|n| poll.step(n).as_millis() as u64).collect();
        assert_eq!(steps, [2, 4, 8, 16, 32, 32, 32]);
        let backoff = RetryPolicy::backoff(50);
        assert_eq!(backoff.step(1), Duration::from_millis(50));
        assert_eq!(backoff.step(3), Duration::from_millis(200));
        assert_eq!(backoff.step(6), Duration::from_millis(1600));
        assert_eq!(backoff.step(7), BACKOFF_CAP, "3.2 s: capped");
        assert_eq!(backoff.step(u32::MAX), BACKOFF_CAP, "no overflow");
        assert_eq!(RetryPolicy::backoff(10_000).step(1), BACKOFF_CAP);
    }

    #[test]
    fn a_pause_is_jittered_between_half_its_step_and_its_step() {
        for policy in [RetryPolicy::POLL, RetryPolicy::backoff(50)] {
            for n in 1..=20 {
                let step = policy.step(n);
                let pauses: Vec<Duration> = (0..50).map(|_| policy.pause(n)).collect();
                for pause in &pauses {
                    assert!(*pause >= step / 2 && *pause <= step, "n {n}: {pause:?}");
                }
                assert!(
                    pauses.iter().any(|p| *p != pauses[0]),
                    "n {n}: never jittered"
                );
            }
        }
    }

    #[test]
    fn a_poller_never_pauses_past_its_deadline_and_says_when_it_is_reached() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(20);
        let mut poller = RetryPolicy::POLL.until(Some(deadline));
        let mut at = start;
        while let Some(pause) = poller.next_pause_at(at) {
            assert!(at + pause <= deadline, "{pause:?} at {:?}", at - start);
            at += pause;
        }
        assert_eq!(at, deadline, "the last pause ends at the deadline");
        assert_eq!(poller.waited(), Duration::from_millis(20));
        assert!(poller.pauses() >= 3, "{}", poller.pauses());
        assert_eq!(poller.next_pause_at(at + Duration::from_millis(1)), None);

        let mut over = RetryPolicy::POLL.until(Some(start));
        assert_eq!(over.next_pause_at(start), None, "reached: no pause at all");
        assert_eq!((over.pauses(), over.waited()), (0, Duration::ZERO));
    }

    #[test]
    fn a_poller_without_a_deadline_follows_its_policy() {
        let mut poller = RetryPolicy::POLL.until(None);
        let now = Instant::now();
        for n in 1..=8 {
            let pause = poller.next_pause_at(now).unwrap_or_default();
            let step = RetryPolicy::POLL.step(n);
            assert!(pause >= step / 2 && pause <= step, "n {n}: {pause:?}");
        }
    }

    #[test]
    fn held_row_retry_polls_for_its_patience_then_backs_off_each_attempt() {
        let retry = HeldRowRetry {
            attempts: 3,
            patience: Duration::from_millis(100),
            backoff: RetryPolicy::backoff(50),
        };
        let start = Instant::now();
        let mut tries = retry.start();
        let (mut at, mut looks) = (start, 1);
        let mut attempts_at = vec![Duration::ZERO];
        while let Some(pause) = tries.after_held_at(at) {
            at += pause;
            looks += 1;
            if tries.attempt() as usize > attempts_at.len() {
                attempts_at.push(at - start);
            }
        }
        assert_eq!(tries.attempt(), 3);
        let ms = |d: Duration| d.as_millis();
        // Each attempt's patience, then backoffs of 25–50 ms and 50–100 ms between them.
        assert!((125..=150).contains(&ms(attempts_at[1])), "{attempts_at:?}");
        assert!((250..=350).contains(&ms(attempts_at[2])), "{attempts_at:?}");
        assert!((375..=450).contains(&ms(at - start)), "{:?}", at - start);
        // Polls of 2 ms doubling to 32 (jittered) fit 5 to 11 looks in each 100 ms.
        assert!((3 * 5..=3 * 12).contains(&looks), "{looks} looks");
        assert_eq!(tries.back_off_at(at), None, "the last attempt is over");
    }

    #[test]
    fn one_attempt_gives_up_without_a_backoff() {
        let mut tries = HeldRowRetry {
            attempts: 1,
            patience: Duration::ZERO,
            backoff: RetryPolicy::backoff(50),
        }
        .start();
        let now = Instant::now() + Duration::from_millis(1);
        assert_eq!(tries.after_held_at(now), None);
        assert_eq!(tries.back_off_at(now), None);
    }
}
