//! `/balloon` and `/balloon/statistics`: Firecracker's balloon endpoints,
//! same bodies, same refusals.
//!
//! - `PUT /balloon` (pre-boot) `{amount_mib, deflate_on_oom,
//!   stats_polling_interval_s?, free_page_reporting?, free_page_hinting?}`
//! - `PATCH /balloon` (running) `{"amount_mib": N}`
//! - `GET /balloon` → the configuration in force
//! - `GET /balloon/statistics` (running) → target, actual, the guest's
//!   stats and the host's counters
//! - `PATCH /balloon/statistics` (running) `{"stats_polling_interval_s": N}`
//!
//! Shape errors (not JSON, unknown fields, wrong types, negative numbers)
//! are refused here; whether an amount fits guest memory, and whether the
//! device is there and active, the VMM answers (`rpc.rs`).

use serde::{Deserialize, Serialize};

use super::json::from_json;
use crate::api::{ApiRequest, ApiResponse};

/// One definition: the device's.
pub use crate::devices::virtio::balloon::BalloonConfig;

/// `PATCH /balloon`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

pub(crate) fn parse_put(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    Ok(ApiRequest::PutBalloon(from_json(body)?))
}

pub(crate) fn parse_patch(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    Ok(ApiRequest::PatchBalloon(from_json(body)?))
}

pub(crate) fn parse_patch_stats(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    Ok(ApiRequest::PatchBalloonStats(from_json(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse;

    fn fault(m: &str, p: &str, b: &str) -> String {
        let e = parse(m, p, b.as_bytes()).unwrap_err();
        assert_eq!(e.status, 400);
        e.fault_message().unwrap().to_string()
    }

    #[test]
    fn every_endpoint_parses() {
        assert_eq!(parse("GET", "/balloon", b""), Ok(ApiRequest::GetBalloon));
        assert_eq!(
            parse("GET", "/balloon/statistics", b""),
            Ok(ApiRequest::GetBalloonStats)
        );
        assert_eq!(
            parse(
                "PUT",
                "/balloon",
                br#"{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1, "free_page_reporting": true}"#
            ),
            Ok(ApiRequest::PutBalloon(BalloonConfig {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_polling_interval_s: 1,
                free_page_reporting: true,
                free_page_hinting: false,
            }))
        );
        // Firecracker's optional fields default.
        assert_eq!(
            parse(
                "PUT",
                "/balloon",
                br#"{"amount_mib": 0, "deflate_on_oom": false}"#
            ),
            Ok(ApiRequest::PutBalloon(BalloonConfig::default()))
        );
        assert_eq!(
            parse("PATCH", "/balloon", br#"{"amount_mib": 512}"#),
            Ok(ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 512 }))
        );
        assert_eq!(
            parse(
                "PATCH",
                "/balloon/statistics",
                br#"{"stats_polling_interval_s": 5}"#
            ),
            Ok(ApiRequest::PatchBalloonStats(BalloonStatsUpdate {
                stats_polling_interval_s: 5
            }))
        );
    }

    #[test]
    fn malformed_bodies_are_refused_naming_the_field() {
        let put = |b| fault("PUT", "/balloon", b);
        assert!(put(r#"{"amount_mib": -1, "deflate_on_oom": true}"#).contains("amount_mib"));
        assert!(put(r#"{"amount_mib": "1", "deflate_on_oom": true}"#).contains("amount_mib"));
        assert!(put(r#"{"amount_mib": 1.5, "deflate_on_oom": true}"#).contains("amount_mib"));
        assert!(put(r#"{"amount_mib": 4294967296, "deflate_on_oom": true}"#).contains("amount_mib"));
        assert!(put(r#"{"amount_mib": 1, "deflate_on_oom": "yes"}"#).contains("deflate_on_oom"));
        assert!(put(r#"{"amount_mib": 1}"#).contains("missing field `deflate_on_oom`"));
        assert!(put(r#"{"deflate_on_oom": true}"#).contains("missing field `amount_mib`"));
        let e = put(r#"{"amount_mib": 1, "deflate_on_oom": true, "must_tell_host": true}"#);
        assert!(e.contains("unknown field `must_tell_host`"), "{e}");
        let e =
            put(r#"{"amount_mib": 1, "deflate_on_oom": true, "stats_polling_interval_s": 70000}"#);
        assert!(e.contains("stats_polling_interval_s"), "{e}");
        let e = put(r#"{"amount_mib": 1, "deflate_on_oom": true, "free_page_reporting": 1}"#);
        assert!(e.contains("free_page_reporting"), "{e}");
        let patch = |b| fault("PATCH", "/balloon", b);
        assert!(patch(r#"{"amount_mib": -5}"#).contains("amount_mib"));
        assert!(patch(r#"{"amount_mib": 5, "deflate_on_oom": true}"#)
            .contains("unknown field `deflate_on_oom`"));
        assert!(patch(r#"{}"#).contains("missing field `amount_mib`"));
        let stats = |b| fault("PATCH", "/balloon/statistics", b);
        assert!(stats(r#"{"stats_polling_interval_s": -1}"#).contains("stats_polling_interval_s"));
        assert!(stats(r#"{"amount_mib": 1}"#).contains("unknown field `amount_mib`"));
        for (m, p) in [
            ("PUT", "/balloon"),
            ("PATCH", "/balloon"),
            ("PATCH", "/balloon/statistics"),
        ] {
            for b in ["{", "[1]", "null", "nope"] {
                assert!(
                    fault(m, p, b)
                        .starts_with("An error occurred when deserializing the json body"),
                    "{m} {p} {b}"
                );
            }
        }
        // Paths and methods that are not the balloon's.
        assert!(fault("PUT", "/balloon/statistics", "{}").starts_with("Invalid request method"));
        assert!(fault("GET", "/balloon/other", "").starts_with("Invalid request method"));
        assert!(fault("DELETE", "/balloon", "").starts_with("Invalid request method"));
        assert_eq!(fault("PATCH", "/balloon", ""), "Empty PATCH request.");
        assert_eq!(
            fault("GET", "/balloon", "{}"),
            "GET request cannot have a body."
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                // Near-valid JSON: fields and values shuffled from the
                // balloon's vocabulary.
                prop::collection::vec(
                    (
                        prop::sample::select(vec![
                            "amount_mib",
                            "deflate_on_oom",
                            "stats_polling_interval_s",
                            "free_page_reporting",
                            "free_page_hinting",
                            "x",
                            "",
                        ]),
                        prop::sample::select(vec![
                            "0",
                            "-1",
                            "1",
                            "4294967295",
                            "4294967296",
                            "65536",
                            "true",
                            "false",
                            "null",
                            "\"1\"",
                            "1.5",
                            "[]",
                            "{}",
                            "1e3",
                        ]),
                    ),
                    0..6,
                )
                .prop_map(|kv| {
                    let f: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                    format!("{{{}}}", f.join(", ")).into_bytes()
                }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            /// Any bytes on any balloon endpoint: a typed request or a 400
            /// with a fault_message, never a panic; and an accepted amount
            /// is what the body said.
            #[test]
            fn any_body_parses_or_is_refused(
                method in prop::sample::select(vec!["GET", "PUT", "PATCH"]),
                path in prop::sample::select(vec!["/balloon", "/balloon/statistics", "/balloon/"]),
                body in body(),
            ) {
                match parse(method, path, &body) {
                    Ok(ApiRequest::PutBalloon(c)) => {
                        prop_assert!(String::from_utf8_lossy(&body).contains(&c.amount_mib.to_string()));
                    }
                    Ok(ApiRequest::PatchBalloon(u)) => {
                        prop_assert!(String::from_utf8_lossy(&body).contains(&u.amount_mib.to_string()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        prop_assert_eq!(e.status, 400);
                        prop_assert!(e.fault_message().is_some());
                    }
                }
            }
        }
    }
}
