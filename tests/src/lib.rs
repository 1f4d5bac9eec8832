//! Test harness for Continuum's end-to-end tests and the fleet simulator.
//!
//! The end-to-end tests run the binaries the build produced (`continuum`,
//! `continuum-agent`, found beside the test executable) against each other over real
//! QUIC on loopback, each control plane in its own temporary directory with its own
//! ports. A missing binary fails the test with instructions; it never skips.
//!
//! # Layout
//!
//! - [`bins`]: where the built binaries are.
//! - [`server`]: a `continuum serve` process and the CLI pointed at it.
//! - [`agent`]: a `continuum-agent` with its own state directory.
//! - [`peer`]: an in-process QUIC peer speaking raw frames, for hostile and
//!   old-protocol tests.
//! - [`docker`]: the real Docker engine, and test images built without a registry.
//! - [`wait`]: bounded polling.

// A test harness fails by panicking, with a message saying what it expected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod bins;
pub mod docker;
pub mod fleet;
pub mod otlp;
pub mod peer;
pub mod procfs;
pub mod releases;
pub mod server;
pub mod tuf_fixture;
pub mod wait;
