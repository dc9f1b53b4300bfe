//! The Debian package, its systemd unit and the plugin ZIP, checked the way an admin
//! would: what `dpkg-deb` lists, what `systemd-analyze` says, what `unzip` shows.
//! The package wraps the debug build `helpers::artifacts()` makes (no release build).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::helpers;

const UNIT: &str = "lib/systemd/system/middleware-engine.service";

/// Runs a tool the checks need; a missing one fails the test with what to install.
fn run(program: &str, args: &[&str], install: &str) -> Output {
    match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{program} is missing: {install} (tests/run.sh installs it)")
        }
        Err(e) => panic!("{program} could not run: {e}"),
    }
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn dpkg_deb(args: &[&str]) -> String {
    let output = run("dpkg-deb", args, "apt-get install dpkg");
    assert!(
        output.status.success(),
        "dpkg-deb {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    text(&output)
}

/// The folder this module's files go to, emptied once per run.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = helpers::artifacts()
            .parent()
            .expect("target folder")
            .join("e2e-packaging");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir e2e-packaging");
        dir
    })
}

/// Builds the .deb once with `packaging/deb.sh --no-build`: cargo-deb packages
/// `target/release/`, so a target folder of our own holds the debug binary there.
fn built_deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let version = run(
            "cargo",
            &["deb", "--version"],
            "cargo install cargo-deb --locked --version '^3'",
        );
        assert!(
            version.status.success() && text(&version).starts_with("cargo-deb 3."),
            "cargo-deb 3 is missing: cargo install cargo-deb --locked --version '^3' (tests/run.sh installs it); got: {}{}",
            text(&version),
            String::from_utf8_lossy(&version.stderr)
        );
        let target = scratch().join("target");
        std::fs::create_dir_all(target.join("release")).expect("mkdir release");
        std::os::unix::fs::symlink(
            helpers::host_binary(),
            target.join("release").join("middleware-engine"),
        )
        .expect("link the debug binary");
        let out = scratch().join("deb");
        let output = Command::new("bash")
            .current_dir(helpers::workspace_root())
            .arg("packaging/deb.sh")
            .args(["--no-build", "--fast", "--out-dir"])
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "packaging/deb.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = text(&output);
        let deb = PathBuf::from(stdout.lines().last().expect("deb.sh prints the path"));
        assert!(deb.is_absolute(), "deb.sh's last line is a path: {stdout}");
        assert!(deb.starts_with(&out), "the package is in --out-dir: {deb:?}");
        assert!(deb.is_file(), "{deb:?} exists");
        deb
    })
}

/// The package's files extracted into a fresh folder.
fn extract(deb: &Path, into: &Path) {
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(into).expect("mkdir");
    dpkg_deb(&[
        "-x",
        deb.to_str().expect("utf-8 path"),
        into.to_str().expect("utf-8 path"),
    ]);
}

/// The lines of a shell script that run, not comments or the text of a here-document.
fn commands(script: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut heredoc: Option<String> = None;
    for line in script.lines() {
        let trimmed = line.trim();
        if let Some(end) = &heredoc {
            if trimmed == end {
                heredoc = None;
            }
            continue;
        }
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if let Some((_, rest)) = trimmed.split_once("<<") {
            heredoc = Some(
                rest.trim_start_matches('-')
                    .trim()
                    .trim_matches(|c| c == '\'' || c == '"')
                    .to_owned(),
            );
        }
        lines.push(trimmed);
    }
    lines
}

#[test]
fn the_debian_package_installs_the_engine_its_unit_settings_and_docs() {
    let deb = built_deb();
    let deb_str = deb.to_str().expect("utf-8 path");

    let contents = dpkg_deb(&["--contents", deb_str]);
    let entry = |path: &str| {
        contents
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("the package holds {path}:\n{contents}"))
            .to_owned()
    };
    let binary = entry("./usr/bin/middleware-engine");
    assert!(
        binary.starts_with("-rwxr-xr-x 0/0"),
        "root-owned, 755: {binary}"
    );
    for file in [
        &format!("./{UNIT}"),
        "./etc/middleware-engine/engine.toml",
        "./usr/share/doc/middleware-engine/README.md",
        "./usr/share/doc/middleware-engine/README.Debian",
        "./usr/share/doc/middleware-engine/copyright",
    ] {
        let line = entry(file);
        assert!(
            line.starts_with("-rw-r--r-- 0/0"),
            "root-owned, 644: {line}"
        );
    }
    // The Plugins folder is the admin's (made by postinst), never the package's.
    assert!(
        !contents.contains("./usr/local/"),
        "the package ships nothing under /usr/local:\n{contents}"
    );

    assert_eq!(
        dpkg_deb(&["--field", deb_str, "Package"]).trim(),
        "middleware-engine"
    );
    let depends = dpkg_deb(&["--field", deb_str, "Depends"]);
    assert!(
        depends.contains("adduser"),
        "postinst uses adduser: {depends}"
    );

    // dpkg keeps the admin's edits to the settings across upgrades.
    let conffiles = dpkg_deb(&["-I", deb_str, "conffiles"]);
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/middleware-engine/engine.toml"]
    );

    let postinst = dpkg_deb(&["-I", deb_str, "postinst"]);
    let run_lines = commands(&postinst);
    assert!(
        run_lines.iter().any(|l| l.starts_with("adduser --system")),
        "postinst creates the system user:\n{postinst}"
    );
    assert!(
        postinst.contains("middleware-engine") && postinst.contains("--no-create-home"),
        "the user is middleware-engine, home the state folder:\n{postinst}"
    );
    assert!(
        run_lines
            .iter()
            .any(|l| l.contains("install -d") && l.contains("-m 0755"))
            && postinst.contains("/usr/local/lib/middleware-engine/Plugins"),
        "postinst creates the Plugins folder, root 0755:\n{postinst}"
    );
    for line in &run_lines {
        for forbidden in [
            "systemctl start",
            "systemctl enable",
            "systemctl restart",
            "deb-systemd-invoke",
            "deb-systemd-helper",
            "--now",
        ] {
            assert!(
                !line.contains(forbidden),
                "postinst neither enables nor starts the service, yet runs `{line}`"
            );
        }
    }
    assert!(
        postinst.contains("systemctl enable --now middleware-engine"),
        "postinst tells the admin how to enable it:\n{postinst}"
    );

    // The packaged binary is the engine and runs.
    let root = scratch().join("contents");
    extract(deb, &root);
    let version = run(
        root.join("usr/bin/middleware-engine")
            .to_str()
            .expect("utf-8"),
        &["--version"],
        "",
    );
    assert!(version.status.success());
    assert!(
        text(&version).starts_with("middleware-engine "),
        "{}",
        text(&version)
    );
}

#[test]
fn systemd_accepts_the_unit_and_rates_it_hardened() {
    let deb = built_deb();
    // The package's files in a root of their own, with the system's units (for the
    // default dependencies) and /bin/kill (ExecReload), so systemd checks the unit as
    // it would be installed: ExecStart's binary must exist there.
    let root = scratch().join("root");
    extract(deb, &root);
    let host_units = Path::new("/usr/lib/systemd/system");
    assert!(
        host_units.is_dir(),
        "systemd's units are missing: apt-get install systemd"
    );
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    for unit in std::fs::read_dir(host_units).expect("read the system's units") {
        let unit = unit.expect("unit");
        if unit.file_type().expect("file type").is_file() {
            std::fs::copy(unit.path(), units.join(unit.file_name())).expect("copy a unit");
        }
    }
    let kill = Path::new("/usr/bin/kill");
    assert!(kill.is_file(), "kill is missing: apt-get install procps");
    std::fs::copy(kill, root.join("usr/bin/kill")).expect("copy kill");
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).expect("link bin");

    let root_arg = format!("--root={}", root.display());
    let unit_arg = format!("/{UNIT}");
    let verify = |unit: &str| {
        run(
            "systemd-analyze",
            &["verify", "--man=no", &root_arg, unit],
            "apt-get install systemd",
        )
    };
    let output = verify(&unit_arg);
    let said = format!(
        "{}{}",
        text(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("middleware-engine"))
        .collect();
    assert!(
        output.status.success() && about_unit.is_empty(),
        "systemd-analyze verify finds fault with the unit: {said}"
    );

    // The same check does catch a fault: a broken copy of the unit is reported.
    let unit_text = std::fs::read_to_string(root.join(UNIT)).expect("read the unit");
    let broken_name = "middleware-engine-broken.service";
    std::fs::write(
        root.join("lib/systemd/system").join(broken_name),
        unit_text.replace("ProtectSystem=strict", "ProtectSystem=sometimes"),
    )
    .expect("write the broken copy");
    let broken = verify(&format!("/lib/systemd/system/{broken_name}"));
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains(broken_name),
        "systemd-analyze verify reports a broken unit: {}",
        String::from_utf8_lossy(&broken.stderr)
    );
    std::fs::remove_file(root.join("lib/systemd/system").join(broken_name)).expect("rm");

    // What the decided layout needs from the unit.
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/middleware-engine --config /etc/middleware-engine/engine.toml serve",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "EnvironmentFile=-/etc/middleware-engine/environment",
        "User=middleware-engine",
        "Group=middleware-engine",
        "StateDirectory=middleware-engine",
        "StateDirectoryMode=0750",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit_text.lines().any(|l| l == line),
            "the unit has `{line}`"
        );
    }
    assert!(
        !unit_text.lines().any(|l| l.starts_with("DynamicUser=")),
        "the state folder keeps a stable owner"
    );
    // Stopping waits for the engine's 30 s grace plus 10 s for open connections.
    let stop: u64 = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec=")
        .parse()
        .expect("seconds");
    assert!(stop > 40, "TimeoutStopSec={stop} leaves the drain its time");

    // systemd's own rating of the sandbox: 2.0 or lower ("OK"); --threshold is in tenths.
    let security = run(
        "systemd-analyze",
        &[
            "security",
            "--offline=true",
            "--threshold=20",
            &root_arg,
            &unit_arg,
        ],
        "apt-get install systemd",
    );
    assert!(
        security.status.success(),
        "systemd-analyze security rates the unit above 2.0: {}{}",
        text(&security),
        String::from_utf8_lossy(&security.stderr)
    );
}

#[test]
fn the_plugin_zip_holds_exactly_the_library_and_its_readme() {
    let library = helpers::library("plugin_dynamics");
    let out = scratch().join("zip");
    let make = || {
        let output = Command::new("bash")
            .current_dir(helpers::workspace_root())
            .arg("packaging/plugin-zip.sh")
            .args(["--profile", "dev", "--no-build", "--out-dir"])
            .arg(&out)
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "packaging/plugin-zip.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = text(&output);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("plugin-zip.sh prints the path"),
        )
    };
    let zip = make();

    let manifest =
        std::fs::read_to_string(helpers::workspace_root().join("plugin-dynamics/Cargo.toml"))
            .expect("read plugin-dynamics/Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the plugin's version");
    assert_eq!(
        zip,
        out.join(format!(
            "dynamics365-{version}-linux-{}.zip",
            std::env::consts::ARCH
        ))
    );
    assert!(zip.is_file(), "{zip:?} exists");

    let zip_str = zip.to_str().expect("utf-8 path");
    let listing = run("unzip", &["-Z1", zip_str], "apt-get install unzip");
    assert!(listing.status.success(), "unzip -Z1 reads the archive");
    assert_eq!(
        text(&listing).lines().collect::<Vec<_>>(),
        ["dynamics365/libplugin_dynamics.so", "dynamics365/README.md"]
    );

    // The library is the one built, and the README says how to install it.
    let unpacked = scratch().join("zip-unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    let unzip = run(
        "unzip",
        &["-q", zip_str, "-d", unpacked.to_str().expect("utf-8 path")],
        "apt-get install unzip",
    );
    assert!(unzip.status.success(), "unzip extracts the archive");
    assert!(
        std::fs::read(unpacked.join("dynamics365/libplugin_dynamics.so")).expect("library")
            == std::fs::read(&library).expect("built library"),
        "the archive holds the built library"
    );
    let readme = std::fs::read_to_string(unpacked.join("dynamics365/README.md")).expect("README");
    for needed in [
        "middleware-engine plugins install",
        "/usr/local/lib/middleware-engine/Plugins",
        "systemctl restart middleware-engine",
        "admin page",
    ] {
        assert!(readme.contains(needed), "the README tells `{needed}`");
    }

    // Reproducible: the same inputs give the same bytes.
    let first = std::fs::read(&zip).expect("read the archive");
    assert_eq!(make(), zip);
    assert!(
        std::fs::read(&zip).expect("read the archive") == first,
        "a second run writes the same archive"
    );
}
