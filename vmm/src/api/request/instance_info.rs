//! `GET /`: who this VMM is and what state its VM is in.

use serde::{Deserialize, Serialize};

use crate::api::{ApiRequest, ApiResponse};

pub(crate) fn parse_get() -> Result<ApiRequest, ApiResponse> {
    Ok(ApiRequest::GetInstanceInfo)
}

/// The VM's lifecycle as the API reports it and as
/// [`ApiRequest::allowed_in`] judges requests. Serialised with Firecracker's
/// strings ("Not started", "Running", "Paused").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    #[default]
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// The `GET /` answer, field for field Firecracker's `InstanceInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
    pub app_name: String,
}

impl InstanceInfo {
    /// This build's name and version, so the event loop only supplies what it
    /// knows (the id and the state).
    pub fn new(id: impl Into<String>, state: InstanceState) -> Self {
        Self {
            id: id.into(),
            state,
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            app_name: "memvisor".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse;

    #[test]
    fn parses() {
        assert_eq!(parse("GET", "/", b""), Ok(ApiRequest::GetInstanceInfo));
    }

    #[test]
    fn serialises_like_firecracker() {
        let v = serde_json::to_value(InstanceInfo::new("vm0", InstanceState::NotStarted)).unwrap();
        assert_eq!(v["id"], "vm0");
        assert_eq!(v["state"], "Not started");
        assert_eq!(v["app_name"], "memvisor");
        assert_eq!(v["vmm_version"], env!("CARGO_PKG_VERSION"));
        let s = |st| serde_json::to_value(st).unwrap();
        assert_eq!(s(InstanceState::Running), "Running");
        assert_eq!(s(InstanceState::Paused), "Paused");
    }
}
