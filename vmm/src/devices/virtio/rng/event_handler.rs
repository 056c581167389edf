//! The entropy device on the event loop (`event_manager::MutEventSubscriber`).
//!
//! `init` registers the activation EventFd and the rate-limiter timer. On
//! activation the device registers its queue EventFd (once: it stays
//! registered across resets, see `Rng::queue_evt`) and serves whatever the
//! driver queued before that. Kicks while the device is reset are read and
//! dropped.
use std::os::fd::AsRawFd;
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{Rng, RngMetrics};

impl Rng {
    fn on_activate(&mut self, ops: &mut EventOps) {
        _ = self.activate_evt.read();
        if !self.queue_evt_registered {
            if let Some(evt) = &self.queue_evt {
                // EEXIST cannot happen (registered once); any other failure
                // leaves the device serving only on activation and timer.
                self.queue_evt_registered = ops.add(Events::new(evt, EventSet::IN)).is_ok();
            }
        }
        self.process_queue(Instant::now());
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        // Failing here means the event loop is broken; the device would
        // never start, which the transport's metrics and the guest show.
        _ = ops.add(Events::new(&self.activate_evt, EventSet::IN));
        _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            self.on_activate(ops);
        } else if Some(fd) == self.queue_evt_fd() {
            if let Some(evt) = &self.queue_evt {
                _ = evt.read();
            }
            RngMetrics::add(&self.metrics().notifications, 1);
            self.process_queue(Instant::now());
        } else if fd == self.timer.as_raw_fd() {
            // Non-blocking: a reset may have disarmed it since epoll woke us.
            _ = self.timer.wait();
            self.unblock();
            self.process_queue(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::{Queue, QueueT};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio::rng::EntropyConfig;
    use crate::devices::virtio::{IrqTrigger, VirtQueue, VirtioDevice};
    use crate::memory::GuestRam;

    /// The integrator's event loop type, with the device added as it will
    /// be: activation, then a kick, reach the device on the loop thread.
    #[test]
    fn activation_and_kicks_reach_the_device_through_the_event_loop() {
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        let rng = Arc::new(Mutex::new(Rng::new(&EntropyConfig::default()).unwrap()));
        em.add_subscriber(rng.clone());
        let ram = GuestRam::new(1 << 20).unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut q = Queue::new(16).unwrap();
        q.try_set_size(16).unwrap();
        q.try_set_desc_table_address(vm_memory::GuestAddress(0x1000))
            .unwrap();
        q.try_set_avail_ring_address(vm_memory::GuestAddress(0x2000))
            .unwrap();
        q.try_set_used_ring_address(vm_memory::GuestAddress(0x3000))
            .unwrap();
        q.set_ready(true);
        let vq = VirtQueue {
            queue: q,
            event: kick.try_clone().unwrap(),
        };
        let irq = Arc::new(IrqTrigger::new().unwrap());
        rng.lock()
            .unwrap()
            .activate(ram.memory().clone(), vec![vq], irq)
            .unwrap();
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        assert!(rng.lock().unwrap().queue_evt_registered);
        kick.write(1).unwrap();
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        let m = rng.lock().unwrap().metrics().snapshot();
        assert_eq!(m.notifications, 1);
        // The kick was consumed: nothing more to dispatch.
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    }
}
