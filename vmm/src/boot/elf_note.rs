//! Reads what linux-loader does not: the memvisor SMP-entry note and the end
//! of the highest PT_LOAD segment. Every offset comes from the file, so every
//! read is bounds-checked; a malformed file yields "no", never a panic.
use crate::abi;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// (p_type, p_offset, p_paddr, p_filesz, p_memsz) of one program header.
type Phdr = (u32, u64, u64, u64, u64);

/// The program headers of a little-endian ELF64 file.
fn program_headers(elf: &[u8]) -> Option<Vec<Phdr>> {
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return None;
    }
    let phoff = usize::try_from(u64_at(elf, 0x20)?).ok()?;
    let phentsize = u16_at(elf, 0x36)? as usize;
    let phnum = u16_at(elf, 0x38)? as usize;
    if phentsize < 56 {
        return None;
    }
    (0..phnum)
        .map(|i| {
            let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
            Some((
                u32_at(elf, p)?,
                u64_at(elf, p + 8)?,
                u64_at(elf, p + 24)?,
                u64_at(elf, p + 32)?,
                u64_at(elf, p + 40)?,
            ))
        })
        .collect()
}

/// Highest guest-physical end of any PT_LOAD segment.
pub fn load_end(elf: &[u8]) -> Option<u64> {
    program_headers(elf)?
        .into_iter()
        .filter(|p| p.0 == PT_LOAD)
        .map(|(_, _, paddr, _, memsz)| paddr.checked_add(memsz))
        .try_fold(0u64, |m, e| e.map(|e| m.max(e)))
}

/// True if a PT_NOTE segment carries `abi::NOTE_NAME` / `NOTE_TYPE_SMP_ENTRY`.
pub fn has_smp_entry(elf: &[u8]) -> bool {
    let Some(phdrs) = program_headers(elf) else {
        return false;
    };
    phdrs
        .iter()
        .filter(|p| p.0 == PT_NOTE)
        .any(|&(_, off, _, filesz, _)| {
            let (Ok(off), Ok(len)) = (usize::try_from(off), usize::try_from(filesz)) else {
                return false;
            };
            let Some(notes) = off.checked_add(len).and_then(|end| elf.get(off..end)) else {
                return false;
            };
            notes_contain(notes)
        })
}

fn notes_contain(mut notes: &[u8]) -> bool {
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    while notes.len() >= 12 {
        let (Some(namesz), Some(descsz), Some(kind)) =
            (u32_at(notes, 0), u32_at(notes, 4), u32_at(notes, 8))
        else {
            return false;
        };
        let name_end = 12 + namesz as usize;
        let Some(next) = align4(name_end).and_then(|n| align4(n + descsz as usize)) else {
            return false;
        };
        if notes.get(12..name_end) == Some(abi::NOTE_NAME) && kind == abi::NOTE_TYPE_SMP_ENTRY {
            return true;
        }
        notes = notes.get(next..).unwrap_or(&[]);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32).to_le_bytes());
        v.extend(4u32.to_le_bytes());
        v.extend(kind.to_le_bytes());
        v.extend(name);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend([1, 0, 0, 0]);
        v
    }

    #[test]
    fn finds_the_note_among_others() {
        let mut n = note(b"Xen\0", 18);
        n.extend(note(abi::NOTE_NAME, abi::NOTE_TYPE_SMP_ENTRY));
        assert!(notes_contain(&n));
        assert!(!notes_contain(&note(b"Xen\0", 18)));
        assert!(!notes_contain(&note(abi::NOTE_NAME, 7)));
    }

    #[test]
    fn malformed_input_is_no_not_a_panic() {
        let mut bad = note(abi::NOTE_NAME, abi::NOTE_TYPE_SMP_ENTRY);
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!notes_contain(&bad));
        assert!(!has_smp_entry(b"\x7fELF\x02\x01"));
        let mut hdr = vec![0u8; 64];
        hdr[..6].copy_from_slice(b"\x7fELF\x02\x01");
        hdr[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        hdr[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        hdr[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        assert!(!has_smp_entry(&hdr));
        assert_eq!(load_end(&hdr), None);
    }

    #[test]
    fn bundled_kernel_has_the_note() {
        assert!(has_smp_entry(crate::firmware::BUNDLED));
        assert!(load_end(crate::firmware::BUNDLED).unwrap() > 0x10_0000);
    }
}
