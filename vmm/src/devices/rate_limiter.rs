//! Token-bucket rate limiting for devices, configured the way Firecracker's
//! API does it (`rate_limiter: {bandwidth: {size, one_time_burst,
//! refill_time}, ops: {...}}`), so one JSON body works for both VMMs.
//!
//! A bucket holds at most `size` tokens and refills linearly, `size` tokens
//! per `refill_time` milliseconds; `one_time_burst` tokens are spent first and
//! never come back. A bucket whose `size` or `refill_time` is 0 limits
//! nothing (Firecracker's rule).
//!
//! Accounting is exact: the budget is kept in token·nanoseconds (one token is
//! `refill_time_ns` units, and every elapsed nanosecond adds `size` units), so
//! no fraction of a token is lost to rounding however often we refill.
//!
//! A request larger than the bucket could never fit; it is let through when
//! the bucket is full and leaves the bucket in debt, so the long-run rate
//! still holds (Firecracker does the same with its "over-consumption").
//!
//! Devices call [`RateLimiter::consume`] before serving a request; on
//! `Err(wait)` they leave the request queued, arm a timer for `wait` and try
//! again when it fires. The limiter itself has no fd and no clock of its own:
//! time is passed in, which keeps it testable.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Firecracker's `TokenBucket` body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Bucket capacity, in tokens (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill an empty bucket completely.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// Firecracker: a bucket with `size` or `refill_time` 0 limits nothing.
    pub fn is_enabled(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }
}

/// Firecracker's `RateLimiter` body: a bandwidth bucket (bytes) and an ops
/// bucket (requests), each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateLimiterError {
    #[error("refill_time {0} ms is too large (it must fit in u64 nanoseconds)")]
    RefillTime(u64),
}

/// One token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u64,
    burst: u64,
    /// Current budget in token·ns; negative after an oversized request.
    budget: i128,
    last: Instant,
}

impl TokenBucket {
    /// `None` when the config limits nothing (size or refill_time 0).
    pub fn new(cfg: &TokenBucketConfig, now: Instant) -> Result<Option<Self>, RateLimiterError> {
        let refill_ns = cfg
            .refill_time
            .checked_mul(1_000_000)
            .ok_or(RateLimiterError::RefillTime(cfg.refill_time))?;
        if cfg.size == 0 || refill_ns == 0 {
            return Ok(None);
        }
        Ok(Some(TokenBucket {
            size: cfg.size,
            refill_ns,
            burst: cfg.one_time_burst.unwrap_or(0),
            budget: Self::units(cfg.size, refill_ns),
            last: now,
        }))
    }

    /// Saturating: every u64 size is accepted, and refill_ns goes up to
    /// u64::MAX, so tokens × refill_ns reaches ~2^128, past i128. Such a
    /// bucket is practically unlimited, and saturation keeps it so instead
    /// of wrapping (or panicking) into a starved one.
    fn units(tokens: u64, refill_ns: u64) -> i128 {
        i128::from(tokens).saturating_mul(i128::from(refill_ns))
    }

    fn full(&self) -> i128 {
        Self::units(self.size, self.refill_ns)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        // elapsed ns (≤ 2^64 · 1e9 < 2^94) × size (< 2^64) would overflow
        // i128 only after centuries; saturate anyway.
        let add = i128::try_from(elapsed)
            .unwrap_or(i128::MAX)
            .saturating_mul(i128::from(self.size));
        self.budget = self.budget.saturating_add(add).min(self.full());
    }

    /// Whole tokens available now (burst included).
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        let whole =
            u64::try_from(self.budget.max(0) / i128::from(self.refill_ns)).unwrap_or(u64::MAX);
        whole.saturating_add(self.burst)
    }

    fn can_take(&self, tokens: u64) -> bool {
        if tokens <= self.burst {
            return true;
        }
        let need = Self::units(tokens - self.burst, self.refill_ns);
        need <= self.budget || (tokens > self.size && self.budget >= self.full())
    }

    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        self.budget = self
            .budget
            .saturating_sub(Self::units(tokens - from_burst, self.refill_ns));
    }

    /// Time until `tokens` could be taken (requests larger than the bucket
    /// wait for a full bucket).
    fn wait_for(&self, tokens: u64) -> Duration {
        let tokens = tokens.saturating_sub(self.burst).min(self.size);
        let missing = Self::units(tokens, self.refill_ns).saturating_sub(self.budget);
        if missing <= 0 {
            return Duration::ZERO;
        }
        let size = i128::from(self.size);
        let ns = missing.saturating_add(size - 1) / size;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Takes `tokens` if available now; `false` leaves the bucket untouched.
    pub fn reduce(&mut self, tokens: u64, now: Instant) -> bool {
        self.refill(now);
        let ok = self.can_take(tokens);
        if ok {
            self.take(tokens);
        }
        ok
    }
}

/// A bandwidth (bytes) and an ops (requests) bucket; either may be absent.
#[derive(Clone, Debug, Default)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// A limiter that limits nothing.
    pub fn unlimited() -> Self {
        Self::default()
    }

    pub fn new(cfg: &RateLimiterConfig, now: Instant) -> Result<Self, RateLimiterError> {
        let bucket = |c: &Option<TokenBucketConfig>| match c {
            Some(c) => TokenBucket::new(c, now),
            None => Ok(None),
        };
        Ok(RateLimiter {
            bandwidth: bucket(&cfg.bandwidth)?,
            ops: bucket(&cfg.ops)?,
        })
    }

    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Takes `ops` operations and `bytes` bytes together, or nothing: on
    /// `Err(wait)` both buckets are untouched and `wait` is how long until
    /// the request would fit (at least 1 ms, so a timer is worth arming).
    pub fn consume(&mut self, ops: u64, bytes: u64, now: Instant) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        let mut ok = true;
        for (bucket, tokens) in [(&mut self.ops, ops), (&mut self.bandwidth, bytes)] {
            if let Some(b) = bucket {
                b.refill(now);
                if !b.can_take(tokens) {
                    ok = false;
                    wait = wait.max(b.wait_for(tokens));
                }
            }
        }
        if !ok {
            return Err(wait.max(Duration::from_millis(1)));
        }
        if let Some(b) = &mut self.ops {
            b.take(ops);
        }
        if let Some(b) = &mut self.bandwidth {
            b.take(bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: Option<u64>, refill_ms: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time: refill_ms,
        }
    }

    #[test]
    fn config_uses_firecracker_field_names_and_rejects_unknown_ones() {
        let cfg: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth":{"size":1000,"one_time_burst":500,"refill_time":100},
                "ops":{"size":10,"refill_time":1000}}"#,
        )
        .unwrap();
        assert_eq!(cfg.bandwidth, Some(bucket(1000, Some(500), 100)));
        assert_eq!(cfg.ops, Some(bucket(10, None, 1000)));
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"bw":{}}"#).is_err());
        assert!(serde_json::from_str::<TokenBucketConfig>(
            r#"{"size":1,"refill_time":1,"refill":2}"#
        )
        .is_err());
        assert!(serde_json::from_str::<TokenBucketConfig>(r#"{"size":1}"#).is_err());
    }

    #[test]
    fn zero_size_or_refill_means_unlimited() {
        let now = Instant::now();
        assert!(TokenBucket::new(&bucket(0, None, 10), now)
            .unwrap()
            .is_none());
        assert!(TokenBucket::new(&bucket(10, None, 0), now)
            .unwrap()
            .is_none());
        let rl = RateLimiter::new(
            &RateLimiterConfig {
                bandwidth: Some(bucket(0, None, 0)),
                ops: None,
            },
            now,
        )
        .unwrap();
        assert!(rl.is_unlimited());
    }

    #[test]
    fn huge_refill_time_is_an_error() {
        assert_eq!(
            TokenBucket::new(&bucket(1, None, u64::MAX), Instant::now()).unwrap_err(),
            RateLimiterError::RefillTime(u64::MAX)
        );
    }

    #[test]
    fn bucket_drains_and_refills_linearly() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(1000, None, 1000), t0)
            .unwrap()
            .unwrap();
        assert!(b.reduce(600, t0));
        assert!(!b.reduce(600, t0));
        assert_eq!(b.available(t0), 400);
        // 1000 tokens per second: 100 ms gives 100 tokens.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.available(t1), 500);
        assert_eq!(b.wait_for(600), Duration::from_millis(100));
        // Never above size.
        assert_eq!(b.available(t1 + Duration::from_secs(10)), 1000);
    }

    #[test]
    fn no_fraction_of_a_token_is_lost_to_frequent_refills() {
        let t0 = Instant::now();
        // 3 tokens per 1000 ms: one token every 333.33 ms.
        let mut b = TokenBucket::new(&bucket(3, None, 1000), t0)
            .unwrap()
            .unwrap();
        assert!(b.reduce(3, t0));
        let mut t = t0;
        for _ in 0..1000 {
            t += Duration::from_millis(1);
            b.refill(t);
        }
        assert_eq!(b.available(t), 3);
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(10, Some(100), 1000), t0)
            .unwrap()
            .unwrap();
        assert_eq!(b.available(t0), 110);
        assert!(b.reduce(100, t0));
        assert_eq!(b.available(t0), 10);
        assert!(b.reduce(10, t0));
        assert_eq!(b.available(t0 + Duration::from_secs(100)), 10);
    }

    #[test]
    fn oversized_request_passes_only_on_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, None, 100), t0)
            .unwrap()
            .unwrap();
        assert!(b.reduce(250, t0));
        assert_eq!(b.available(t0), 0);
        // 150 tokens of debt + 250 clamped to 100 needed: 250 ms.
        assert_eq!(b.wait_for(250), Duration::from_millis(250));
        assert!(!b.reduce(1, t0 + Duration::from_millis(150)));
        assert!(b.reduce(250, t0 + Duration::from_millis(250)));
    }

    #[test]
    fn limiter_takes_both_buckets_or_neither() {
        let t0 = Instant::now();
        let cfg = RateLimiterConfig {
            bandwidth: Some(bucket(100, None, 1000)),
            ops: Some(bucket(2, None, 1000)),
        };
        let mut rl = RateLimiter::new(&cfg, t0).unwrap();
        assert!(rl.consume(1, 60, t0).is_ok());
        // Bytes fail: the op is not taken either.
        let wait = rl.consume(1, 60, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        assert!(rl.consume(1, 40, t0).is_ok());
        // Ops exhausted now.
        assert!(rl.consume(1, 0, t0).is_err());
        assert!(rl.consume(1, 0, t0 + Duration::from_millis(500)).is_ok());
        assert!(RateLimiter::unlimited()
            .consume(u64::MAX, u64::MAX, t0)
            .is_ok());
    }

    #[test]
    fn the_largest_accepted_buckets_neither_overflow_nor_starve() {
        // Every size is accepted, and refill_time up to u64::MAX ns (what
        // PUT /entropy lets through): size × refill_ns is then ~2^128.
        let t0 = Instant::now();
        let max_ms = u64::MAX / 1_000_000;
        for burst in [None, Some(u64::MAX)] {
            let cfg = RateLimiterConfig {
                bandwidth: Some(bucket(u64::MAX, burst, max_ms)),
                ops: Some(bucket(u64::MAX - 1, burst, max_ms)),
            };
            let mut rl = RateLimiter::new(&cfg, t0).unwrap();
            assert!(rl.consume(1, 4096, t0).is_ok(), "a full bucket serves");
            assert!(rl.consume(u64::MAX, u64::MAX, t0).is_ok() || burst.is_none());
            let _ = rl.consume(u64::MAX, u64::MAX, t0);
            let _ = rl.consume(1, 1, t0 + Duration::from_secs(1));
        }
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// Over any sequence of requests and clock steps, what is
            /// granted never exceeds a full bucket plus the burst plus the
            /// refill since start plus one oversized request, and a request
            /// told to wait `w` succeeds after `w`.
            #[test]
            fn grants_stay_within_the_rate(
                size in 1u64..10_000,
                refill_ms in 1u64..1000,
                burst in prop::option::of(0u64..10_000),
                reqs in prop::collection::vec((0u64..20_000, 0u64..50), 1..200),
            ) {
                let t0 = Instant::now();
                let cfg = bucket(size, burst, refill_ms);
                let mut b = TokenBucket::new(&cfg, t0).unwrap().unwrap();
                let mut now = t0;
                let mut granted = 0u128;
                let mut biggest = 0u128;
                for (tokens, step_ms) in reqs {
                    now += Duration::from_millis(step_ms);
                    b.refill(now);
                    if b.can_take(tokens) {
                        b.take(tokens);
                        granted += u128::from(tokens);
                        biggest = biggest.max(u128::from(tokens));
                    } else {
                        let w = b.wait_for(tokens);
                        let mut later = b.clone();
                        prop_assert!(later.reduce(tokens, now + w), "wait_for lied");
                    }
                    let elapsed = (now - t0).as_nanos();
                    let refilled = elapsed * u128::from(size) / (u128::from(refill_ms) * 1_000_000);
                    let bound = u128::from(size) + u128::from(burst.unwrap_or(0)) + refilled + biggest;
                    prop_assert!(granted <= bound, "{granted} > {bound}");
                }
            }
        }
    }
}
