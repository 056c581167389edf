//! `GET`, `PUT` and `PATCH /machine-config`: vCPUs, memory size and page
//! backing, with Firecracker's field names, defaults (1 vCPU, 128 MiB) and
//! PUT-resets-omitted-fields semantics. Range checks (vCPU limits, memory
//! size against the page size) are the VMM's, which knows the host.

use serde::{Deserialize, Serialize};

use super::json::from_json;
use crate::api::{ApiRequest, ApiResponse};

pub(crate) fn parse_get() -> Result<ApiRequest, ApiResponse> {
    Ok(ApiRequest::GetMachineConfig)
}

pub(crate) fn parse_put(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    Ok(ApiRequest::PutMachineConfig(from_json(body)?))
}

pub(crate) fn parse_patch(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let update: MachineConfigUpdate = from_json(body)?;
    if update.is_empty() {
        // Firecracker's answer to `{}`: a PATCH that changes nothing.
        return Err(ApiResponse::bad_request("Empty PATCH request."));
    }
    Ok(ApiRequest::PatchMachineConfig(update))
}

/// Firecracker's default memory size.
pub const DEFAULT_MEM_SIZE_MIB: u64 = 128;

/// How guest RAM is backed. Firecracker's names: "None" (4 KiB pages),
/// "Transparent" (THP via madvise), "2M" (hugetlbfs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    #[default]
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Firecracker's (deprecated) static CPU templates, accepted so existing
/// scripts parse; which ones the VMM honours is its decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    #[serde(rename = "None")]
    NoTemplate,
}

/// The `PUT` body and the `GET` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// The `PATCH` body: every field optional, at least one present.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The configuration this update would produce; the VMM validates the
    /// result as a whole and keeps the old one if it is refused, so a failed
    /// PATCH changes nothing (Firecracker: "the whole update fails").
    pub fn applied_to(&self, base: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            cpu_template: self.cpu_template.or(base.cpu_template),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(base.huge_pages),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse;

    fn fault(r: Result<ApiRequest, ApiResponse>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.status, 400);
        e.fault_message().unwrap().to_string()
    }

    #[test]
    fn get() {
        assert_eq!(
            parse("GET", "/machine-config", b""),
            Ok(ApiRequest::GetMachineConfig)
        );
    }

    #[test]
    fn put_full_and_minimal() {
        let r = parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
                 "track_dirty_pages": true, "huge_pages": "2M", "cpu_template": "T2"}"#,
        );
        assert_eq!(
            r,
            Ok(ApiRequest::PutMachineConfig(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 1024,
                smt: false,
                cpu_template: Some(CpuTemplate::T2),
                track_dirty_pages: true,
                huge_pages: HugePages::Hugetlbfs2M,
            }))
        );
        let r = parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        );
        assert_eq!(
            r,
            Ok(ApiRequest::PutMachineConfig(MachineConfig {
                mem_size_mib: 64,
                ..MachineConfig::default()
            }))
        );
        for hp in ["None", "Transparent"] {
            let body = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "{hp}"}}"#);
            assert!(
                parse("PUT", "/machine-config", body.as_bytes()).is_ok(),
                "{hp}"
            );
        }
        let r = parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "None"}"#,
        );
        assert!(matches!(
            r,
            Ok(ApiRequest::PutMachineConfig(MachineConfig {
                cpu_template: Some(CpuTemplate::NoTemplate),
                ..
            }))
        ));
    }

    #[test]
    fn put_refusals_name_the_field() {
        let p = |b: &str| fault(parse("PUT", "/machine-config", b.as_bytes()));
        assert!(p(r#"{"mem_size_mib": 64}"#).contains("missing field `vcpu_count`"));
        assert!(p(r#"{"vcpu_count": 1}"#).contains("missing field `mem_size_mib`"));
        let e = p(r#"{"vcpu_count": 1, "mem_size_mib": 64, "vcpus": 2}"#);
        assert!(e.contains("unknown field `vcpus`"), "{e}");
        let e = p(r#"{"vcpu_count": "2", "mem_size_mib": 64}"#);
        assert!(
            e.contains("field `vcpu_count`") && e.contains("invalid type"),
            "{e}"
        );
        let e = p(r#"{"vcpu_count": 256, "mem_size_mib": 64}"#);
        assert!(e.contains("field `vcpu_count`"), "{e}");
        let e = p(r#"{"vcpu_count": -1, "mem_size_mib": 64}"#);
        assert!(e.contains("field `vcpu_count`"), "{e}");
        let e = p(r#"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "1G"}"#);
        assert!(
            e.contains("field `huge_pages`") && e.contains("unknown variant"),
            "{e}"
        );
        let e = p(r#"{"vcpu_count": 1, "mem_size_mib": 64, "smt": "yes"}"#);
        assert!(e.contains("field `smt`"), "{e}");
        let e = p(r#"{"vcpu_count": 1, "mem_size_mib": 1.5}"#);
        assert!(e.contains("field `mem_size_mib`"), "{e}");
    }

    #[test]
    fn patch() {
        let r = parse("PATCH", "/machine-config", br#"{"vcpu_count": 4}"#);
        let Ok(ApiRequest::PatchMachineConfig(u)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(u.vcpu_count, Some(4));
        let merged = u.applied_to(&MachineConfig::default());
        assert_eq!(merged.vcpu_count, 4);
        assert_eq!(merged.mem_size_mib, DEFAULT_MEM_SIZE_MIB);

        assert_eq!(
            fault(parse("PATCH", "/machine-config", b"{}")),
            "Empty PATCH request."
        );
        let e = fault(parse(
            "PATCH",
            "/machine-config",
            br#"{"vcpu_count": 1, "x": 1}"#,
        ));
        assert!(e.contains("unknown field `x`"), "{e}");
        let e = fault(parse(
            "PATCH",
            "/machine-config",
            br#"{"track_dirty_pages": 1}"#,
        ));
        assert!(e.contains("field `track_dirty_pages`"), "{e}");
    }

    #[test]
    fn get_answer_shape() {
        let v = serde_json::to_value(MachineConfig::default()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                "track_dirty_pages": false, "huge_pages": "None"
            })
        );
    }
}
