//! End-to-end tests: the real `continuum` and `continuum-agent` binaries over real QUIC
//! and HTTPS on loopback. One module per topic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e {
    mod containers;
    mod decommission;
    mod enroll;
    mod hostile;
    mod install;
    mod lifecycle;
    mod operators;
    mod policies;
    mod protocol;
    mod removal;
    mod rollouts;
    mod secrets;
    mod telemetry;
    mod trust;
    mod upgrade;
    mod yank;
}
