//! [`Scratch`]: a directory unique to this process and a tag, emptied when created and
//! removed when dropped (also when the test fails).

use std::path::{Path, PathBuf};

/// A scratch directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// `$TMPDIR/<tag>-<pid>`, created empty (whatever a previous run left is removed).
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
