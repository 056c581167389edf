//! virtio-rng, the entropy device (virtio 1.2 §5.4): one queue of
//! device-writable buffers, which the device fills with bytes from the host's
//! `getrandom(2)`.
//!
//! It is the smallest device that uses the whole virtio path (transport,
//! ioeventfd kick, event-loop work, irqfd interrupt, event-idx suppression),
//! which is why it came first.
//!
//! Guest input is bounded: each request gets at most
//! [`MAX_BYTES_PER_REQUEST`], filled through a fixed [`SCRATCH_SIZE`] buffer
//! (nothing is allocated per request), and a chain with a device-readable
//! descriptor, or one that points outside guest RAM, is returned with used
//! length 0 and counted. Optional token buckets (Firecracker's `PUT /entropy`
//! `rate_limiter`) bound bytes and requests per second.
pub mod device;
pub mod event_handler;
pub mod metrics;

use serde::{Deserialize, Serialize};

pub use device::Rng;
pub use metrics::{RngMetrics, RngMetricsSnapshot};

use crate::devices::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};

/// virtio device ID of the entropy device.
pub const VIRTIO_ID_RNG: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
/// The device's one queue ("requestq").
pub const RNG_NUM_QUEUES: usize = 1;
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes one request is given (Linux asks for at most a page at a
/// time); the rest of a larger buffer is left untouched.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 << 10;
/// Bytes drawn from the host per `getrandom(2)` and copied to the guest.
pub const SCRATCH_SIZE: usize = 4096;

/// Firecracker's `PUT /entropy` body (and the CLI's `--entropy` config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl EntropyConfig {
    /// The checks `Rng::new` makes, for the API to answer 400 before boot.
    pub fn validate(&self) -> Result<(), RateLimiterError> {
        match &self.rate_limiter {
            Some(rl) => RateLimiter::new(rl, std::time::Instant::now()).map(drop),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("cannot create the device's eventfd or timerfd")]
    Fd(#[source] std::io::Error),
    #[error("bad rate limiter")]
    RateLimiter(#[source] RateLimiterError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_config_is_firecrackers() {
        let c: EntropyConfig = serde_json::from_str(
            r#"{"rate_limiter":{"bandwidth":{"size":1024,"refill_time":100}}}"#,
        )
        .unwrap();
        assert_eq!(c.rate_limiter.unwrap().bandwidth.unwrap().size, 1024);
        assert_eq!(
            serde_json::from_str::<EntropyConfig>("{}").unwrap(),
            EntropyConfig::default()
        );
        assert!(serde_json::from_str::<EntropyConfig>(r#"{"rate":1}"#).is_err());
        assert!(c.validate().is_ok());
        let bad: EntropyConfig = serde_json::from_str(&format!(
            r#"{{"rate_limiter":{{"ops":{{"size":1,"refill_time":{}}}}}}}"#,
            u64::MAX
        ))
        .unwrap();
        assert!(bad.validate().is_err());
        assert!(Rng::new(&bad).is_err());
    }
}
