//! Locating the binaries under test: beside the running test executable
//! (`target/<profile>/`), or in `CONTINUUM_BIN_DIR`.

use std::path::PathBuf;

/// The directory holding the built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONTINUUM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe
        .parent()
        .expect("executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a built binary; panics with instructions if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} was not built: run `cargo build --workspace` before the tests (the README's test command does both)",
        path.display()
    );
    path
}
