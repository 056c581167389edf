//! Opening KVM and creating the VM with its in-kernel interrupt controllers.
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Environment override for the KVM device path (tests point it at missing
/// and non-KVM files).
pub const KVM_DEVICE_ENV: &str = "MEMVISOR_KVM_DEVICE";
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";
const KVM_API_VERSION: i32 = 12;
/// Address KVM may use for the VMX real-mode TSS: the top of the 4 GiB hole.
const TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
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
pub fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| VmError::Open {
        path: path.into(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let kvm = Kvm::new_with_path(&c).map_err(|e| VmError::Open {
        path: path.into(),
        source: e.into(),
    })?;
    let v = kvm.get_api_version();
    if v < 0 {
        return Err(VmError::NotKvm {
            path: path.into(),
            source: std::io::Error::from_raw_os_error(-v),
        });
    }
    if v != KVM_API_VERSION {
        return Err(VmError::ApiVersion {
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

pub struct Vm {
    pub fd: VmFd,
}

impl Vm {
    /// Creates the VM. Interrupt controllers come later, in
    /// [`Vm::add_interrupt_controllers`], after the memslots: on the PVM hosts
    /// measured here the first KVM_SET_USER_MEMORY_REGION took ~4.8 ms once an
    /// in-kernel irqchip existed and ~0.25 ms before it.
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        if !kvm.check_extension(Cap::Irqchip) {
            return Err(VmError::MissingCap("KVM_CAP_IRQCHIP"));
        }
        if !kvm.check_extension(Cap::UserMemory) {
            return Err(VmError::MissingCap("KVM_CAP_USER_MEMORY"));
        }
        let fd = kvm.create_vm().map_err(|source| VmError::Ioctl {
            what: "KVM_CREATE_VM",
            source,
        })?;
        Ok(Vm { fd })
    }

    /// An in-kernel LAPIC/IOAPIC/PIC and PIT: Linux guests need them, and
    /// interrupts handled in the kernel cost no VMM exits.
    pub fn add_interrupt_controllers(&self) -> Result<(), VmError> {
        let io = |what| move |source| VmError::Ioctl { what, source };
        self.fd
            .set_tss_address(TSS_ADDRESS)
            .map_err(io("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(io("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(io("KVM_CREATE_PIT2"))?;
        Ok(())
    }
}
