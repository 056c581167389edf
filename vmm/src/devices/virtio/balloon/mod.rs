//! virtio-balloon (virtio 1.2 §5.5, as Linux's drivers/virtio/virtio_balloon.c
//! drives it): the host sets a target (`num_pages`), the guest gives pages
//! back through the inflate queue and takes them again through the deflate
//! queue, reports its memory statistics on the stats queue and hands over
//! free blocks on the reporting queue. Ballooning is not in the seed; the
//! spec and Linux's driver are the contract, and Firecracker's
//! `devices/virtio/balloon/` is the model for the folder's shape.
//!
//! Queue numbering. §5.5.2 lists inflateq 0, deflateq 1, statsq 2,
//! free_page_vq 3 and reporting_vq 4, and says a queue exists only when its
//! feature is negotiated. Queues that exist are numbered consecutively:
//! Linux's `virtio_find_vqs` gives an index only to queues with a name, and
//! the balloon names statsq only with F_STATS_VQ. We never offer
//! F_FREE_PAGE_HINT, so:
//!
//! | negotiated            | inflateq | deflateq | statsq | reporting_vq |
//! |-----------------------|----------|----------|--------|--------------|
//! | neither               | 0        | 1        | -      | -            |
//! | STATS_VQ              | 0        | 1        | 2      | -            |
//! | REPORTING             | 0        | 1        | -      | 2            |
//! | STATS_VQ + REPORTING  | 0        | 1        | 2      | 3            |
//!
//! [`queue_role`] is that table; the transport knows only indices.
//!
//! What the host does with each queue (`device.rs`): inflate PFNs are
//! checked, merged into ranges per batch ([`crate::memory::coalesce`]) and
//! discarded, so a run covering whole aligned 2 MiB blocks goes to the host
//! in one piece and frees whole huge pages; deflate needs nothing on the
//! host (anonymous pages refault), but the 2 MiB blocks it returned are
//! handed to the collapse worker (`collapse.rs`), which rebuilds the huge
//! pages a 4 KiB inflate split; reported ranges are discarded like
//! inflated ones. Everything the guest supplies is checked
//! (`chain.rs`) and a refusal is counted by kind ([`Reject`]), never acted
//! on.
pub mod chain;
pub mod collapse;
pub mod device;
pub mod event_handler;
pub mod metrics;
mod page_map;

use serde::{Deserialize, Serialize};

pub use device::{Balloon, HostMemory};
pub use metrics::{BalloonMetrics, BalloonReport, GuestStats};

/// virtio device ID of the memory balloon.
pub const VIRTIO_ID_BALLOON: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;

/// Feature bits (§5.5.3).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Never offered: free page hinting is a migration aid.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// Never offered: the host does not poison pages.
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// The page size of balloon PFNs, whatever the guest's page size
/// (VIRTIO_BALLOON_PFN_SHIFT).
pub const PFN_SHIFT: u32 = 12;
pub const BALLOON_PAGE: u64 = 1 << PFN_SHIFT;
/// A host huge page: runs covering whole aligned ones are kept whole.
pub const HUGE_PAGE: u64 = 2 << 20;
/// Physical addresses have at most 52 bits (x86-64): no PFN at or above
/// this can name RAM. A le32 PFN cannot reach it, but a range computed from
/// a reporting descriptor (u64 address) can.
pub const MAX_PFN: u64 = 1 << (52 - PFN_SHIFT);

/// Most queues the device may have: inflate, deflate, stats, reporting.
pub const BALLOON_MAX_QUEUES: usize = 4;
pub const BALLOON_QUEUE_SIZE: u16 = 256;

/// One stats entry: le16 tag, le64 value, packed (§5.5.6.3).
pub const STAT_ENTRY_SIZE: u32 = 10;
/// Config space: le32 num_pages, le32 actual (§5.5.4); the fields after
/// them exist only with features we do not offer.
pub const CONFIG_NUM_PAGES: u64 = 0;
pub const CONFIG_ACTUAL: u64 = 4;
pub const CONFIG_SIZE: u64 = 8;

/// Stat tags (§5.5.6.3, and Linux's uapi virtio_balloon.h for 6..9).
pub mod tags {
    pub const SWAP_IN: u16 = 0;
    pub const SWAP_OUT: u16 = 1;
    pub const MAJFLT: u16 = 2;
    pub const MINFLT: u16 = 3;
    pub const MEMFREE: u16 = 4;
    pub const MEMTOT: u16 = 5;
    pub const AVAIL: u16 = 6;
    pub const CACHES: u16 = 7;
    pub const HTLB_PGALLOC: u16 = 8;
    pub const HTLB_PGFAIL: u16 = 9;
}

/// What a queue index means under the negotiated features (see the table
/// in this module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// The role of transport queue `index` given the acked `features`, or None
/// if no queue has that index.
pub fn queue_role(index: usize, features: u64) -> Option<QueueRole> {
    let stats = features & (1 << VIRTIO_BALLOON_F_STATS_VQ) != 0;
    let reporting = features & (1 << VIRTIO_BALLOON_F_REPORTING) != 0;
    let mut roles = [QueueRole::Inflate, QueueRole::Deflate].to_vec();
    if stats {
        roles.push(QueueRole::Stats);
    }
    if reporting {
        roles.push(QueueRole::Reporting);
    }
    roles.get(index).copied()
}

/// The index of `role`'s queue, if it exists under `features`.
pub fn queue_index(role: QueueRole, features: u64) -> Option<usize> {
    (0..BALLOON_MAX_QUEUES).find(|&i| queue_role(i, features) == Some(role))
}

/// Why the device refused something the guest sent. Each kind has its
/// own counter; the refused request is never acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    /// An avail ring the queue cannot read (index more than a queue ahead).
    AvailRing,
    /// A chain head at or past the queue size.
    HeadOutOfRange,
    /// A `next` at or past the queue size: the chain runs off the table.
    NextOutOfRange,
    /// A chain that comes back to a descriptor it already used (a loop, or
    /// longer than the queue).
    ChainLoop,
    /// VIRTQ_DESC_F_INDIRECT, which we never offer.
    Indirect,
    /// Device-writable where the spec says readable (inflate, deflate,
    /// stats) or the other way round (reporting).
    WrongDirection,
    /// Length 0, not a multiple of 4 (PFNs) or of 10 (stats), a reported
    /// range not in whole 4 KiB pages, or more than a chain may carry.
    BadLength,
    /// A buffer not wholly inside guest RAM.
    BufferOutsideRam,
    /// Two buffers of one chain overlapping.
    Overlap,
    /// A PFN (or reported page) that is not guest RAM: past the end, in the
    /// MMIO gap, or at or above 2^52.
    PfnOutsideRam,
    /// A second stats buffer while one is held (the driver keeps one).
    ExtraStatsBuffer,
    /// A config-space write other than a 4-byte write of `actual`, or an
    /// `actual` above guest RAM.
    BadConfigWrite,
}

impl Reject {
    pub const ALL: [Reject; 12] = [
        Reject::AvailRing,
        Reject::HeadOutOfRange,
        Reject::NextOutOfRange,
        Reject::ChainLoop,
        Reject::Indirect,
        Reject::WrongDirection,
        Reject::BadLength,
        Reject::BufferOutsideRam,
        Reject::Overlap,
        Reject::PfnOutsideRam,
        Reject::ExtraStatsBuffer,
        Reject::BadConfigWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reject::AvailRing => "avail_ring",
            Reject::HeadOutOfRange => "head_out_of_range",
            Reject::NextOutOfRange => "next_out_of_range",
            Reject::ChainLoop => "chain_loop",
            Reject::Indirect => "indirect",
            Reject::WrongDirection => "wrong_direction",
            Reject::BadLength => "bad_length",
            Reject::BufferOutsideRam => "buffer_outside_ram",
            Reject::Overlap => "overlap",
            Reject::PfnOutsideRam => "pfn_outside_ram",
            Reject::ExtraStatsBuffer => "extra_stats_buffer",
            Reject::BadConfigWrite => "bad_config_write",
        }
    }
}

/// Firecracker's `PUT /balloon` body, and the `--balloon` flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// Seconds between stats refreshes; 0 means no stats queue.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Offer VIRTIO_BALLOON_F_REPORTING.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Firecracker's field; F_FREE_PAGE_HINT is not implemented, so only
    /// `false` is accepted (checked by [`BalloonConfig::validate`]).
    #[serde(default)]
    pub free_page_hinting: bool,
}

impl BalloonConfig {
    /// The device features this configuration offers.
    pub fn features(&self) -> u64 {
        use crate::devices::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
        if self.stats_polling_interval_s > 0 {
            f |= 1 << VIRTIO_BALLOON_F_STATS_VQ;
        }
        if self.deflate_on_oom {
            f |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if self.free_page_reporting {
            f |= 1 << VIRTIO_BALLOON_F_REPORTING;
        }
        f
    }

    /// Checks against a guest of `mem_bytes`; the messages are Firecracker's
    /// where it has one.
    pub fn validate(&self, mem_bytes: u64) -> Result<(), BalloonError> {
        if self.free_page_hinting {
            return Err(BalloonError::HintingUnsupported);
        }
        check_amount(self.amount_mib, mem_bytes)
    }
}

impl BalloonConfig {
    /// The `--balloon` flag: `key=value` pairs separated by commas, every
    /// key optional (`amount_mib=0,deflate_on_oom=on,
    /// free_page_reporting=on,stats_polling_interval_s=1`).
    pub fn from_flag(s: &str) -> Result<Self, String> {
        const KEYS: &str =
            "amount_mib, deflate_on_oom, free_page_reporting, stats_polling_interval_s";
        let mut c = BalloonConfig::default();
        // A key given twice is refused: silently keeping one of two
        // targets would run a VM other than the one asked for.
        let mut seen: Vec<&str> = Vec::new();
        for kv in s.split(',').filter(|kv| !kv.trim().is_empty()) {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(format!("`{kv}`: expected key=value (keys: {KEYS})"));
            };
            let (k, v) = (k.trim(), v.trim());
            if seen.contains(&k) {
                return Err(format!(
                    "{k}={v}: `{k}` is given more than once (each key at most once)"
                ));
            }
            seen.push(k);
            let onoff = |v: &str| match v {
                "on" | "true" => Ok(true),
                "off" | "false" => Ok(false),
                _ => Err(format!("{k}={v}: expected on or off")),
            };
            match k {
                "amount_mib" => {
                    c.amount_mib = v.parse().map_err(|_| {
                        format!("amount_mib={v}: expected a whole number of MiB, 0 to {}", u32::MAX)
                    })?
                }
                "deflate_on_oom" => c.deflate_on_oom = onoff(v)?,
                "free_page_reporting" => c.free_page_reporting = onoff(v)?,
                "stats_polling_interval_s" => {
                    c.stats_polling_interval_s = v.parse().map_err(|_| {
                        format!(
                            "stats_polling_interval_s={v}: expected whole seconds, 0 (no stats) to {}",
                            u16::MAX
                        )
                    })?
                }
                _ => return Err(format!("unknown key `{k}` (keys: {KEYS})")),
            }
        }
        Ok(c)
    }
}

/// Firecracker refuses a target above guest memory.
pub fn check_amount(amount_mib: u32, mem_bytes: u64) -> Result<(), BalloonError> {
    if u64::from(amount_mib) << 20 > mem_bytes {
        return Err(BalloonError::TooManyPagesRequested);
    }
    Ok(())
}

/// MiB → balloon pages. Cannot overflow a u32 for a target that passed
/// [`check_amount`] (guest RAM is far below 16 TiB).
pub fn mib_to_pages(mib: u32) -> u32 {
    mib.saturating_mul((1 << 20) / BALLOON_PAGE as u32)
}

pub fn pages_to_mib(pages: u32) -> u32 {
    pages / ((1 << 20) / BALLOON_PAGE as u32)
}

/// Errors, worded as Firecracker's `BalloonConfigError` where it has the
/// case, so scripts matching on them keep working.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("No balloon device found.")]
    DeviceNotFound,
    #[error("Device is inactive, check if balloon driver is enabled in guest kernel.")]
    DeviceNotActive,
    #[error("Cannot enable/disable the statistics after boot.")]
    InvalidStatsUpdate,
    #[error("Amount of pages requested is too large.")]
    TooManyPagesRequested,
    #[error("Statistics for the balloon device are not enabled")]
    StatsNotFound,
    #[error("free_page_hinting: free page hinting is not supported (valid: false)")]
    HintingUnsupported,
    #[error("cannot create the balloon's eventfd or timerfd")]
    Fd(#[source] std::io::Error),
    #[error("cannot start the balloon's collapse worker")]
    Worker(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: u64 = 1 << VIRTIO_BALLOON_F_STATS_VQ;
    const REPORTING: u64 = 1 << VIRTIO_BALLOON_F_REPORTING;

    #[test]
    fn queue_numbering_follows_the_negotiated_features() {
        use QueueRole::*;
        let table: [(u64, [Option<QueueRole>; 4]); 4] = [
            (0, [Some(Inflate), Some(Deflate), None, None]),
            (STATS, [Some(Inflate), Some(Deflate), Some(Stats), None]),
            (
                REPORTING,
                [Some(Inflate), Some(Deflate), Some(Reporting), None],
            ),
            (
                STATS | REPORTING,
                [Some(Inflate), Some(Deflate), Some(Stats), Some(Reporting)],
            ),
        ];
        for (f, roles) in table {
            for (i, r) in roles.iter().enumerate() {
                assert_eq!(queue_role(i, f), *r, "features {f:#x} queue {i}");
            }
            assert_eq!(queue_role(4, f), None);
        }
        assert_eq!(queue_index(Reporting, REPORTING), Some(2));
        assert_eq!(queue_index(Reporting, STATS | REPORTING), Some(3));
        assert_eq!(queue_index(Stats, REPORTING), None);
        // Features we never offer change nothing.
        let hint = 1 << VIRTIO_BALLOON_F_FREE_PAGE_HINT;
        assert_eq!(queue_role(2, REPORTING | hint), Some(Reporting));
    }

    #[test]
    fn config_offers_what_it_asks_for() {
        let c = BalloonConfig::default();
        assert_eq!(c.features() & (STATS | REPORTING | 4), 0);
        let c = BalloonConfig {
            deflate_on_oom: true,
            stats_polling_interval_s: 1,
            free_page_reporting: true,
            ..Default::default()
        };
        assert_eq!(
            c.features() & (STATS | REPORTING | 4),
            STATS | REPORTING | 4
        );
        assert_eq!(c.features() & (1 << VIRTIO_BALLOON_F_FREE_PAGE_HINT), 0);
        assert_eq!(c.features() & (1 << VIRTIO_BALLOON_F_PAGE_POISON), 0);
    }

    #[test]
    fn the_flag_takes_every_key_optionally_and_names_bad_ones() {
        assert_eq!(BalloonConfig::from_flag(""), Ok(BalloonConfig::default()));
        assert_eq!(
            BalloonConfig::from_flag(
                "amount_mib=512,deflate_on_oom=on,free_page_reporting=on,stats_polling_interval_s=1"
            ),
            Ok(BalloonConfig {
                amount_mib: 512,
                deflate_on_oom: true,
                free_page_reporting: true,
                stats_polling_interval_s: 1,
                free_page_hinting: false,
            })
        );
        assert_eq!(
            BalloonConfig::from_flag("deflate_on_oom=off"),
            Ok(BalloonConfig::default())
        );
        for (bad, says) in [
            ("amount=1", "unknown key `amount`"),
            ("amount_mib=-1", "amount_mib=-1"),
            ("amount_mib=1G", "amount_mib=1G"),
            (
                "deflate_on_oom=yes",
                "deflate_on_oom=yes: expected on or off",
            ),
            (
                "stats_polling_interval_s=70000",
                "stats_polling_interval_s=70000",
            ),
            ("amount_mib", "expected key=value"),
            (
                "amount_mib=0,amount_mib=512",
                "amount_mib=512: `amount_mib` is given more than once",
            ),
            (
                "deflate_on_oom=on,deflate_on_oom=off",
                "`deflate_on_oom` is given more than once",
            ),
        ] {
            let e = BalloonConfig::from_flag(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// The README quotes the refusals a user sees; this keeps the quotes
    /// true.
    #[test]
    fn readme_quotes_every_refusal() {
        const README: &str = include_str!("../../../../../README.md");
        for e in [
            BalloonError::DeviceNotFound,
            BalloonError::DeviceNotActive,
            BalloonError::InvalidStatsUpdate,
            BalloonError::TooManyPagesRequested,
            BalloonError::StatsNotFound,
            BalloonError::HintingUnsupported,
        ] {
            let m = e.to_string();
            // The README wraps long lines.
            let flat = README.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat.contains(&m), "README does not quote: {m}");
        }
    }

    #[test]
    fn amounts_are_bounded_by_guest_memory() {
        assert!(check_amount(256, 256 << 20).is_ok());
        let too_many = |r| matches!(r, Err(BalloonError::TooManyPagesRequested));
        assert!(too_many(check_amount(257, 256 << 20)));
        assert!(too_many(check_amount(u32::MAX, 1 << 40)));
        assert_eq!(mib_to_pages(512), 131072);
        assert_eq!(pages_to_mib(131072), 512);
    }
}
