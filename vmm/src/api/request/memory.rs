//! `GET /vm/memory`: what guest RAM costs now (memvisor's own endpoint;
//! Firecracker has none). The answer is `memory::accounting`'s
//! [`MemoryAccounting`](crate::memory::accounting::MemoryAccounting), the
//! same shape as the report's `memory` section without the boot-time
//! fields (e820, prefault). Its size is bounded whatever the guest does:
//! one entry per RAM region, per-node counts per host node, and a capped
//! set of KVM statistics.
use crate::api::{ApiRequest, ApiResponse};

pub(crate) fn parse_get() -> Result<ApiRequest, ApiResponse> {
    Ok(ApiRequest::GetVmMemory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{parse, InstanceState, NOT_SUPPORTED_PRE_BOOT};

    #[test]
    fn get_only_and_only_once_started() {
        assert_eq!(parse("GET", "/vm/memory", b""), Ok(ApiRequest::GetVmMemory));
        assert_eq!(
            parse("GET", "/vm/memory/", b""),
            Ok(ApiRequest::GetVmMemory)
        );
        for (m, body) in [("PUT", &b"{}"[..]), ("PATCH", b"{}"), ("DELETE", b"")] {
            let e = parse(m, "/vm/memory", body).unwrap_err();
            assert!(
                e.fault_message()
                    .unwrap()
                    .starts_with("Invalid request method"),
                "{m}: {e:?}"
            );
        }
        assert!(parse("GET", "/vm/memory/x", b"").is_err());
        assert_eq!(
            parse("GET", "/vm/memory", b"{}")
                .unwrap_err()
                .fault_message(),
            Some("GET request cannot have a body.")
        );
        let r = ApiRequest::GetVmMemory;
        let e = r.allowed_in(InstanceState::NotStarted).unwrap_err();
        assert_eq!(e.fault_message(), Some(NOT_SUPPORTED_PRE_BOOT));
        assert_eq!(r.allowed_in(InstanceState::Running), Ok(()));
        assert_eq!(r.allowed_in(InstanceState::Paused), Ok(()));
    }
}
