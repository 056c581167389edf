//! `PUT /boot-source`: the kernel, its command line and an initrd. Whether
//! the files exist and load is the VMM's to find out, when it has them open.

use serde::{Deserialize, Serialize};

use super::json::from_json;
use crate::api::{ApiRequest, ApiResponse};

pub(crate) fn parse_put(body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    Ok(ApiRequest::PutBootSource(from_json(body)?))
}

/// Firecracker's `BootSource`; `boot_args: None` means the VMM's default
/// command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default)]
    pub boot_args: Option<String>,
    #[serde(default)]
    pub initrd_path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse;

    #[test]
    fn put() {
        let r = parse(
            "PUT",
            "/boot-source",
            br#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}"#,
        );
        assert_eq!(
            r,
            Ok(ApiRequest::PutBootSource(BootSource {
                kernel_image_path: "/k".into(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: Some("/i".into()),
            }))
        );
        let r = parse("PUT", "/boot-source", br#"{"kernel_image_path": "/k"}"#);
        assert!(matches!(
            r,
            Ok(ApiRequest::PutBootSource(BootSource {
                boot_args: None,
                initrd_path: None,
                ..
            }))
        ));
    }

    #[test]
    fn refusals() {
        let f = |b: &str| {
            let e = parse("PUT", "/boot-source", b.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400);
            e.fault_message().unwrap().to_string()
        };
        assert!(f(r#"{"boot_args": "x"}"#).contains("missing field `kernel_image_path`"));
        let e = f(r#"{"kernel_image_path": "/k", "kernel": "/k"}"#);
        assert!(e.contains("unknown field `kernel`"), "{e}");
        let e = f(r#"{"kernel_image_path": 7}"#);
        assert!(e.contains("field `kernel_image_path`"), "{e}");
        let e = f(r#"{"kernel_image_path": "/k", "boot_args": ["a"]}"#);
        assert!(e.contains("field `boot_args`"), "{e}");
    }
}
