//! The CLI's side of the API: where the server is and how to trust it
//! ([`config`]), and a small HTTPS client ([`http`]).

pub mod config;
pub mod http;

pub use config::{ClientFile, Endpoint};
pub use http::{ApiClient, ClientError};
