//! Fault injection against the `ca-server` binary: `kill -9` at seeded random points under load,
//! a full disk, restarts while devices wait, (with the lab clock) clock steps, and two instances
//! on PostgreSQL losing one of them and, for a while, the database.
//!
//! `durability.rs` kills the server once and checks the certificates received before the kill.
//! `faults/kill.rs` goes further: many kills at random points, each followed by a check that no
//! order is left stuck, that every certificate is still served byte for byte, and that no serial
//! number was used twice. `IIOT_FAULTS_KILLS` (default 20) sets the number of kills,
//! `IIOT_FAULTS_SEED` the seed of the kill points.

#[path = "common/acme.rs"]
mod acme;
#[path = "faults/clock.rs"]
mod clock;
#[path = "faults/common.rs"]
mod common;
#[path = "faults/disk.rs"]
mod disk;
#[path = "faults/instances.rs"]
mod instances;
#[path = "faults/kill.rs"]
mod kill;
#[path = "faults/waiting.rs"]
mod waiting;
