//! `middleware-engine plugins install FILE.zip`: what an admin sees when installing,
//! upgrading and being refused, and that the Plugins folder is left whole.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use crate::helpers::{artifacts, library, run_host, workspace_root, PluginsDir};

const SO: &str = std::env::consts::DLL_EXTENSION;
const RESTART: &str = "restart the service to load it: systemctl restart middleware-engine";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn install(zip: &Path, plugins: &Path) -> Output {
    run_host(&[
        "plugins",
        "install",
        zip.to_str().expect("utf-8 path"),
        "--plugins-dir",
        plugins.to_str().expect("utf-8 path"),
    ])
}

/// `middleware-engine plugins` over `plugins`: its lines and exit code.
fn list(plugins: &Path) -> (Vec<String>, Option<i32>) {
    let output = run_host(&["plugins", "--plugins-dir", plugins.to_str().expect("utf-8")]);
    (
        text(&output.stdout).lines().map(str::to_owned).collect(),
        output.status.code(),
    )
}

/// The one loaded dynamics365 line the listing shows.
fn dynamics_listed(plugins: &Path) -> Vec<String> {
    vec![
        format!("Plugins folder: {}", plugins.display()),
        format!("ok      dynamics365/libplugin_dynamics.{SO}: dynamics365 \"Microsoft Dynamics 365\" 0.1.0"),
        "1 loaded, 0 failed".to_owned(),
    ]
}

/// The archive the release ships, made by the packaging script from the debug build.
fn shipped_zip(out: &Path) -> PathBuf {
    artifacts();
    let output = Command::new("bash")
        .current_dir(workspace_root())
        .args([
            "packaging/plugin-zip.sh",
            "--profile",
            "dev",
            "--no-build",
            "--out-dir",
        ])
        .arg(out)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "plugin-zip.sh failed: {}",
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    let path = PathBuf::from(stdout.lines().last().expect("the archive's path").trim());
    assert!(path.is_file(), "{} is no file", path.display());
    path
}

/// Writes a ZIP of `(name, contents)` files. Stored, not deflated: deflating a debug
/// library in an unoptimised test build takes seconds; the shipped archive covers deflate.
fn zip_of(path: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    use zip::write::SimpleFileOptions;
    let mut writer = zip::ZipWriter::new(std::fs::File::create(path).expect("create zip"));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, contents) in files {
        writer.start_file(*name, options).expect("start");
        writer.write_all(contents).expect("write");
    }
    writer.finish().expect("finish");
    path.to_owned()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A ZIP laid out as shipped, from `library_bytes` and a README saying `readme`.
fn plugin_zip(
    path: &Path,
    folder: &str,
    library_name: &str,
    library_bytes: &[u8],
    readme: &str,
) -> PathBuf {
    let lib = format!("{folder}/{library_name}");
    let doc = format!("{folder}/README.md");
    zip_of(path, &[(&lib, library_bytes), (&doc, readme.as_bytes())])
}

fn dynamics_bytes() -> Vec<u8> {
    read(&library("plugin_dynamics"))
}

/// Every file and folder under `dir` with its contents and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).expect("read folder") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let modified = meta.modified().expect("mtime");
            let contents = if meta.is_dir() {
                stack.push(path.clone());
                None
            } else {
                Some(read(&path))
            };
            let relative = path.strip_prefix(dir).expect("under dir").to_owned();
            found.insert(relative, (contents, modified));
        }
    }
    found
}

fn names(snapshot: &BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)>) -> Vec<String> {
    snapshot.keys().map(|p| p.display().to_string()).collect()
}

#[test]
fn the_shipped_archive_installs_into_an_empty_plugins_folder() {
    let out = tempfile::tempdir().expect("tempdir");
    let zip = shipped_zip(out.path());
    let plugins = PluginsDir::new();

    let output = install(&zip, plugins.path());
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        text(&output.stderr)
    );
    assert_eq!(
        stdout,
        format!(
            "installed dynamics365 \"Microsoft Dynamics 365\" 0.1.0 in {}/dynamics365\n{RESTART}\n",
            plugins.path().display()
        )
    );
    assert_eq!(
        names(&snapshot(plugins.path())),
        vec![
            "dynamics365".to_owned(),
            "dynamics365/README.md".to_owned(),
            format!("dynamics365/libplugin_dynamics.{SO}"),
        ],
        "nothing but the plugin's folder is left behind"
    );
    assert_eq!(
        read(
            &plugins
                .path()
                .join(format!("dynamics365/libplugin_dynamics.{SO}"))
        ),
        dynamics_bytes()
    );
    assert_eq!(
        list(plugins.path()),
        (dynamics_listed(plugins.path()), Some(0))
    );
}

#[test]
fn a_broken_library_is_refused_and_the_plugins_folder_left_as_it_was() {
    let out = tempfile::tempdir().expect("tempdir");
    let plugins = PluginsDir::new();
    plugins.add("dynamics365", "plugin_dynamics");
    plugins.write("notes", "README.txt", "kept");
    let before = snapshot(plugins.path());
    let truncated = dynamics_bytes()[..4096].to_vec();
    let cases: [(&str, &[u8], &str); 2] = [
        (
            "truncated",
            &truncated,
            "the library file is truncated or damaged: ",
        ),
        (
            "text",
            b"#!/bin/sh\necho not a library\n",
            "not a loadable library: ",
        ),
    ];
    for (case, bytes, reason) in cases {
        let zip = plugin_zip(
            &out.path().join(format!("{case}.zip")),
            "dynamics365",
            &format!("libplugin_dynamics.{SO}"),
            bytes,
            "broken",
        );
        let output = install(&zip, plugins.path());
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{case}: {stderr}");
        let prefix = format!("middleware-engine: the archive's library dynamics365/libplugin_dynamics.{SO} is not a plugin this engine can load: {reason}");
        assert!(
            stderr.starts_with(&prefix) && stderr.trim_end().ends_with("; nothing was installed"),
            "{case}: {stderr}"
        );
        assert!(
            !stderr.contains(".installing-"),
            "{case}: names the staging folder: {stderr}"
        );
        assert_eq!(text(&output.stdout), "", "{case}");
        assert!(
            snapshot(plugins.path()) == before,
            "{case}: the Plugins folder changed: {:?} -> {:?}",
            names(&before),
            names(&snapshot(plugins.path()))
        );
    }
    let (lines, code) = list(plugins.path());
    assert_eq!(
        code,
        Some(1),
        "the folder without a library fails the listing: {lines:?}"
    );
    assert!(
        lines.contains(&dynamics_listed(plugins.path())[1]),
        "{lines:?}"
    );
}

#[test]
fn installing_again_replaces_the_plugin_and_keeps_the_previous_one_aside() {
    let out = tempfile::tempdir().expect("tempdir");
    let plugins = PluginsDir::new();
    let so = format!("libplugin_dynamics.{SO}");
    let first = plugin_zip(
        &out.path().join("first.zip"),
        "dynamics365",
        &so,
        &dynamics_bytes(),
        "first",
    );
    let second = plugin_zip(
        &out.path().join("second.zip"),
        "dynamics365",
        &so,
        &dynamics_bytes(),
        "second",
    );
    let dir = plugins.path().display().to_string();

    let output = install(&first, plugins.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    let output = install(&second, plugins.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!("installed dynamics365 \"Microsoft Dynamics 365\" 0.1.0 in {dir}/dynamics365\nreplaced dynamics365 0.1.0; it is kept in {dir}/dynamics365.previous\n{RESTART}\n")
    );
    assert_eq!(
        read(&plugins.path().join("dynamics365/README.md")),
        b"second"
    );
    assert_eq!(
        read(&plugins.path().join("dynamics365.previous/README.md")),
        b"first"
    );
    assert_eq!(
        read(&plugins.path().join("dynamics365.previous").join(&so)),
        dynamics_bytes()
    );
    assert_eq!(
        list(plugins.path()),
        (dynamics_listed(plugins.path()), Some(0)),
        "the kept previous version is not loaded"
    );

    // A third install keeps only the one it replaced.
    let output = install(&first, plugins.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        read(&plugins.path().join("dynamics365/README.md")),
        b"first"
    );
    assert_eq!(
        read(&plugins.path().join("dynamics365.previous/README.md")),
        b"second"
    );
    assert_eq!(
        names(&snapshot(plugins.path())),
        vec![
            "dynamics365".to_owned(),
            "dynamics365/README.md".to_owned(),
            format!("dynamics365/{so}"),
            "dynamics365.previous".to_owned(),
            "dynamics365.previous/README.md".to_owned(),
            format!("dynamics365.previous/{so}"),
        ]
    );
}

#[test]
fn an_archive_of_another_plugin_does_not_replace_the_installed_one() {
    let out = tempfile::tempdir().expect("tempdir");
    let plugins = PluginsDir::new();
    plugins.add("dynamics365", "plugin_dynamics");
    let before = snapshot(plugins.path());
    let zip = plugin_zip(
        &out.path().join("sink.zip"),
        "dynamics365",
        &format!("libfile_sink_plugin.{SO}"),
        &read(&library("file_sink_plugin")),
        "sink",
    );

    let output = install(&zip, plugins.path());
    assert_eq!(output.status.code(), Some(1));
    let folder = plugins.path().join("dynamics365");
    assert_eq!(
        text(&output.stderr),
        format!(
            "middleware-engine: {f} holds the plugin dynamics365 (\"Microsoft Dynamics 365\" 0.1.0); this archive is the plugin file-sink (\"File Sink (example)\" 0.1.0): refusing to replace one plugin with another. Remove {f} first to replace it, or install the archive under another folder name (rename the folder inside the archive)\n",
            f = folder.display()
        )
    );
    assert!(
        snapshot(plugins.path()) == before,
        "the Plugins folder changed"
    );
}

#[test]
fn a_plugin_already_installed_in_another_folder_is_not_installed_twice() {
    let out = tempfile::tempdir().expect("tempdir");
    let plugins = PluginsDir::new();
    plugins.add("crm", "plugin_dynamics");
    let before = snapshot(plugins.path());
    let zip = plugin_zip(
        &out.path().join("dynamics.zip"),
        "dynamics365",
        &format!("libplugin_dynamics.{SO}"),
        &dynamics_bytes(),
        "again",
    );

    let output = install(&zip, plugins.path());
    assert_eq!(output.status.code(), Some(1));
    let dir = plugins.path().display();
    assert_eq!(
        text(&output.stderr),
        format!("middleware-engine: the plugin dynamics365 is already installed in {dir}/crm; installing it again as {dir}/dynamics365 would make a duplicate id at the next start. Remove {dir}/crm first, or rename the folder inside the archive to \"crm\" to upgrade it\n")
    );
    assert!(
        snapshot(plugins.path()) == before,
        "the Plugins folder changed"
    );
}

#[test]
fn a_broken_installed_library_is_replaced_and_kept_aside() {
    let out = tempfile::tempdir().expect("tempdir");
    let plugins = PluginsDir::new();
    let so = format!("libplugin_dynamics.{SO}");
    plugins.write("dynamics365", &so, "half a copy");
    let zip = plugin_zip(
        &out.path().join("d.zip"),
        "dynamics365",
        &so,
        &dynamics_bytes(),
        "fixed",
    );
    let dir = plugins.path().display().to_string();

    let output = install(&zip, plugins.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!("installed dynamics365 \"Microsoft Dynamics 365\" 0.1.0 in {dir}/dynamics365\nreplaced a library that did not load (not a loadable library: {dir}/dynamics365/{so}: file too short); it is kept in {dir}/dynamics365.previous\n{RESTART}\n")
    );
    assert_eq!(
        read(&plugins.path().join("dynamics365.previous").join(&so)),
        b"half a copy"
    );
    assert_eq!(
        list(plugins.path()),
        (dynamics_listed(plugins.path()), Some(0))
    );
}

#[test]
fn a_missing_plugins_folder_is_created_with_a_note() {
    let out = tempfile::tempdir().expect("tempdir");
    let plugins = out.path().join("opt/engine/Plugins");
    let zip = plugin_zip(
        &out.path().join("d.zip"),
        "dynamics365",
        &format!("libplugin_dynamics.{SO}"),
        &dynamics_bytes(),
        "d",
    );

    let output = install(&zip, &plugins);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with(&format!(
            "created the Plugins folder {} (it did not exist)\ninstalled dynamics365 ",
            plugins.display()
        )),
        "{stdout}"
    );
    assert_eq!(list(&plugins), (dynamics_listed(&plugins), Some(0)));
}

#[test]
fn an_entry_climbing_out_of_the_folder_is_refused_before_anything_is_written() {
    let out = tempfile::tempdir().expect("tempdir");
    let plugins = out.path().join("Plugins");
    std::fs::create_dir(&plugins).expect("mkdir");
    let lib = format!("dynamics365/libplugin_dynamics.{SO}");
    let zip = zip_of(
        &out.path().join("evil.zip"),
        &[
            (lib.as_str(), &dynamics_bytes()),
            ("dynamics365/../../escaped.txt", b"owned"),
        ],
    );

    let output = install(&zip, &plugins);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        "middleware-engine: the archive entry \"dynamics365/../../escaped.txt\" climbs out of its folder with \"..\"; a plugin archive holds only <folder>/<files>: rebuild it\n"
    );
    assert!(!out.path().join("escaped.txt").exists());
    assert!(
        snapshot(&plugins).is_empty(),
        "{:?}",
        names(&snapshot(&plugins))
    );
}

#[test]
fn an_archive_without_a_single_plugin_folder_is_refused() {
    let out = tempfile::tempdir().expect("tempdir");
    let plugins = PluginsDir::new();
    let lib = format!("libplugin_dynamics.{SO}");
    let zip = zip_of(
        &out.path().join("flat.zip"),
        &[(lib.as_str(), &dynamics_bytes())],
    );

    let output = install(&zip, plugins.path());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!("middleware-engine: the archive holds the file \"{lib}\" outside a folder; a plugin archive holds exactly one folder, the plugin's, with the library in it (e.g. dynamics365/libplugin_dynamics.{SO})\n")
    );
    assert!(snapshot(plugins.path()).is_empty());
}
