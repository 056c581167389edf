//! The balloon on the event loop (`event_manager::MutEventSubscriber`).
//!
//! `init` registers the activation EventFd and the stats timer. On the
//! first activation the device registers every queue's EventFd (once: they
//! stay registered across resets, as the entropy device's do) and serves
//! whatever the driver queued before. A kick is dispatched by the queue's
//! transport index; what the index means depends on the features the
//! driver acked (`queue_role`).
use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{Balloon, BalloonMetrics};

impl Balloon {
    fn on_activate(&mut self, ops: &mut EventOps) {
        _ = self.activate_evt.read();
        if !self.queue_evts_registered {
            // Any failure leaves that queue served only on activation.
            for evt in &self.queue_evts {
                _ = ops.add(Events::new(evt, EventSet::IN));
            }
            self.queue_evts_registered = true;
        }
        for i in 0..self.queue_evts.len() {
            self.process_queue(i);
        }
    }
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        // Failing here means the event loop is broken; the device would
        // never start, which the transport's metrics and the guest show.
        _ = ops.add(Events::new(&self.activate_evt, EventSet::IN));
        _ = ops.add(Events::new(&self.stats_timer, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            self.on_activate(ops);
        } else if fd == self.stats_timer.as_raw_fd() {
            // Non-blocking: a reset may have disarmed it since epoll woke us.
            _ = self.stats_timer.wait();
            self.request_stats();
        } else if let Some(i) = self.queue_index_of_fd(fd) {
            _ = self.queue_evts[i].read();
            BalloonMetrics::add(&self.metrics().notifications, 1);
            self.process_queue(i);
        }
    }
}
