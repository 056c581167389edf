//! The control API: HTTP/1.1 + JSON on a Unix socket, with Firecracker's
//! endpoints, field names, status codes and `fault_message` errors, so a
//! Firecracker user's curl script drives memvisor unchanged.
//!
//! Four parts, kept apart so the VMM never sees HTTP and the HTTP side never
//! touches the VM:
//!
//! - [`request`]: a pure parser, `(method, path, body)` → a typed
//!   [`ApiRequest`] or a ready-made 4xx [`ApiResponse`]. One small file per
//!   endpoint (its serde types and its parse functions) plus one line in the
//!   route table; that is all a new endpoint (e.g. the balloon's) needs.
//! - [`server`]: the API thread. It owns the socket, reads each request with
//!   hard caps on header and body size and on time, answers parse errors
//!   itself, and hands every valid request to the event loop as an
//!   [`ApiMessage`] over an mpsc channel, waking it with an `EventFd`; then it
//!   waits (bounded) for the reply and writes it back.
//! - [`client`]: a tiny blocking client for tests, `memvisor bench api` and the
//!   `memvisor balloon …` commands.
//! - [`inbox`]: the event loop's end of the channel ([`ApiInbox`]).
//!
//! The event loop's side of the contract: when the inbox's `EventFd` is
//! readable, [`ApiInbox::take`] every waiting message, and for each check
//! [`ApiRequest::allowed_in`] for the current state, act, and call
//! [`ApiMessage::respond`]. Only the event-loop thread touches the VM and its
//! devices, as in Firecracker's `rpc_interface.rs`.

pub mod client;
mod http;
pub mod inbox;
pub mod request;
pub mod server;

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

pub use inbox::ApiInbox;
pub use request::actions::ActionType;
pub use request::balloon::{BalloonConfig, BalloonStatsUpdate, BalloonUpdate};
pub use request::boot_source::BootSource;
pub use request::entropy::{EntropyConfig, RateLimiterConfig, TokenBucketConfig};
pub use request::instance_info::{InstanceInfo, InstanceState};
pub use request::machine_config::{CpuTemplate, HugePages, MachineConfig, MachineConfigUpdate};
pub use request::parse;
pub use request::vm::{VmConfig, VmState};
pub use server::{ApiHandle, ApiServer};

/// Firecracker's default `--http-api-max-payload-size`: large enough for any
/// configuration body, small enough that a client cannot make the VMM buffer
/// much.
pub const MAX_PAYLOAD_BYTES: usize = 51_200;

/// One request from the API thread to the event loop, with the channel its
/// answer goes back on.
#[derive(Debug)]
pub struct ApiMessage {
    pub request: ApiRequest,
    /// Capacity 1, so answering never blocks the event loop even if the API
    /// thread has given up waiting.
    pub reply: std::sync::mpsc::SyncSender<ApiResponse>,
}

impl ApiMessage {
    /// Sends the answer; a closed channel (the API thread timed out or shut
    /// down) is not the event loop's problem, so the error is dropped.
    pub fn respond(self, response: ApiResponse) {
        let _ = self.reply.try_send(response);
    }
}

/// What a client can ask the VMM for, already parsed and shape-checked.
/// Semantic checks (file paths exist, vCPU count fits, the request is valid in
/// the current state) are the VMM's: it alone knows the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /` → 200 [`InstanceInfo`].
    GetInstanceInfo,
    /// `GET /machine-config` → 200 [`MachineConfig`].
    GetMachineConfig,
    /// `PUT /machine-config` → 204. Pre-boot only. Omitted optional fields
    /// reset to their defaults, as in Firecracker.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config` → 204. Pre-boot only. Never empty.
    PatchMachineConfig(MachineConfigUpdate),
    /// `GET /vm/config` → 200 [`VmConfig`].
    GetVmConfig,
    /// `PATCH /vm` → 204. Post-boot only.
    PatchVm(VmState),
    /// `GET /vm/memory` → 200 `MemoryAccounting`. Post-boot only (before
    /// it there is no guest RAM to account).
    GetVmMemory,
    /// `PUT /boot-source` → 204. Pre-boot only.
    PutBootSource(BootSource),
    /// `PUT /entropy` → 204. Pre-boot only.
    PutEntropy(EntropyConfig),
    /// `PUT /actions` → 204. `InstanceStart` is pre-boot only, the others
    /// post-boot only.
    Action(ActionType),
    /// `PUT /balloon` → 204. Pre-boot only.
    PutBalloon(BalloonConfig),
    /// `PATCH /balloon` → 204. Post-boot only.
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon` → 200 [`BalloonConfig`].
    GetBalloon,
    /// `GET /balloon/statistics` → 200. Post-boot only.
    GetBalloonStats,
    /// `PATCH /balloon/statistics` → 204. Post-boot only.
    PatchBalloonStats(BalloonStatsUpdate),
}

/// Firecracker's wording, so scripts that match on it keep working.
pub const NOT_SUPPORTED_PRE_BOOT: &str =
    "The requested operation is not supported before starting the microVM.";
/// Firecracker's wording, so scripts that match on it keep working.
pub const NOT_SUPPORTED_POST_BOOT: &str =
    "The requested operation is not supported after starting the microVM.";

impl ApiRequest {
    /// Firecracker's pre-boot / post-boot split
    /// (`rpc_interface.rs`: `handle_preboot_request`,
    /// `handle_runtime_request`), kept here as one pure function so the event
    /// loop applies it in one place and it is tested without a VM. A paused VM
    /// has started: pre-boot requests are refused while paused too.
    pub fn allowed_in(&self, state: InstanceState) -> Result<(), ApiResponse> {
        let started = state != InstanceState::NotStarted;
        match self {
            ApiRequest::GetInstanceInfo
            | ApiRequest::GetMachineConfig
            | ApiRequest::GetVmConfig
            | ApiRequest::GetBalloon => Ok(()),
            ApiRequest::PutMachineConfig(_)
            | ApiRequest::PatchMachineConfig(_)
            | ApiRequest::PutBootSource(_)
            | ApiRequest::PutEntropy(_)
            | ApiRequest::PutBalloon(_)
            | ApiRequest::Action(ActionType::InstanceStart) => {
                if started {
                    Err(ApiResponse::bad_request(NOT_SUPPORTED_POST_BOOT))
                } else {
                    Ok(())
                }
            }
            ApiRequest::PatchVm(_)
            | ApiRequest::PatchBalloon(_)
            | ApiRequest::GetBalloonStats
            | ApiRequest::PatchBalloonStats(_)
            | ApiRequest::GetVmMemory
            | ApiRequest::Action(ActionType::FlushMetrics)
            | ApiRequest::Action(ActionType::SendCtrlAltDel) => {
                if started {
                    Ok(())
                } else {
                    Err(ApiResponse::bad_request(NOT_SUPPORTED_PRE_BOOT))
                }
            }
        }
    }
}

/// An HTTP answer without the HTTP: the server adds the framing and
/// `Content-Type: application/json` when there is a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<Value>,
}

impl ApiResponse {
    /// 200 with a JSON body.
    pub fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body: Some(body),
        }
    }

    /// 200 with any serialisable body (the `Get*` answers). Serialising plain
    /// structs cannot fail; if one ever does, the client gets a 500 fault
    /// rather than the VMM a panic.
    pub fn ok_json<T: Serialize>(body: &T) -> Self {
        match serde_json::to_value(body) {
            Ok(v) => Self::ok(v),
            Err(e) => Self::fault(500, format!("cannot serialise the answer: {e}")),
        }
    }

    /// 204, the answer to every successful `PUT`/`PATCH`.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    /// An error in Firecracker's format: `{"fault_message": msg}`.
    pub fn fault(status: u16, msg: impl Into<String>) -> Self {
        Self {
            status,
            body: Some(serde_json::json!({ "fault_message": msg.into() })),
        }
    }

    /// 400, what Firecracker answers to every client error.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::fault(400, msg)
    }

    /// The `fault_message`, if this is a fault.
    pub fn fault_message(&self) -> Option<&str> {
        self.body.as_ref()?.get("fault_message")?.as_str()
    }
}

/// Why the API socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another VMM is serving the API socket {}", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot inspect the API socket path {}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the stale API socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind the API socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_has_firecracker_shape() {
        let r = ApiResponse::fault(400, "nope");
        assert_eq!(r.status, 400);
        assert_eq!(r.body, Some(serde_json::json!({"fault_message": "nope"})));
        assert_eq!(r.fault_message(), Some("nope"));
        assert_eq!(ApiResponse::no_content().body, None);
        assert_eq!(ApiResponse::ok(serde_json::json!({})).fault_message(), None);
    }

    #[test]
    fn state_rules_follow_firecracker() {
        use InstanceState::*;
        let pre = [
            ApiRequest::PutMachineConfig(MachineConfig::default()),
            ApiRequest::PatchMachineConfig(MachineConfigUpdate {
                vcpu_count: Some(2),
                ..Default::default()
            }),
            ApiRequest::PutBootSource(BootSource {
                kernel_image_path: "k".into(),
                boot_args: None,
                initrd_path: None,
            }),
            ApiRequest::PutEntropy(EntropyConfig::default()),
            ApiRequest::PutBalloon(BalloonConfig::default()),
            ApiRequest::Action(ActionType::InstanceStart),
        ];
        let post = [
            ApiRequest::PatchVm(VmState::Paused),
            ApiRequest::PatchVm(VmState::Resumed),
            ApiRequest::Action(ActionType::FlushMetrics),
            ApiRequest::Action(ActionType::SendCtrlAltDel),
            ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 1 }),
            ApiRequest::GetBalloonStats,
            ApiRequest::PatchBalloonStats(BalloonStatsUpdate {
                stats_polling_interval_s: 1,
            }),
        ];
        let any = [
            ApiRequest::GetInstanceInfo,
            ApiRequest::GetMachineConfig,
            ApiRequest::GetVmConfig,
            ApiRequest::GetBalloon,
        ];
        for r in &pre {
            assert_eq!(r.allowed_in(NotStarted), Ok(()), "{r:?}");
            for s in [Running, Paused] {
                let e = r.allowed_in(s).unwrap_err();
                assert_eq!(e.status, 400);
                assert_eq!(e.fault_message(), Some(NOT_SUPPORTED_POST_BOOT));
            }
        }
        for r in &post {
            let e = r.allowed_in(NotStarted).unwrap_err();
            assert_eq!(e.fault_message(), Some(NOT_SUPPORTED_PRE_BOOT));
            assert_eq!(r.allowed_in(Running), Ok(()));
            assert_eq!(r.allowed_in(Paused), Ok(()));
        }
        for r in &any {
            for s in [NotStarted, Running, Paused] {
                assert_eq!(r.allowed_in(s), Ok(()));
            }
        }
    }

    #[test]
    fn respond_to_a_gone_api_thread_is_harmless() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        drop(rx);
        ApiMessage {
            request: ApiRequest::GetInstanceInfo,
            reply: tx,
        }
        .respond(ApiResponse::no_content());
    }
}
