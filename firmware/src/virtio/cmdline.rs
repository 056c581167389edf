//! `virtio_mmio.device=SIZE@BASE:IRQ[:ID]` on the kernel command line, the
//! way Linux's virtio_mmio module parameter reads it and Firecracker and
//! QEMU's microvm write it (`4K@0xd0000000:5`, `512@0xfeb00e00:12`).
//!
//! SIZE is a number with an optional K/M/G suffix (Linux's memparse), BASE a
//! number, IRQ a decimal number; numbers are decimal or 0x-hex (Linux's
//! `%lli` would also take octal with a leading 0; nobody writes that).
//!
//! Pure code with no dependencies: the VMM's test build compiles this file
//! too (`vmm/src/firmware.rs`) to run the tests below on the host, since the
//! freestanding guest crate has no test harness.

/// The command-line key.
pub const KEY: &str = "virtio_mmio.device";

/// One announced device window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// Which part of a token did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceParamError {
    Size,
    Base,
    Irq,
    Id,
}

impl DeviceParamError {
    pub fn what(self) -> &'static str {
        match self {
            DeviceParamError::Size => "size (a number with an optional K/M/G suffix, not 0)",
            DeviceParamError::Base => {
                "base address (after '@', decimal or 0x-hex, window below 2^64)"
            }
            DeviceParamError::Irq => "IRQ (a decimal number after ':')",
            DeviceParamError::Id => "device id (a decimal number after the second ':')",
        }
    }
}

/// Every `virtio_mmio.device=` value on `cmdline`, in order, parsed.
pub fn devices(
    cmdline: &str,
) -> impl Iterator<Item = (&str, Result<MmioDevice, DeviceParamError>)> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == KEY)
        .map(|(_, v)| (v, parse(v)))
}

/// Parses one value, `SIZE@BASE:IRQ[:ID]`.
pub fn parse(value: &str) -> Result<MmioDevice, DeviceParamError> {
    let (size, rest) = value.split_once('@').ok_or(DeviceParamError::Size)?;
    let size = parse_size(size).ok_or(DeviceParamError::Size)?;
    let (base, rest) = rest.split_once(':').ok_or(DeviceParamError::Irq)?;
    let base = parse_number(base).ok_or(DeviceParamError::Base)?;
    base.checked_add(size).ok_or(DeviceParamError::Base)?;
    let (irq, id) = match rest.split_once(':') {
        Some((irq, id)) => (irq, Some(id)),
        None => (rest, None),
    };
    let irq = parse_decimal(irq)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(DeviceParamError::Irq)?;
    if let Some(id) = id {
        parse_decimal(id).ok_or(DeviceParamError::Id)?;
    }
    Ok(MmioDevice { base, size, irq })
}

/// A size with an optional K/M/G suffix (Linux's memparse), not 0.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = parse_number(digits)?;
    if n == 0 || n.leading_zeros() < shift {
        return None;
    }
    Some(n << shift)
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None => parse_decimal(s),
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_firecracker_and_qemu_forms() {
        assert_eq!(
            parse("4K@0xd0000000:5"),
            Ok(MmioDevice {
                base: 0xd000_0000,
                size: 4096,
                irq: 5
            })
        );
        assert_eq!(
            parse("512@0xfeb00e00:12"),
            Ok(MmioDevice {
                base: 0xfeb0_0e00,
                size: 512,
                irq: 12
            })
        );
        assert_eq!(
            parse("1M@4096:23:7"),
            Ok(MmioDevice {
                base: 4096,
                size: 1 << 20,
                irq: 23
            })
        );
        assert_eq!(parse("0x1000@0XD0001000:6").map(|d| d.size), Ok(4096));
    }

    #[test]
    fn rejects_malformed_values() {
        assert_eq!(parse("4K"), Err(DeviceParamError::Size));
        assert_eq!(parse("@0xd0000000:5"), Err(DeviceParamError::Size));
        assert_eq!(parse("0@0xd0000000:5"), Err(DeviceParamError::Size));
        assert_eq!(parse("4X@0xd0000000:5"), Err(DeviceParamError::Size));
        assert_eq!(parse("99999999999G@0:5"), Err(DeviceParamError::Size));
        assert_eq!(parse("4K@0xd0000000"), Err(DeviceParamError::Irq));
        assert_eq!(parse("4K@0xzz:5"), Err(DeviceParamError::Base));
        assert_eq!(parse("4K@0x:5"), Err(DeviceParamError::Base));
        assert_eq!(
            parse("4K@0xffffffffffffffff:5"),
            Err(DeviceParamError::Base)
        );
        assert_eq!(parse("4K@0xd0000000:"), Err(DeviceParamError::Irq));
        assert_eq!(parse("4K@0xd0000000:-1"), Err(DeviceParamError::Irq));
        assert_eq!(
            parse("4K@0xd0000000:99999999999"),
            Err(DeviceParamError::Irq)
        );
        assert_eq!(parse("4K@0xd0000000:5:x"), Err(DeviceParamError::Id));
    }

    #[test]
    fn finds_every_token_and_ignores_the_rest() {
        let line = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 workload=entropy \
                    virtio_mmio.devices=x virtio_mmio.device=bad virtio_mmio.device=4K@0xd0001000:6";
        let found: Vec<_> = devices(line).collect();
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].1.unwrap().irq, 5);
        assert_eq!(found[1], ("bad", Err(DeviceParamError::Size)));
        assert_eq!(found[2].1.unwrap().base, 0xd000_1000);
        assert_eq!(devices("workload=boot").count(), 0);
    }
}
