//! `PUT /entropy`: a virtio-rng device, optionally rate-limited with
//! Firecracker's token buckets.
//!
//! Token-bucket semantics are Firecracker's: a bucket with `size` or
//! `refill_time` zero limits nothing. What is refused here is what
//! Firecracker would silently turn into "no limit": a `refill_time` too large
//! to express in nanoseconds.

use super::json::{bad_body, from_json};
use crate::api::{ApiRequest, ApiResponse};

pub(crate) fn parse_put(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let cfg: EntropyConfig = from_json(body)?;
    if let Some(rl) = &cfg.rate_limiter {
        validate_limiter(rl, "rate_limiter").map_err(bad_body)?;
    }
    Ok(ApiRequest::PutEntropy(cfg))
}

/// One definition of each config type: the device's.
pub use crate::devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
pub use crate::devices::virtio::rng::EntropyConfig;

/// Longest refill time whose nanosecond count fits a u64 (the unit the
/// limiter computes refill in).
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

/// `path` names the limiter in the error ("rate_limiter"), so the same check
/// serves later devices' limiters.
pub fn validate_limiter(rl: &RateLimiterConfig, path: &str) -> Result<(), String> {
    for (name, bucket) in [("bandwidth", &rl.bandwidth), ("ops", &rl.ops)] {
        if let Some(b) = bucket {
            if b.refill_time > MAX_REFILL_TIME_MS {
                return Err(format!(
                    "field `{path}.{name}.refill_time`: {} ms is more than the maximum of {MAX_REFILL_TIME_MS} ms",
                    b.refill_time
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse;

    fn fault(b: &str) -> String {
        let e = parse("PUT", "/entropy", b.as_bytes()).unwrap_err();
        assert_eq!(e.status, 400);
        e.fault_message().unwrap().to_string()
    }

    #[test]
    fn put_plain_and_limited() {
        assert_eq!(
            parse("PUT", "/entropy", b"{}"),
            Ok(ApiRequest::PutEntropy(EntropyConfig::default()))
        );
        let r = parse(
            "PUT",
            "/entropy",
            br#"{"rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 10, "refill_time": 100},
                                  "ops": {"size": 10, "refill_time": 1000}}}"#,
        );
        let Ok(ApiRequest::PutEntropy(EntropyConfig {
            rate_limiter: Some(rl),
        })) = r
        else {
            panic!("{r:?}")
        };
        let bw = rl.bandwidth.unwrap();
        assert_eq!(
            (bw.size, bw.one_time_burst, bw.refill_time),
            (1000, Some(10), 100)
        );
        assert!(bw.is_enabled());
        let ops = rl.ops.unwrap();
        assert_eq!(
            (ops.size, ops.one_time_burst, ops.refill_time),
            (10, None, 1000)
        );
        // Zeroes mean "no limit", as in Firecracker.
        let r = parse(
            "PUT",
            "/entropy",
            br#"{"rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#,
        );
        let Ok(ApiRequest::PutEntropy(EntropyConfig {
            rate_limiter: Some(rl),
        })) = r
        else {
            panic!("{r:?}")
        };
        assert!(!rl.ops.unwrap().is_enabled());
        assert!(parse("PUT", "/entropy", br#"{"rate_limiter": null}"#).is_ok());
        assert!(parse("PUT", "/entropy", br#"{"rate_limiter": {}}"#).is_ok());
    }

    #[test]
    fn refusals_name_the_field() {
        let e = fault(r#"{"rate": 1}"#);
        assert!(e.contains("unknown field `rate`"), "{e}");
        let e = fault(r#"{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "x": 1}}}"#);
        assert!(
            e.contains("unknown field `x`") && e.contains("rate_limiter.bandwidth"),
            "{e}"
        );
        let e = fault(r#"{"rate_limiter": {"cpu": {}}}"#);
        assert!(e.contains("unknown field `cpu`"), "{e}");
        let e = fault(r#"{"rate_limiter": {"ops": {"size": -5, "refill_time": 1}}}"#);
        assert!(e.contains("field `rate_limiter.ops.size`"), "{e}");
        let e = fault(r#"{"rate_limiter": {"ops": {"size": 5}}}"#);
        assert!(e.contains("missing field `refill_time`"), "{e}");
        let e = fault(r#"{"rate_limiter": {"ops": {"size": 5, "refill_time": "1s"}}}"#);
        assert!(e.contains("field `rate_limiter.ops.refill_time`"), "{e}");
        let e = fault(&format!(
            r#"{{"rate_limiter": {{"bandwidth": {{"size": 5, "refill_time": {}}}}}}}"#,
            u64::MAX
        ));
        assert!(
            e.contains("field `rate_limiter.bandwidth.refill_time`") && e.contains("maximum"),
            "{e}"
        );
        let ok = format!(
            r#"{{"rate_limiter": {{"bandwidth": {{"size": 5, "refill_time": {}}}}}}}"#,
            MAX_REFILL_TIME_MS
        );
        assert!(parse("PUT", "/entropy", ok.as_bytes()).is_ok());
    }
}
