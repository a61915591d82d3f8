//! The `wormvault` binary: exit codes, what it prints, configuration errors.

use std::process::{Command, Output, Stdio};

fn wormvault(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wormvault"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("WORMVAULT_CONFIG")
        .env("WORMVAULT_LOG", "warn");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn samples(name: &str) -> String {
    format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn archiving_the_samples_with_no_configuration_uses_the_development_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = wormvault(dir.path(), &["archive", &samples("events.ndjson")], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("37 of 37 events"), "{stdout}");
    assert!(stdout.contains("local development store"), "{stdout}");
    assert!(stdout.contains("segments/dt=2026-11-18/"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an SEC 17a-4(f) compliance store"));
    assert!(
        dir.path()
            .join("wormvault-archive/segments/dt=2026-11-20")
            .is_dir()
    );
    // Again: everything is a duplicate, nothing new is written, and that is success.
    let again = wormvault(dir.path(), &["archive", &samples("events.ndjson")], None);
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 accepted, 37 duplicates"));
}

#[test]
fn refusals_go_to_stderr_with_line_event_id_field_and_reason_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = wormvault(dir.path(), &["archive", &samples("invalid.ndjson")], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rejected: line 2 (event_id \"bad-2\"): actor.type: must be one of USER, SYSTEM, SERVICE (got \"user\") [invalid_value]"), "{stderr}");
    assert!(
        stderr.contains(
            "rejected: line 4 (event_id \"bad-4\"): priority: is not a field of the contract"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("rejected: ").count(), 6, "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("0 accepted, 0 duplicates, 6 rejected"),
        "{stdout}"
    );
}

#[test]
fn stdin_and_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let good = crate::util::event("cli-1", "2026-11-20T10:00:00Z", "trade.new", "T-1");
    let out = wormvault(
        dir.path(),
        &["archive", "-", "--json"],
        Some(&format!("{good}\n\nnot json\n")),
    );
    assert_eq!(out.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["accepted"], 1);
    assert_eq!(summary["rejected"], 1);
    assert_eq!(summary["segments"].as_array().unwrap().len(), 1);
    let rejection: serde_json::Value = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.get("kind").is_some())
        })
        .unwrap();
    assert_eq!(rejection["line"], 3, "blank lines count as lines");
    assert_eq!(rejection["index"], 1, "but not as events");
    assert_eq!(rejection["kind"], "malformed");
}

#[test]
fn config_check_prints_resolved_settings_or_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ok = wormvault(dir.path(), &["config", "check"], None);
    assert_eq!(ok.status.code(), Some(0));
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        text.contains("built-in defaults")
            && text.contains("sec-17a-4-a")
            && text.contains("6 years"),
        "{text}"
    );
    for example in ["local.toml", "localstack.toml", "minio.toml", "aws.toml"] {
        let path = format!("{}/config/{example}", env!("CARGO_MANIFEST_DIR"));
        let out = wormvault(dir.path(), &["--config", &path, "config", "check"], None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(dir.path().join("bad.toml"), "[batch]\nmax_evnts = 5\n").unwrap();
    let bad = wormvault(
        dir.path(),
        &["--config", "bad.toml", "config", "check"],
        None,
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_evnts"));
}

#[test]
fn a_day_argument_that_is_not_a_day_is_refused_with_the_option_named() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["anchor", "--day", "yesterday"][..],
        &["prove", "e-1", "--day", "2026-13-01"],
        &["verify", "--from", "2026-11-02", "--to", "11/20/2026"],
        &["index", "rebuild", "--day", "2026-11-31"],
        &["bench", "gen", "--out", "x.ndjson", "--start", "2026-11"],
    ] {
        let out = wormvault(dir.path(), args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        let (option, value) = (args[args.len() - 2], args[args.len() - 1]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(option) && err.contains(value) && err.contains("a UTC day like"),
            "{args:?}: {err}"
        );
    }
    // Nothing was written by the refused commands.
    assert!(!dir.path().join("x.ndjson").exists());
    assert!(!dir.path().join("wormvault-archive").exists());
}
