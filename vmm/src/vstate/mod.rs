//! KVM state: the VM and its vCPUs, wrapped once over kvm-ioctls.
pub mod kvm;
pub mod kvm_stats;
pub mod vcpu;
pub mod vm;
