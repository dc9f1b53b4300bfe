//! Shared helpers: build the real binaries and plugin libraries once, lay out
//! Plugins folders, run the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Every package whose artifact a test uses.
const PACKAGES: &[&str] = &[
    "host",
    "plugin-dynamics",
    "file-sink-plugin",
    "fixture-not-a-plugin",
    "fixture-ctor-panics",
    "fixture-ctor-fails",
    "fixture-old-api",
    "fixture-scripted",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug")
}

/// Builds the host binary and every plugin library (once per test run) and returns
/// the folder holding them.
pub fn artifacts() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace_root())
            .arg("build")
            .arg("--quiet");
        for package in PACKAGES {
            command.args(["-p", package]);
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the test artifacts failed");
        target_dir()
    })
}

/// The path of a plugin library built from `crate_name` (its lib name).
pub fn library(crate_name: &str) -> PathBuf {
    let file = format!(
        "{}{crate_name}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    );
    artifacts().join(file)
}

pub fn host_binary() -> PathBuf {
    artifacts().join(format!("middleware-engine{}", std::env::consts::EXE_SUFFIX))
}

/// A Plugins folder in a temporary directory.
pub struct PluginsDir {
    pub dir: tempfile::TempDir,
}

impl PluginsDir {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies the library built from `crate_name` into `Plugins/<folder>/`.
    pub fn add(&self, folder: &str, crate_name: &str) -> &Self {
        let source = library(crate_name);
        let target = self.path().join(folder);
        std::fs::create_dir_all(&target).expect("mkdir");
        let name = source.file_name().expect("file name");
        std::fs::copy(&source, target.join(name)).expect("copy plugin");
        self
    }

    /// Writes an arbitrary file into `Plugins/<folder>/<name>`.
    pub fn write(&self, folder: &str, name: &str, contents: &str) -> &Self {
        let target = self.path().join(folder);
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::write(target.join(name), contents).expect("write");
        self
    }
}

/// Runs `middleware-engine <args>` to completion.
pub fn run_host(args: &[&str]) -> Output {
    Command::new(host_binary())
        .args(args)
        .env_remove("MWE_CONFIG")
        .output()
        .expect("host runs")
}
