//! Records the target triple the agent is built for: the agent asks for, and checks,
//! the binary of its own target when it updates itself.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=CONTINUUM_AGENT_TARGET={target}");
    println!("cargo:rerun-if-env-changed=CONTINUUM_AGENT_VERSION");
}
