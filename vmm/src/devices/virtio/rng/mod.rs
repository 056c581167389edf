//! virtio-rng (virtio 1.2 §5.4): placeholder while the device is written.
