//! Component contents for the software tests: a tree of files held in
//! memory, written to and read from disk, and packed as the `.tar.gz` a
//! `dir` artifact is.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// A component's files: path relative to the component's root → bytes.
pub type Tree = BTreeMap<String, Vec<u8>>;

/// Bytes that do not compress, so an archive is as large as its content.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn write_tree(root: &Path, tree: &Tree) {
    for (name, bytes) in tree {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("component directory");
        std::fs::write(&path, bytes).expect("component file");
    }
}

/// Every file below `root` (an empty tree when it does not exist).
pub fn read_tree(root: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let name = path.strip_prefix(root).expect("below the root");
                tree.insert(
                    name.to_string_lossy().into_owned(),
                    std::fs::read(&path).expect("component file"),
                );
            }
        }
    }
    tree
}

/// A `.tar.gz` whose top level is `tree`, made as a user would make it:
/// `tar -C src -czf app.tar.gz .`.
pub fn tar_gz(tree: &Tree) -> Vec<u8> {
    let work = tempfile::tempdir().expect("a temporary directory");
    let src = work.path().join("src");
    write_tree(&src, tree);
    let out = work.path().join("app.tar.gz");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-czf")
        .arg(&out)
        .arg(".")
        .status()
        .expect("tar is required");
    assert!(status.success(), "tar failed: {status}");
    std::fs::read(out).expect("the archive")
}

/// Lowercase hex SHA-256.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
