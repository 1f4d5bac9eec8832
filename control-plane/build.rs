//! Records the target triple the control plane is built for: the default target of
//! the agent binaries it publishes.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=CONTINUUM_TARGET={target}");
}
