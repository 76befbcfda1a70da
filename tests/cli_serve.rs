//! `albef serve` refuses an address other machines can reach, with or without a token, unless
//! `--allow-insecure` is given: the release binary run as an operator would run it.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn serve(home: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_albef"));
    cmd.arg("--registry")
        .arg(format!("sqlite://{}", home.join("registry.db").display()))
        .arg("serve")
        .args(args)
        .env_remove("ALBEF_SERVE_TOKEN");
    cmd
}

#[test]
fn serve_refuses_a_reachable_address_unless_allowed() {
    let home = tempfile::tempdir().unwrap();
    for (args, why) in [
        (vec!["--addr", "0.0.0.0:0"], "there is no --token"),
        (
            vec!["--addr", "0.0.0.0:0", "--token", "secret"],
            "the bearer token would cross the network unencrypted",
        ),
    ] {
        let out = serve(home.path(), &args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("refusing to serve on 0.0.0.0:0")
                && stderr.contains(why)
                && stderr.contains("--allow-insecure")
                && stderr.contains("127.0.0.1"),
            "{args:?}: {stderr}"
        );
    }
    // With --allow-insecure (or on loopback) it starts.
    for args in [
        vec!["--addr", "0.0.0.0:0", "--allow-insecure"],
        vec!["--addr", "127.0.0.1:0"],
    ] {
        let mut child = serve(home.path(), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            line.contains("albef serve: listening on"),
            "{args:?}: {line}"
        );
    }
}
