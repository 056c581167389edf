//! `PATCH /vm` (pause/resume) and `GET /vm/config` (everything configured,
//! in Firecracker's `FullVmConfig` shape, so a dump can be replayed).

use serde::{Deserialize, Serialize};

use super::json::from_json;
use crate::api::{ApiRequest, ApiResponse, BootSource, EntropyConfig, MachineConfig};

pub(crate) fn parse_get_config() -> Result<ApiRequest, ApiResponse> {
    Ok(ApiRequest::GetVmConfig)
}

pub(crate) fn parse_patch(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let b: VmBody = from_json(body)?;
    Ok(ApiRequest::PatchVm(b.state))
}

/// The state a client asks for: Firecracker's "Paused" / "Resumed".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmBody {
    state: VmState,
}

/// The `GET /vm/config` answer. Sections not configured serialise as `null`,
/// as in Firecracker; later devices (the balloon) add their own field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    pub entropy: Option<EntropyConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse;

    #[test]
    fn patch() {
        assert_eq!(
            parse("PATCH", "/vm", br#"{"state": "Paused"}"#),
            Ok(ApiRequest::PatchVm(VmState::Paused))
        );
        assert_eq!(
            parse("PATCH", "/vm", br#"{"state": "Resumed"}"#),
            Ok(ApiRequest::PatchVm(VmState::Resumed))
        );
        let f = |b: &str| {
            let e = parse("PATCH", "/vm", b.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400);
            e.fault_message().unwrap().to_string()
        };
        let e = f(r#"{"state": "Running"}"#);
        assert!(e.contains("unknown variant `Running`"), "{e}");
        assert!(f(r#"{"state": "Paused", "now": 1}"#).contains("unknown field `now`"));
        assert!(f(r#"{}"#).contains("missing field `state`"));
        assert!(f(r#"{"state": true}"#).contains("field `state`"));
    }

    #[test]
    fn get_config() {
        assert_eq!(parse("GET", "/vm/config", b""), Ok(ApiRequest::GetVmConfig));
        let v = serde_json::to_value(VmConfig::default()).unwrap();
        assert_eq!(v["boot-source"], serde_json::Value::Null);
        assert_eq!(v["entropy"], serde_json::Value::Null);
        assert_eq!(v["machine-config"]["vcpu_count"], 1);
    }
}
