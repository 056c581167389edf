//! HTTP request → [`ApiRequest`], with Firecracker's rules and wording
//! (`api_server/parsed_request.rs`), and nothing else: no I/O, no VMM state,
//! so every refusal is unit-tested here.
//!
//! Adding an endpoint: a file next to these with its serde types (always
//! `deny_unknown_fields`) and `parse_*` functions, a variant in
//! [`ApiRequest`], and one arm in [`parse`]'s route table.
//!
//! Paths: leading, trailing and doubled slashes are ignored and a query string
//! is dropped, as Firecracker does (`/machine-config/` is `/machine-config`);
//! unlike Firecracker, extra segments (`/machine-config/x`) are refused rather
//! than silently ignored.

pub mod actions;
pub mod balloon;
pub mod boot_source;
pub mod entropy;
pub mod instance_info;
mod json;
pub mod machine_config;
pub mod memory;
pub mod vm;

use super::{ApiRequest, ApiResponse, MAX_PAYLOAD_BYTES};

/// Longest slice of a client's path echoed back in a fault message.
const MAX_ECHOED_PATH: usize = 128;

/// Parses one request. `body` is empty when the request had none
/// (`Content-Length: 0` counts as none, as in Firecracker).
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    if body.len() > MAX_PAYLOAD_BYTES {
        return Err(payload_too_large(body.len()));
    }
    let path = strip_target(path);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let has_body = !body.is_empty();

    // Firecracker checks body presence before the path, so `PUT /anything`
    // without a body is "Empty PUT request." whatever the path.
    match (method, has_body) {
        ("GET", true) => return Err(ApiResponse::bad_request("GET request cannot have a body.")),
        ("PUT", false) => return Err(ApiResponse::bad_request("Empty PUT request.")),
        ("PATCH", false) => return Err(ApiResponse::bad_request("Empty PATCH request.")),
        _ => {}
    }

    match (method, segments.as_slice()) {
        ("GET", []) => instance_info::parse_get(),
        ("GET", ["machine-config"]) => machine_config::parse_get(),
        ("PUT", ["machine-config"]) => machine_config::parse_put(body),
        ("PATCH", ["machine-config"]) => machine_config::parse_patch(body),
        ("GET", ["vm", "config"]) => vm::parse_get_config(),
        ("GET", ["vm", "memory"]) => memory::parse_get(),
        ("PATCH", ["vm"]) => vm::parse_patch(body),
        ("PUT", ["boot-source"]) => boot_source::parse_put(body),
        ("PUT", ["entropy"]) => entropy::parse_put(body),
        ("PUT", ["actions"]) => actions::parse_put(body),
        ("GET", ["balloon"]) => Ok(ApiRequest::GetBalloon),
        ("GET", ["balloon", "statistics"]) => Ok(ApiRequest::GetBalloonStats),
        ("PUT", ["balloon"]) => balloon::parse_put(body),
        ("PATCH", ["balloon"]) => balloon::parse_patch(body),
        ("PATCH", ["balloon", "statistics"]) => balloon::parse_patch_stats(body),
        _ => Err(invalid_path_method(method, path)),
    }
}

/// Firecracker's answer to an unknown path or a method the path does not
/// take: 400, not 404/405.
pub(crate) fn invalid_path_method(method: &str, path: &str) -> ApiResponse {
    let shown: String = path.chars().take(MAX_ECHOED_PATH).collect();
    let method: String = method.chars().take(16).collect();
    ApiResponse::bad_request(format!(
        "Invalid request method and/or path: {method} {shown}."
    ))
}

/// micro-http's wording (Firecracker answers oversized payloads with 400).
pub(crate) fn payload_too_large(size: usize) -> ApiResponse {
    ApiResponse::bad_request(format!(
        "Request payload with size {size} is larger than the limit of \
         {MAX_PAYLOAD_BYTES} allowed by server."
    ))
}

/// The path part of a request target: no scheme and authority (absolute
/// form, `http://localhost/vm`), no query string.
fn strip_target(target: &str) -> &str {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let target = match ["http://", "https://"]
        .iter()
        .find(|s| lower.starts_with(*s))
    {
        Some(scheme) => {
            let rest = &target[scheme.len()..];
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        None => target,
    };
    target.split(['?', '#']).next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<ApiRequest, ApiResponse>) -> String {
        let e = r.expect_err("expected a refusal");
        assert_eq!(e.status, 400, "{e:?}");
        e.fault_message().expect("fault_message").to_string()
    }

    #[test]
    fn get_endpoints() {
        assert_eq!(parse("GET", "/", b""), Ok(ApiRequest::GetInstanceInfo));
        assert_eq!(
            parse("GET", "/machine-config", b""),
            Ok(ApiRequest::GetMachineConfig)
        );
        assert_eq!(parse("GET", "/vm/config", b""), Ok(ApiRequest::GetVmConfig));
    }

    #[test]
    fn path_variants_as_firecracker() {
        for p in [
            "/machine-config/",
            "//machine-config",
            "/machine-config?x=1",
            "http://localhost/machine-config",
            "HTTP://localhost/machine-config",
            "machine-config",
        ] {
            assert_eq!(
                parse("GET", p, b""),
                Ok(ApiRequest::GetMachineConfig),
                "{p}"
            );
        }
        assert_eq!(
            parse("GET", "/vm/config/", b""),
            Ok(ApiRequest::GetVmConfig)
        );
        assert_eq!(parse("GET", "", b""), Ok(ApiRequest::GetInstanceInfo));
        assert_eq!(
            parse("GET", "http://localhost", b""),
            Ok(ApiRequest::GetInstanceInfo)
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(
            msg(parse("GET", "/nope", b"")),
            "Invalid request method and/or path: GET /nope."
        );
        assert!(msg(parse("GET", "/machine-config/extra", b""))
            .starts_with("Invalid request method and/or path"));
        assert!(msg(parse("GET", "/vm", b"")).starts_with("Invalid request method"));
        assert!(msg(parse("POST", "/actions", b"{}")).starts_with("Invalid request method"));
        assert!(msg(parse("DELETE", "/vm", b"")).starts_with("Invalid request method"));
        assert!(msg(parse("PATCH", "/boot-source", b"{}")).starts_with("Invalid request"));
        assert!(msg(parse("PUT", "/vm", b"{}")).starts_with("Invalid request method"));
        assert!(msg(parse("get", "/", b"")).starts_with("Invalid request method"));
        // Only a leading scheme makes an absolute-form target.
        assert!(msg(parse("GET", "/x://y", b"")).starts_with("Invalid request method"));
        assert!(msg(parse("GET", "/x://y/machine-config", b"")).starts_with("Invalid request"));
        // Echoed paths are bounded.
        let long = format!("/{}", "a".repeat(10_000));
        assert!(msg(parse("GET", &long, b"")).len() < 300);
    }

    #[test]
    fn body_presence_rules() {
        assert_eq!(
            msg(parse("GET", "/machine-config", b"{}")),
            "GET request cannot have a body."
        );
        assert_eq!(
            msg(parse("PUT", "/machine-config", b"")),
            "Empty PUT request."
        );
        assert_eq!(msg(parse("PUT", "/nope", b"")), "Empty PUT request.");
        assert_eq!(msg(parse("PATCH", "/vm", b"")), "Empty PATCH request.");
    }

    #[test]
    fn huge_body_refused_with_the_limit() {
        let body = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        let m = msg(parse("PUT", "/boot-source", &body));
        assert!(m.contains("51200"), "{m}");
        assert!(m.contains(&(MAX_PAYLOAD_BYTES + 1).to_string()), "{m}");
        // Exactly at the limit is parsed (and here fails as JSON, not size).
        let mut body = vec![b' '; MAX_PAYLOAD_BYTES - 2];
        body.extend_from_slice(b"{}");
        assert!(msg(parse("PUT", "/boot-source", &body)).contains("kernel_image_path"));
    }

    #[test]
    fn malformed_json_everywhere() {
        for (m, p) in [
            ("PUT", "/machine-config"),
            ("PATCH", "/machine-config"),
            ("PATCH", "/vm"),
            ("PUT", "/boot-source"),
            ("PUT", "/entropy"),
            ("PUT", "/actions"),
        ] {
            for body in [&b"{"[..], b"nope", b"{\"a\":}", b"\xff\xfe", b"[]", b"null"] {
                let e = msg(parse(m, p, body));
                assert!(
                    e.starts_with("An error occurred when deserializing the json body"),
                    "{m} {p} {body:?}: {e}"
                );
            }
        }
    }
}

/// The README quotes these messages; this keeps the quotes true.
#[cfg(test)]
mod readme {
    use super::*;
    use crate::api::InstanceState;

    const README: &str = include_str!("../../../../README.md");

    fn quoted(r: Result<ApiRequest, ApiResponse>) {
        let e = r.unwrap_err();
        let m = e.fault_message().unwrap();
        assert!(README.contains(m), "README does not quote: {m}");
    }

    #[test]
    fn quoted_messages_are_current() {
        quoted(parse("DELETE", "/vm", b""));
        quoted(parse(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": "2", "mem_size_mib": 64}"#,
        ));
        quoted(parse("PUT", "/boot-source", b""));
        quoted(parse("GET", "/", b"{}"));
        quoted(parse("PUT", "/boot-source", &[b' '; 60_000]));
        let put = ApiRequest::PutMachineConfig(Default::default());
        quoted(put.allowed_in(InstanceState::Running).map(|_| put.clone()));
        let patch = ApiRequest::PatchVm(vm::VmState::Paused);
        quoted(
            patch
                .allowed_in(InstanceState::NotStarted)
                .map(|_| patch.clone()),
        );
    }
}
