//! `PUT /actions`: Firecracker's synchronous actions. All three names parse
//! so a Firecracker script never fails on syntax; the VMM answers the ones it
//! does not implement with a 400 fault of its own.

use serde::{Deserialize, Serialize};

use super::json::from_json;
use crate::api::{ApiRequest, ApiResponse};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM (the end of `--wait-for-start`).
    InstanceStart,
    FlushMetrics,
    SendCtrlAltDel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

pub(crate) fn parse_put(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let b: ActionBody = from_json(body)?;
    Ok(ApiRequest::Action(b.action_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse;

    #[test]
    fn all_firecracker_actions() {
        for (name, a) in [
            ("InstanceStart", ActionType::InstanceStart),
            ("FlushMetrics", ActionType::FlushMetrics),
            ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
        ] {
            let body = format!(r#"{{"action_type": "{name}"}}"#);
            assert_eq!(
                parse("PUT", "/actions", body.as_bytes()),
                Ok(ApiRequest::Action(a))
            );
        }
    }

    #[test]
    fn refusals() {
        let f = |b: &str| {
            let e = parse("PUT", "/actions", b.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400);
            e.fault_message().unwrap().to_string()
        };
        let e = f(r#"{"action_type": "Reboot"}"#);
        assert!(
            e.contains("unknown variant `Reboot`") && e.contains("InstanceStart"),
            "{e}"
        );
        assert!(f(r#"{}"#).contains("missing field `action_type`"));
        let e = f(r#"{"action_type": "InstanceStart", "force": true}"#);
        assert!(e.contains("unknown field `force`"), "{e}");
        let e = f(r#"{"action_type": 1}"#);
        assert!(e.contains("field `action_type`"), "{e}");
    }
}
