//! Worker fixture: a worker-updater (and its agent) on loopback. Owned by the updater work.
