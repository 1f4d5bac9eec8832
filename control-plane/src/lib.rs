//! The Continuum control plane and operator CLI (`continuum`).
//!
//! `continuum serve` runs the server: a QUIC listener for site agents (mutual TLS under
//! the control plane's own CA) and an HTTPS API for operators, over one sled store in a
//! data directory. Every other subcommand is an operator's client of that API.
//!
//! # Layout
//!
//! - [`cli`]: the command line; [`serve`] assembles and starts the server; [`server`]
//!   runs the listeners it is handed until shutdown.
//! - [`agents`]: the QUIC side: enrollment, renewal, agent sessions and heartbeats.
//! - [`api`]: the HTTPS side: routes, authentication, authorization, OpenAPI.
//! - [`sites`], [`tokens`], [`operators`], [`audit`]: the domain operations.
//! - [`fleet`]: sites connected right now; [`plane`]: the shared state.
//! - [`ca`], [`datadir`]: keys and certificates; [`backup`]: archive and restore.
//! - [`store`]: durable state behind a trait (sled, and an in-memory twin).
//! - [`releases`], [`archives`]: publishing releases and the image archives shipped
//!   with them; [`agent_releases`]: agent binaries, rolled out as `continuum-agent`.
//! - [`model`], [`views`]: stored records and API shapes; [`client`]: the CLI's HTTPS client.

pub mod agent_releases;
pub mod agents;
pub mod api;
pub mod archives;
pub mod audit;
pub mod backup;
pub mod ca;
pub mod cli;
pub mod client;
pub mod datadir;
pub mod decommission;
pub mod desired;
pub mod error;
pub mod fleet;
pub mod install;
pub mod model;
pub mod operators;
pub mod plane;
pub mod policy;
pub mod public_tls;
pub mod releases;
pub mod rollout;
pub mod secrets;
pub mod serve;
pub mod server;
pub mod sites;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod tuf;
pub mod views;
pub mod yank;
