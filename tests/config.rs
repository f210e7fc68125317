//! `ordo serve`'s settings from a TOML file, `ORDO_*` variables and flags: precedence, and a
//! clear error for an unknown key or a wrong type. Runs the real binary with
//! `--print-config`, which prints the merged settings and exits without serving.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ordo");

/// `ordo serve ARGS --print-config` with `env` (and no other ORDO_* variable): (exit code,
/// stdout, stderr).
fn print_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").args(args).arg("--print-config");
    for (var, _) in std::env::vars().filter(|(v, _)| v.starts_with("ORDO_")) {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run ordo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn setting(printed: &str, key: &str) -> String {
    let table: toml::Table = toml::from_str(printed).expect("printed settings are TOML");
    table.get(key).map(|v| v.to_string()).unwrap_or_default()
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ordo.toml");
    std::fs::write(
        &file,
        r#"
id = 2
listen = "localhost:7002"
data-dir = "/var/lib/ordo"
heartbeat-ms = 40
election-timeout-min-ms = 150
election-timeout-max-ms = 400
insecure = true
"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();
    // `--log-format` is ordo's global flag: allowed after `serve`, with a file too.
    let (code, out, err) = print_config(
        &[
            "--config",
            file,
            "--log-format",
            "json",
            "--election-timeout-max-ms",
            "500",
        ],
        &[
            ("ORDO_ELECTION_TIMEOUT_MIN_MS", "160"),
            ("ORDO_ELECTION_TIMEOUT_MAX_MS", "450"),
            ("ORDO_UNSAFE_NO_FSYNC", "true"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let expect = [
        ("id", "2"),                        // file
        ("listen", "\"localhost:7002\""),   // file
        ("heartbeat-ms", "40"),             // file over the default (50)
        ("election-timeout-min-ms", "160"), // environment over the file
        ("election-timeout-max-ms", "500"), // flag over environment and file
        ("request-timeout-ms", "3000"),     // default
        ("insecure", "true"),               // a switch from the file
        ("unsafe-no-fsync", "true"),        // a switch from the environment
    ];
    for (key, value) in expect {
        assert_eq!(setting(&out, key), value, "{key} in\n{out}");
    }
}

/// The three TLS files may come from different sources (the file, the environment, a flag);
/// only after merging must they be all or none.
#[test]
fn tls_settings_merge_across_sources_and_must_come_together() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ordo.toml");
    std::fs::write(
        &file,
        "tls-key = \"/etc/ordo/key.pem\"\ntls-ca = \"/etc/ordo/ca.pem\"\npeers = \"-\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = print_config(
        &["--config", file, "--tls-ca", "/other/ca.pem"],
        &[("ORDO_TLS_CERT", "/etc/ordo/cert.pem")],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(setting(&out, "tls-cert"), "\"/etc/ordo/cert.pem\"");
    assert_eq!(setting(&out, "tls-key"), "\"/etc/ordo/key.pem\"");
    assert_eq!(setting(&out, "tls-ca"), "\"/other/ca.pem\"");
    assert_eq!(
        setting(&out, "peers"),
        "\"-\"",
        "a value starting with a dash"
    );
    // Two of three, after merging: a clear error when the node would start.
    let two = dir.path().join("two.toml");
    std::fs::write(&two, "tls-key = \"/k.pem\"\ntls-ca = \"/ca.pem\"\n").unwrap();
    let err = serve_refused(&["--config", two.to_str().unwrap()]);
    assert!(err.contains("go together"), "{err}");
    // A revocation list is a TLS setting: alone, it is refused, not ignored.
    let err = serve_refused(&["--tls-crl", "/etc/ordo/crl.pem"]);
    assert!(err.contains("--tls-crl needs TLS"), "{err}");
}

/// `--cluster-id` takes only a cluster id, and not beside `--force-new-cluster` (which makes
/// a new one). A data dir of another cluster is refused at start (`cluster_id`'s unit test).
#[test]
fn a_cluster_id_given_by_hand_is_checked_before_the_node_starts() {
    let id = "0123456789abcdef0123456789abcdef";
    let err = serve_refused(&["--cluster-id", "0123"]);
    assert!(err.contains("32 lowercase hex digits"), "{err}");
    let err = serve_refused(&[
        "--cluster-id",
        id,
        "--force-new-cluster",
        &format!("{id}:1"),
    ]);
    assert!(err.contains("leave --cluster-id (ORDO_CLUSTER_ID"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let other = "fedcba9876543210fedcba9876543210";
    std::fs::write(dir.path().join("cluster-id"), format!("{other}\n")).unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = Command::new(BIN)
        .args(["serve", "--id", "1", "--listen", &free, "--cluster-id", id])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started in another cluster's data dir"
    );
    assert!(
        err.contains(&format!("belongs to cluster {other}")),
        "{err}"
    );
    let kept = std::fs::read_to_string(dir.path().join("cluster-id")).unwrap();
    assert_eq!(kept.trim(), other);
}

/// `ordo serve` with `args` (and no TLS settings from the environment), which must refuse to
/// start: what it says.
fn serve_refused(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "/nonexistent",
        ])
        .args(args)
        .env_remove("ORDO_TLS_CERT")
        .env_remove("ORDO_TLS_KEY")
        .env_remove("ORDO_TLS_CA")
        .env_remove("ORDO_TLS_CRL")
        .output()
        .unwrap();
    assert!(!out.status.success(), "ordo serve {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_key_or_a_wrong_type_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("hartbeat-ms = 30\n", "hartbeat-ms"),
        (
            "heartbeat-ms = \"fast\"\n",
            "heartbeat-ms must be an integer",
        ),
        ("heartbeat-ms = 1.5\n", "heartbeat-ms"),
        ("insecure = \"yes\"\n", "insecure"),
        ("listen = 7000\n", "listen must be a string"),
        ("print-config = true\n", "print-config"),
        ("id = [1, 2]\n", "id"),
    ];
    for (i, (text, names)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = print_config(&["--config", file.to_str().unwrap()], &[]);
        assert_ne!(code, 0, "{text} was accepted");
        assert!(
            err.contains(names),
            "{text}: the error does not name {names}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // A wrong type in the environment, and a required setting given nowhere.
    let (code, _, err) = print_config(&["--id", "1"], &[("ORDO_HEARTBEAT_MS", "soon")]);
    assert!(code != 0 && err.contains("--heartbeat-ms"), "{err}");
    let (code, _, err) = print_config(&["--listen", "x:1"], &[]);
    assert!(
        code == 0,
        "--print-config shows incomplete settings too: {err}"
    );
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "/nonexistent",
        ])
        .env_remove("ORDO_ID")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--id is required"),
        "{err}"
    );
    // Node id 0, as this node's or a peer's, for a new store (older builds took it: a store
    // they made keeps it).
    for ids in [
        &["--id", "0"][..],
        &["--id", "1", "--peers", "0=127.0.0.1:1,1=127.0.0.1:2"][..],
    ] {
        let out = Command::new(BIN)
            .arg("serve")
            .args(ids)
            .args(["--listen", "127.0.0.1:1", "--data-dir", "/nonexistent"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("node ids are 1 or more"),
            "{ids:?}: {err}"
        );
    }
}

/// An address the node cannot take is a clear error at start naming the flag (192.0.2.1 is a
/// documentation address no interface here has; no packet is sent).
#[test]
fn an_address_that_cannot_be_bound_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    for (flag, args) in [
        ("--listen", vec!["--listen", "192.0.2.1:7000"]),
        (
            "--peer-listen",
            vec!["--listen", &free, "--peer-listen", "192.0.2.1:7100"],
        ),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--id", "1", "--data-dir"])
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: started");
        assert!(
            err.contains(&format!("{flag} 192.0.2.1")) && err.contains("cannot resolve or bind"),
            "{flag}: {err}"
        );
    }
}
