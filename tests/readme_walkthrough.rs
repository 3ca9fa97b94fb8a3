//! The README's walkthrough, top to bottom, as written, on a fresh data file: `cdp local` on
//! the samples with the feeds sent to `cdp receive`, then every `curl` of the README in order.
//! Only the ports change (the README's may be taken); each `curl` must succeed (`--fail`).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, free_address};

const README_INGEST: &str = "127.0.0.1:8080";
const README_API: &str = "127.0.0.1:8090";
const README_RECEIVER: &str = "127.0.0.1:9999";

/// The `sh` blocks of the README in order, each as its commands (continued lines joined).
fn shell_commands(readme: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in readme.lines() {
        match (in_block, line.trim_start().starts_with("```")) {
            (false, true) => in_block = line.trim() == "```sh",
            (true, true) => in_block = false,
            (true, false) => {
                let (text, continued) = match line.trim_end().strip_suffix('\\') {
                    Some(text) => (text, true),
                    None => (line, false),
                };
                current.push_str(text.trim());
                current.push(' ');
                if !continued {
                    commands.push(current.trim().to_string());
                    current.clear();
                }
            }
            (false, false) => {}
        }
    }
    commands
}



fn wait_for(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Command::new("curl").args(["-sf", "-o", "/dev/null", url]).status().is_ok_and(|s| !s.success()) {
        assert!(Instant::now() < deadline, "{url} did not answer");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cdp = env!("CARGO_BIN_EXE_cdp");
    let commands = shell_commands(&std::fs::read_to_string(root.join("README.md")).unwrap());
    let (ingest, api, receiver) = (free_address(), free_address(), free_address());
    let local_ports = |command: &str| {
        command
            .replace(README_INGEST, &ingest)
            .replace(README_API, &api)
            .replace(README_RECEIVER, &receiver)
            .replace("cargo run --release --", cdp)
    };

    // the receiver and the platform, started by the README's own commands
    let started = |prefix: &str| commands.iter().find(|c| c.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in the README"));
    let receive = local_ports(started("cargo run --release -- receive"));
    let mut receive = Running(Command::new("sh").args(["-c", &format!("exec {receive}")]).stdout(Stdio::piped()).spawn().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let local = format!(
        "exec {} --data {} --listen-ingest {ingest} --listen-api {api}",
        local_ports(started("cargo run --release -- local -f config/samples --feeds-to")),
        dir.path().join("walkthrough.db").display()
    );
    let _local = Running(Command::new("sh").args(["-c", &local]).current_dir(root).stdout(Stdio::null()).spawn().unwrap());
    wait_for(&format!("http://{ingest}/openapi.json"));
    wait_for(&format!("http://{api}/openapi.json"));

    let curls: Vec<String> = commands.iter().filter(|c| c.starts_with("curl ")).map(|c| local_ports(c)).collect();
    assert!(curls.len() >= 4, "{curls:?}");
    for command in &curls {
        let command = command.replacen("curl ", "curl -sS --fail-with-body ", 1);
        // a read may come before the matcher resolved what was sent: it is asked again
        let deadline = Instant::now() + Duration::from_secs(if command.contains(" -X ") { 0 } else { 30 });
        loop {
            let output = Command::new("sh").args(["-c", &command]).output().unwrap();
            let body = String::from_utf8_lossy(&output.stdout).into_owned();
            let complete = output.status.success() && (!command.contains("/lookup") || body.contains("ticketing"));
            if complete {
                break;
            }
            assert!(Instant::now() < deadline, "{command}\n{body}\n{}", String::from_utf8_lossy(&output.stderr));
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    // what the feeds delivered, signatures checked by the receiver
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut printed = String::new();
    let stdout = receive.0.stdout.take().unwrap();
    let (lines, reading) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 || lines.send(String::from_utf8_lossy(&buffer[..n]).into_owned()).is_err() {
                break;
            }
        }
    });
    let expected = ["/hooks/cdp", "/v1/welcome", "profile.erased"];
    while !expected.iter().all(|e| printed.contains(e)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match reading.recv_timeout(left) {
            Ok(text) => printed.push_str(&text),
            Err(_) => panic!("the receiver printed no {expected:?} in 30 s:\n{printed}"),
        }
    }
}

#[test]
fn commands_are_read_from_sh_blocks_with_their_continuations() {
    let readme = "text\n```sh\ncurl -X POST http://a \\\n  -d '{}'\ncargo run\n```\n```yaml\ncurl no\n```\n";
    assert_eq!(shell_commands(readme), ["curl -X POST http://a -d '{}'", "cargo run"]);
}
