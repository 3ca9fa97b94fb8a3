//! The data-steward console in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver, against `cdp local` (the real binary) with FEBRL records loaded. The steward
//! signs in, works through review items with the keyboard, merges and unmerges profiles,
//! replays and deletes quarantine entries and erases a person; the store is checked after each
//! step, and a screenshot of each screen is saved under the target directory
//! (`console-screenshots/`; `CDP_CONSOLE_SCREENSHOTS_TO_DOCS=1` refreshes docs/images/ too).
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver` packages
//! (`scripts/test-deps.sh`). Without them the test is skipped, except in CI (`CI=true`), where it fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cdp_operator::store::Store;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const STEWARD_TOKEN: &str = "steward-5f1e9c3a7b2d4e60";
const VIEWER_TOKEN: &str = "viewer-0a8b7c6d5e4f3a21";
const KIOSK_KEY: &str = "kiosk-3c4d5e6f7a8b9c0d";
/// FEBRL's first record (rec-1496-org): its national id, given to the kiosk record too.
const FEBRL_PERSON: (&str, &str, &str) = ("mitchell", "green", "1804974");
/// How many FEBRL records are loaded (the first ones of febrl3.csv): enough for review items.
const FEBRL_RECORDS: usize = 2000;
const WAIT: Duration = Duration::from_secs(60);

/// The FEBRL platform with API tokens (a steward with every scope, a viewer who may only read)
/// and a kiosk Source pushing over HTTP, whose validation `fixed` relaxes.
fn platform(fixed: bool) -> String {
    let febrl = include_str!("../config/febrl/febrl.yaml");
    let with_tokens = "spec:\n  api:\n    tokensSecretRef: {name: console-tokens, key: tokens}";
    assert_eq!(febrl.matches("spec: {}").count(), 1, "the FEBRL platform's empty spec");
    let validation = if fixed { "requireAnyOf: [email, nationalId]" } else { "required: [email]" };
    format!(
        "{}
---
apiVersion: v1
kind: Secret
metadata: {{name: console-tokens}}
stringData:
  tokens: |
    steward read,write,erase {STEWARD_TOKEN}
    viewer read {VIEWER_TOKEN}
---
apiVersion: v1
kind: Secret
metadata: {{name: kiosk-intake}}
stringData: {{token: {KIOSK_KEY}}}
---
apiVersion: cdp.dev/v1alpha1
kind: Source
metadata: {{name: kiosk}}
spec:
  platformRef: {{name: febrl}}
  delivery:
    http:
      authSecretRef: {{name: kiosk-intake, key: token}}
  eventIdField: visit_id
  defaultPhoneRegion: AU
  trustRank: 40
  mapping:
    - {{from: given_name, to: givenName}}
    - {{from: surname, to: familyName}}
    - {{from: email, to: email}}
    - {{from: soc_sec_id, to: nationalId}}
  validation:
    {validation}
",
        febrl.replacen("spec: {}", with_tokens, 1)
    )
}

/// What the test needs on the machine, or why it cannot run.
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()))
    };
    match (find("chromium"), find("chromedriver")) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("chromium and chromedriver are needed in CI: scripts/test-deps.sh installs them (Debian: chromium, chromium-driver)")
        }
        _ => {
            eprintln!("skipped: chromium or chromedriver is not installed (scripts/test-deps.sh installs Debian's chromium and chromium-driver)");
            None
        }
    }
}

/// A process this test started, ended when the test ends (even by a panic).
struct Process(Child);

impl Process {
    /// Ask it to stop (SIGTERM, as Ctrl-C or Kubernetes would) and wait.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.0.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cdp local did not stop on SIGTERM");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Local {
    process: Process,
    ingest: String,
    api: String,
}

/// `cdp local` on `dir`'s manifests and `data`, importing `import` at start, once every record
/// is resolved.
async fn start_local(dir: &Path, data: &Path, import: Option<&Path>) -> Local {
    let (ingest_port, api_port) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_cdp"));
    command
        .args(["local", "-f"])
        .arg(dir)
        .arg("--data")
        .arg(data)
        .args(["--listen-ingest", &format!("127.0.0.1:{ingest_port}"), "--listen-api", &format!("127.0.0.1:{api_port}")]);
    if let Some(file) = import {
        command.arg("--import").arg(format!("febrl={}", file.display()));
    }
    let mut child = command.env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let (lines, received) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || stdout.lines().map_while(Result::ok).for_each(|line| drop(lines.send(line))));
    let process = Process(child);
    let local = Local { process, ingest: format!("http://127.0.0.1:{ingest_port}"), api: format!("http://127.0.0.1:{api_port}") };
    // the banner ends with this line; an import prints its summary after it
    let last = if import.is_some() { "import febrl" } else { "Ctrl-C stops everything" };
    loop {
        let line = received.recv_timeout(Duration::from_secs(300)).expect("cdp local starts");
        if line.starts_with(last) {
            break;
        }
    }
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let load: Value = http.get(format!("{}/v1/load", local.api)).send().await.unwrap().json().await.unwrap();
        if load["backlog"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the matcher resolves the records: {load}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    local
}

/// Chromium under chromedriver, as the issue's machine allows: headless, no network of its own.
async fn browser(chromium: &Path, driver: &Path, profile: &Path) -> (Process, Client) {
    let port = free_port();
    let driver = Process(Command::new(driver).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver listens");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1200",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let capabilities = json!({"browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": args}});
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("chromedriver starts chromium");
    (driver, client)
}

/// The visible text of `css` once it contains `expected`.
async fn wait_text(client: &Client, css: &str, expected: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(element) = client.find(Locator::Css(css)).await {
            last = element.text().await.unwrap_or_default();
            if last.contains(expected) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never showed {expected:?}; it shows {last:?}");
}

/// Type one key as a person would, to whatever has the focus.
async fn press(client: &Client, key: char) {
    let keys = KeyActions::new("keyboard".into()).then(KeyAction::Down { value: key }).then(KeyAction::Up { value: key });
    client.perform_actions(keys).await.unwrap();
}

async fn click(client: &Client, css: &str) {
    client.wait().at_most(WAIT).for_element(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

async fn fill(client: &Client, css: &str, text: &str) {
    let field = client.wait().at_most(WAIT).for_element(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn choose(client: &Client, css: &str, value: &str) {
    client.find(Locator::Css(css)).await.unwrap().select_by_value(value).await.unwrap();
}

async fn displayed(client: &Client, css: &str) -> bool {
    client.find(Locator::Css(css)).await.unwrap().is_displayed().await.unwrap()
}

/// Confirm the page's confirmation dialog, after checking it says what will happen.
async fn confirm(client: &Client, says: &str) {
    wait_text(client, "#confirm", says).await;
    click(client, "#confirm-ok").await;
}

/// The review item on screen: its id, from its heading.
async fn item_on_screen(client: &Client, previous: Option<i64>) -> i64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let heading = wait_text(client, "#review-item h2", "Item ").await;
        let id: i64 = heading.trim_start_matches("Item ").split(' ').next().unwrap().parse().unwrap();
        if Some(id) != previous {
            return id;
        }
        assert!(Instant::now() < deadline, "the next item shows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a screen reader, a keyboard and weak eyes need of the screen shown: landmarks, a name
/// for every visible control (a label, an aria-label, or a button's text), and text at a
/// contrast of 4.5:1 or more with its background (WCAG AA for normal text).
const ACCESSIBILITY_PROBLEMS: &str = r#"
    const landmarks = ["header", "nav", "main"].filter((tag) => !document.querySelector(tag));
    const visible = (e) => e.offsetParent !== null;
    const unnamed = [...document.querySelectorAll("input, select, textarea, button")]
      .filter(visible)
      .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.textContent.trim())
      .map((e) => `no name: ${e.outerHTML}`);
    const rgba = (css) => (css.match(/[\d.]+/g) || []).map(Number);
    const luminance = ([r, g, b]) => {
      const linear = (c) => ((c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
      return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
    };
    const background = (e) => {
      for (; e; e = e.parentElement) {
        const c = rgba(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const faint = [...document.querySelectorAll("body *")]
      .filter((e) => visible(e) && !e.disabled && [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim()))
      .map((e) => {
        const [fg, bg] = [luminance(rgba(getComputedStyle(e).color)), luminance(background(e))];
        return [e, (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05)];
      })
      .filter(([, ratio]) => ratio < 4.5)
      .map(([e, ratio]) => `contrast ${ratio.toFixed(2)}: ${e.outerHTML.slice(0, 120)}`);
    return landmarks.map((tag) => `no <${tag}> landmark`).concat(unnamed, faint);
"#;

async fn assert_accessible(client: &Client, screen: &str) {
    let problems = client.execute(ACCESSIBILITY_PROBLEMS, vec![]).await.unwrap();
    assert_eq!(problems, json!([]), "{screen}: accessibility problems");
}

/// The keyboard's focus is visible: the element Tab reaches has an outline.
async fn assert_focus_visible(client: &Client) {
    press(client, char::from(fantoccini::key::Key::Tab)).await;
    let outline = client
        .execute("const s = getComputedStyle(document.activeElement); return [s.outlineStyle, parseFloat(s.outlineWidth)];", vec![])
        .await
        .unwrap();
    assert!(outline[0] != "none" && outline[1].as_f64().unwrap() >= 2.0, "the focused element shows an outline: {outline}");
}

struct Screenshots(Vec<PathBuf>);

impl Screenshots {
    fn new() -> Screenshots {
        // the test binary is target/<profile>/deps/console_browser-...
        let target = std::env::current_exe().unwrap().ancestors().nth(3).unwrap().to_path_buf();
        let mut dirs = vec![target.join("console-screenshots")];
        if std::env::var("CDP_CONSOLE_SCREENSHOTS_TO_DOCS").is_ok_and(|v| v == "1") {
            dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images"));
        }
        dirs.iter().for_each(|d| std::fs::create_dir_all(d).unwrap());
        Screenshots(dirs)
    }

    /// The screen from its top (header, navigation, the screen's title), as a person lands on
    /// it; each screen photographed is checked for landmarks and named controls too.
    async fn take(&self, client: &Client, name: &str) {
        assert_accessible(client, name).await;
        client.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        let png = client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        for dir in &self.0 {
            std::fs::write(dir.join(format!("console-{name}.png")), &png).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steward_works_through_the_console_in_chromium() {
    let Some((chromium, driver)) = prerequisites() else { return };
    let work = tempfile::tempdir().unwrap();
    let (strict, fixed) = (work.path().join("strict"), work.path().join("fixed"));
    for (dir, is_fixed) in [(&strict, false), (&fixed, true)] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("platform.yaml"), platform(is_fixed)).unwrap();
    }
    let febrl = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data/febrl3.csv")).unwrap();
    let sample: Vec<&str> = febrl.lines().take(FEBRL_RECORDS + 1).collect();
    assert!(sample[1].starts_with("rec-1496-org,1496,mitchell,green"), "the person the test follows");
    let csv = work.path().join("febrl.csv");
    std::fs::write(&csv, sample.join("\n") + "\n").unwrap();
    let data = work.path().join("cdp.db");

    // the kiosk's validation refuses records without an email: two land in quarantine
    let local = start_local(&strict, &data, Some(&csv)).await;
    let http = reqwest::Client::new();
    let (given, family, national_id) = FEBRL_PERSON;
    for record in [
        json!({"visit_id": "k-1", "given_name": given, "surname": family, "soc_sec_id": national_id}),
        json!({"visit_id": "k-2", "given_name": "nobody", "surname": "known"}),
    ] {
        let refused = http.post(format!("{}/v1/sources/kiosk/records", local.ingest)).bearer_auth(KIOSK_KEY).json(&record).send().await.unwrap();
        assert_eq!(refused.status(), 422);
    }
    local.process.stop();
    // the Source is fixed (a national id will do), the platform restarted on the same data
    let local = start_local(&fixed, &data, None).await;
    let store = Store::open(&format!("sqlite:{}", data.display())).await.unwrap();
    let console = format!("{}/console/", local.api);

    let (_driver, client) = browser(&chromium, &driver, &work.path().join("chromium")).await;
    let shots = Screenshots::new();
    client.goto(&console).await.unwrap();
    assert_focus_visible(&client).await;

    // a wrong token: the API's own message stays on screen
    fill(&client, "#token", "not-a-token").await;
    click(&client, "#sign-in-form button").await;
    wait_text(&client, "#error", "missing or invalid bearer token").await;
    shots.take(&client, "sign-in").await;

    // a read-only token: no decisions, no erasure
    fill(&client, "#token", VIEWER_TOKEN).await;
    click(&client, "#sign-in-form button").await;
    wait_text(&client, "#who", "token viewer (read)").await;
    wait_text(&client, "#review-counts", "open").await;
    assert!(!displayed(&client, "#review-approve").await, "approve needs the write scope");
    assert!(!displayed(&client, "a[data-screen=erasure]").await, "erasure needs the erase scope");
    click(&client, "#sign-out").await;

    // the steward
    fill(&client, "#token", STEWARD_TOKEN).await;
    click(&client, "#sign-in-form button").await;
    wait_text(&client, "#who", "token steward (read, write, erase)").await;
    assert!(displayed(&client, "a[data-screen=erasure]").await);
    let counts = wait_text(&client, "#review-counts", "open").await;
    let open_before: i64 = counts.split(' ').next().unwrap().parse().unwrap();
    assert!(open_before >= 3, "FEBRL leaves pairs to review: {counts}");

    // filtered by source and reason; then approve, reject and skip with the keyboard
    choose(&client, "#review-source", "febrl").await;
    choose(&client, "#review-reason", "forbidden").await;
    click(&client, "#review-filters button").await;
    let approved = item_on_screen(&client, None).await;
    wait_text(&client, "#review-item", "Evidence").await;
    wait_text(&client, "#review-item", "given-name").await;
    press(&client, 'a').await;
    wait_text(&client, "#status", &format!("Item {approved} approved")).await;
    let rejected = item_on_screen(&client, Some(approved)).await;
    press(&client, 'r').await;
    wait_text(&client, "#status", &format!("Item {rejected} rejected")).await;
    let skipped = item_on_screen(&client, Some(rejected)).await;
    press(&client, 's').await;
    wait_text(&client, "#status", &format!("Item {skipped} skipped")).await;
    item_on_screen(&client, Some(skipped)).await;
    let counts = wait_text(&client, "#review-counts", "decided").await;
    assert!(counts.contains("1 approved, 1 rejected"), "{counts}");
    shots.take(&client, "review").await;
    // paging: the next page shows other items, the first page comes back
    let on_first_page = item_on_screen(&client, None).await;
    click(&client, "#review-pages button").await;
    wait_text(&client, "#review-pages", "First page").await;
    let on_next_page = item_on_screen(&client, Some(on_first_page)).await;
    assert!(on_next_page > on_first_page, "pages follow each other by id");
    wait_text(&client, "#review-item h2", "(1 of ").await;
    click(&client, "#review-pages button").await;
    item_on_screen(&client, Some(on_next_page)).await;
    let status_of = async |id: i64| store.review_item(id).await.unwrap().unwrap().status;
    assert_eq!(status_of(approved).await, "approved");
    assert_eq!(status_of(rejected).await, "rejected");
    assert_eq!(status_of(skipped).await, "open");
    let approved_item = store.review_item(approved).await.unwrap().unwrap();
    let profile_of = async |record: i64| store.record(record).await.unwrap().unwrap().profile_id;
    assert_eq!(profile_of(approved_item.record_id).await, profile_of(approved_item.other_record_id).await, "approval merged the pair");

    // merge the skipped pair's two profiles by hand, after the confirmation
    let skipped_item = store.review_item(skipped).await.unwrap().unwrap();
    let (a, b) = (profile_of(skipped_item.record_id).await, profile_of(skipped_item.other_record_id).await);
    assert_ne!(a, b);
    client.goto(&format!("{console}#profiles")).await.unwrap();
    choose(&client, "#lookup-kind", "id").await;
    fill(&client, "#lookup-value", &format!("p{a}")).await;
    click(&client, "#search-identifier button").await;
    wait_text(&client, "#profile-detail", "Golden record").await;
    fill(&client, "#merge-other", &format!("p{b}")).await;
    click(&client, "#merge-form button").await;
    let survivor = a.min(b);
    confirm(&client, &format!("p{survivor}, the older one, keeps all")).await;
    wait_text(&client, "#status", &format!("are now p{survivor}")).await;
    assert_eq!(profile_of(skipped_item.other_record_id).await, survivor);
    assert_eq!(profile_of(skipped_item.record_id).await, survivor);
    shots.take(&client, "profiles").await;

    // unmerge the record the merge brought in
    let moved = if a == survivor { skipped_item.other_record_id } else { skipped_item.record_id };
    wait_text(&client, "#profile-heading", &format!("Profile p{survivor}")).await;
    click(&client, &format!("input.split[value='{moved}']")).await;
    click(&client, "#unmerge").await;
    confirm(&client, &format!("Records {moved} leave p{survivor}")).await;
    wait_text(&client, "#status", &format!("Unmerged from p{survivor}")).await;
    assert_ne!(profile_of(moved).await, survivor, "the record is in a profile of its own again");
    wait_text(&client, "#profile-detail", "profile.unmerged").await;

    // a merge the API refuses: its message is shown, nothing changes
    let rejected_item = store.review_item(rejected).await.unwrap().unwrap();
    let (c, d) = (profile_of(rejected_item.record_id).await, profile_of(rejected_item.other_record_id).await);
    fill(&client, "#lookup-value", &format!("p{c}")).await;
    click(&client, "#search-identifier button").await;
    wait_text(&client, "#profile-heading", &format!("Profile p{c}")).await;
    fill(&client, "#merge-other", &format!("p{d}")).await;
    click(&client, "#merge-form button").await;
    click(&client, "#confirm-ok").await;
    wait_text(&client, "#error", "never_merge").await;
    assert_ne!(profile_of(rejected_item.record_id).await, profile_of(rejected_item.other_record_id).await);

    // quarantine: the fixed Source takes k-1; k-2 is still invalid (said so), then deleted
    client.goto(&format!("{console}#quarantine")).await.unwrap();
    let entries = store.quarantined(Some("kiosk"), 0, 10).await.unwrap();
    let [first, second] = &entries[..] else { panic!("two kiosk entries: {entries:?}") };
    wait_text(&client, "#quarantine-list", "email").await;
    shots.take(&client, "quarantine").await;
    click(&client, &format!("#q-{} ~ .actions button", first.id)).await;
    wait_text(&client, "#status", &format!("Entry {} replayed", first.id)).await;
    click(&client, &format!("#q-{} ~ .actions button", second.id)).await;
    wait_text(&client, "#error", "the record is still invalid").await;
    wait_text(&client, "#error", "requireAnyOf").await;
    click(&client, &format!("#q-{} ~ .actions button.danger", second.id)).await;
    confirm(&client, &format!("Delete entry {}?", second.id)).await;
    wait_text(&client, "#status", &format!("Entry {} deleted", second.id)).await;
    assert!(store.quarantined(Some("kiosk"), 0, 10).await.unwrap().is_empty());
    let deadline = Instant::now() + WAIT;
    while store.record_by_source_id("kiosk", "k-1").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the replayed record is resolved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // erase the person by national id: the FEBRL record and the kiosk's go
    assert!(store.record_by_source_id("febrl", "rec-1496-org").await.unwrap().is_some());
    client.goto(&format!("{console}#erasure")).await.unwrap();
    click(&client, "input[name=by][value=identifier]").await;
    choose(&client, "#erase-attribute", "nationalId").await;
    fill(&client, "#erase-value", national_id).await;
    fill(&client, "#erase-reason", "subject-request").await;
    click(&client, "#erasure-form button").await;
    confirm(&client, "this cannot be undone").await;
    wait_text(&client, "#status", "Erasure 1 done").await;
    wait_text(&client, "#erasure-audit", "subject-request").await;
    shots.take(&client, "erasure").await;
    assert!(store.record_by_source_id("febrl", "rec-1496-org").await.unwrap().is_none());
    assert!(store.record_by_source_id("kiosk", "k-1").await.unwrap().is_none());
    let audit = store.erasures(0, 10).await.unwrap();
    assert_eq!((audit.len(), audit[0].reason.as_str(), audit[0].requested_by.as_str()), (1, "subject-request", "steward"));

    client.close().await.unwrap();
    local.process.stop();
}
