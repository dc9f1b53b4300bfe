//! `middleware-engine tls init` as an operator runs it: the files and their modes,
//! the printed instructions, and no overwrite without `--force`.

use std::path::Path;

use crate::helpers::{run_host, tls_init};

const FILES: [&str; 4] = ["ca.crt", "ca.key", "server.crt", "server.key"];

fn contents(tls: &Path) -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|f| std::fs::read(tls.join(f)).expect("read"))
        .collect()
}

#[test]
fn tls_init_makes_the_pair_prints_the_settings_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A data folder that does not exist yet is created.
    let data = dir.path().join("data");
    let out = tls_init(&data, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");

    let tls = std::fs::canonicalize(&data).expect("data").join("tls");
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&tls), 0o700);
        assert_eq!(mode(&tls.join("ca.key")), 0o600);
        assert_eq!(mode(&tls.join("server.key")), 0o600);
        assert_eq!(mode(&tls.join("ca.crt")), 0o644);
        assert_eq!(mode(&tls.join("server.crt")), 0o644);
        // Made by whoever owns the data folder (here: the test's user): nothing to give away.
        assert_eq!(
            std::fs::metadata(&tls).expect("meta").uid(),
            std::fs::metadata(&data).expect("meta").uid()
        );
        assert!(!stdout.contains("Gave "), "{stdout}");
    }
    let server =
        String::from_utf8(std::fs::read(tls.join("server.crt")).expect("read")).expect("pem");
    assert_eq!(
        server.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "server.crt holds the server certificate and the CA"
    );
    assert!(!stdout.contains("PRIVATE KEY"), "keys are never printed");

    // The settings lines name the files (TOML quoting of odd paths: the unit tests).
    for (setting, file) in [
        ("event_tls_cert", "server.crt"),
        ("event_tls_key", "server.key"),
    ] {
        let line = format!("  {setting} = \"{}\"", tls.join(file).display());
        assert!(stdout.lines().any(|l| l == line), "{line} in {stdout}");
    }
    assert!(
        stdout.contains(&format!("upload {}", tls.join("ca.crt").display())),
        "{stdout}"
    );
    assert!(stdout.contains("for localhost, 127.0.0.1"), "{stdout}");
    assert!(
        stdout.contains("https://localhost:8180/ERSPost?appliance="),
        "{stdout}"
    );

    // Again without --force: refused, the file named, nothing changed.
    let before = contents(&tls);
    let again = tls_init(&data, &[]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ca.crt"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(contents(&tls), before);

    // With --force: the CA stays, the server pair is new.
    let forced = tls_init(&data, &["--force"]);
    let stdout = String::from_utf8_lossy(&forced.stdout);
    assert!(forced.status.success(), "{stdout}");
    assert!(stdout.contains("Kept "), "{stdout}");
    let after = contents(&tls);
    assert_eq!(after[0], before[0], "ca.crt kept");
    assert_eq!(after[1], before[1], "ca.key kept");
    assert_ne!(after[2], before[2], "server.crt replaced");
    assert_ne!(after[3], before[3], "server.key replaced");
}

#[test]
fn tls_init_without_names_or_with_a_url_says_what_to_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8");
    let out = run_host(&["--data-dir", data, "tls", "init"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--hostname") && stderr.contains("--ip"),
        "{stderr}"
    );

    let out = run_host(&[
        "--data-dir",
        data,
        "tls",
        "init",
        "--hostname",
        "https://engine.example.com",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("https://engine.example.com"), "{stderr}");
    assert!(!dir.path().join("tls").exists(), "nothing written");
}
