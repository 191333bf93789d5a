//! swarm end-to-end test support.
