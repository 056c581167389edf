//! Builds the guest kernel (`firmware/`) with a nested cargo and leaves it in
//! OUT_DIR for `include_bytes!`, so `cargo build` is the only step anyone runs.
//!
//! The firmware is its own workspace (freestanding, panic=abort, linker
//! script), built for the host target with the stable toolchain. Flags meant
//! for the host build (RUSTFLAGS, clippy's wrapper, a custom target dir) are
//! removed so they cannot leak into it; its own `.cargo/config.toml` applies.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    let fw = root.join("firmware");
    for p in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "link.ld",
        "build.rs",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", fw.join(p).display());
    }
    for p in ["src", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("guest-mm").join(p).display()
        );
    }

    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // Shared across profiles and clippy/test runs so the guest is built once.
    let target_dir = target_dir(&out).join("firmware");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&fw)
        .args(["build", "--release", "--offline", "--bins"])
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the guest kernel");
    if !status.success() {
        panic!("building the guest kernel (firmware/) failed: {status}");
    }
    let built = target_dir.join("release").join("memvisor-guest");
    std::fs::copy(&built, out.join("memvisor-guest"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
}

/// The workspace target directory: OUT_DIR is <target>/<profile>/build/<pkg>/out.
fn target_dir(out: &Path) -> PathBuf {
    out.ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out.join("fw"))
}
