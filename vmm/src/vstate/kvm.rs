//! /dev/kvm: opening it, checking it is KVM, and what it supports.
use kvm_ioctls::Kvm;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Environment override for the KVM device path (tests point it at missing
/// and non-KVM files).
pub const KVM_DEVICE_ENV: &str = "MEMVISOR_KVM_DEVICE";
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";
const KVM_API_VERSION: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error(
        "cannot open KVM device {path}: {source} (is KVM available and are you allowed to use it?)"
    )]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a KVM device (KVM_GET_API_VERSION failed: {source})")]
    NotKvm {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: KVM API version {found}, expected {KVM_API_VERSION}")]
    ApiVersion { path: PathBuf, found: i32 },
    #[error("KVM lacks a capability memvisor needs: {0}")]
    MissingCap(&'static str),
    #[error("KVM ioctl {what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

pub fn kvm_device_path() -> PathBuf {
    std::env::var_os(KVM_DEVICE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_KVM_DEVICE.into())
}

/// Opens `path` and checks it really is KVM, so a wrong path fails here with a
/// clear message instead of at the first VM ioctl.
pub fn open_kvm(path: &Path) -> Result<Kvm, KvmError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| KvmError::Open {
        path: path.into(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let kvm = Kvm::new_with_path(&c).map_err(|e| KvmError::Open {
        path: path.into(),
        source: e.into(),
    })?;
    let v = kvm.get_api_version();
    if v < 0 {
        return Err(KvmError::NotKvm {
            path: path.into(),
            source: std::io::Error::from_raw_os_error(-v),
        });
    }
    if v != KVM_API_VERSION {
        return Err(KvmError::ApiVersion {
            path: path.into(),
            found: v,
        });
    }
    Ok(kvm)
}

/// Largest vCPU count this KVM accepts.
pub fn max_vcpus(kvm: &Kvm) -> u32 {
    kvm.get_max_vcpus() as u32
}

/// CPUID as this KVM supports it, the base every vCPU's CPUID starts from.
pub fn supported_cpuid(kvm: &Kvm) -> Result<kvm_bindings::CpuId, KvmError> {
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| KvmError::Ioctl {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })
}
