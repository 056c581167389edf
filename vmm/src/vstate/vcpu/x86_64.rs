//! x86-64 vCPU set-up: CPUID with per-vCPU APIC IDs, the LAPIC's LINT pins,
//! MSRs, and the register state a kernel expects at its entry point.
use crate::boot::regs;
use kvm_bindings::{kvm_mp_state, kvm_msr_entry, CpuId, Msrs, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{VcpuFd, VmFd};

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
#[error("vCPU {id}: {what} failed: {source}")]
pub struct VcpuError {
    pub id: u32,
    pub what: &'static str,
    #[source]
    pub source: kvm_ioctls::Error,
}

/// Where and how vCPUs start.
#[derive(Clone, Copy, Debug)]
pub struct BootState {
    pub entry: u64,
    pub boot_params: u64,
    pub cr3: u64,
    /// All vCPUs start at `entry` (memvisor SMP entry); else only vCPU 0.
    pub smp_entry: bool,
    pub count: u32,
}

/// Sets the LAPIC's LINT0 to ExtINT and LINT1 to NMI, as firmware would for
/// Linux (the PIC's output reaches the BSP through LINT0).
fn set_lint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut lapic = vcpu.get_lapic()?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let b: [u8; 4] = std::array::from_fn(|i| lapic.regs[off + i] as u8);
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, byte) in v.to_le_bytes().into_iter().enumerate() {
            lapic.regs[off + i] = byte as _;
        }
    }
    vcpu.set_lapic(&lapic)
}

/// CPUID as KVM supports it, with this vCPU's APIC ID in leaves 1 and 0xb/0x1f.
fn cpuid_for(base: &CpuId, id: u32) -> CpuId {
    let mut c = base.clone();
    for e in c.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24),
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    c
}

pub fn create_vcpu(
    vm: &VmFd,
    id: u32,
    cpuid: &CpuId,
    boot: &BootState,
) -> Result<VcpuFd, VcpuError> {
    let err = |what| move |source| VcpuError { id, what, source };
    let vcpu = vm.create_vcpu(id as u64).map_err(err("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&cpuid_for(cpuid, id))
        .map_err(err("KVM_SET_CPUID2"))?;
    set_lint(&vcpu).map_err(err("KVM_SET_LAPIC"))?;
    if id == 0 || boot.smp_entry {
        let sregs =
            regs::long_mode_sregs(vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?, boot.cr3);
        vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
        let smp = boot.smp_entry.then_some((id, boot.count));
        vcpu.set_regs(&regs::entry_regs(boot.entry, boot.boot_params, smp))
            .map_err(err("KVM_SET_REGS"))?;
        vcpu.set_fpu(&regs::fpu()).map_err(err("KVM_SET_FPU"))?;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        }])
        .expect("one MSR fits");
        vcpu.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if id != 0 {
            // With an in-kernel LAPIC, APs otherwise wait for INIT/SIPI.
            vcpu.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(err("KVM_SET_MP_STATE"))?;
        }
    }
    Ok(vcpu)
}
