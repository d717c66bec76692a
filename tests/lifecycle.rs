//! The `palaver` binary as an operator runs it: defaults, bad settings, SIGTERM, kill -9,
//! restarts on the same data directory, and a data directory from a newer format.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_palaver");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running {
    child: Child,
    base: String,
}

fn spawn(data_dir: &Path, port: u16, extra: &[(&str, &str)]) -> Child {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .env_clear()
        .env("PALAVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("PALAVER_DATA_DIR", data_dir)
        .env("PALAVER_SEND_RATE_PER_SEC", "100000")
        .env("PALAVER_SEND_BURST", "100000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in extra {
        command.env(key, value);
    }
    command.spawn().expect("spawn palaver")
}

fn start(data_dir: &Path) -> Running {
    let port = free_port();
    let mut child = spawn(data_dir, port, &[]);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("palaver exited during start: {status}");
        }
        if get(&format!("{base}/health")).is_some_and(|(status, _)| status == 200) {
            return Running { child, base };
        }
        assert!(Instant::now() < deadline, "palaver did not answer /health");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `future` to completion on a tiny tokio runtime, with the TLS provider reqwest needs.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A blocking HTTP call through reqwest.
fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> Option<(u16, Value)> {
    block_on(async {
        let client = reqwest::Client::new();
        let mut request = match method {
            "POST" => client.post(url),
            _ => client.get(url),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    })
}

fn get(url: &str) -> Option<(u16, Value)> {
    call("GET", url, None, None)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "palaver did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn register_pair(base: &str) -> (String, String) {
    let (_, ada) = call(
        "POST",
        &format!("{base}/api/auth/register"),
        None,
        Some(json!({"name": "Ada", "email": "ada@example.com", "password": "password123"})),
    )
    .unwrap();
    let (_, bob) = call(
        "POST",
        &format!("{base}/api/auth/register"),
        None,
        Some(json!({"name": "Bob", "email": "bob@example.com", "password": "password123"})),
    )
    .unwrap();
    let token = ada["token"].as_str().unwrap().to_owned();
    let (status, chat) = call(
        "POST",
        &format!(
            "{base}/api/chats/with/{}",
            bob["user"]["_id"].as_str().unwrap()
        ),
        Some(&token),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    (token, chat["_id"].as_str().unwrap().to_owned())
}

fn send(base: &str, token: &str, chat: &str, text: &str) -> Value {
    let (status, message) = call(
        "POST",
        &format!("{base}/api/messages/chat/{chat}"),
        Some(token),
        Some(json!({ "text": text })),
    )
    .unwrap();
    assert_eq!(status, 201, "{message}");
    message
}

fn history(base: &str, token: &str, chat: &str) -> Vec<Value> {
    let (status, page) = call(
        "GET",
        &format!("{base}/api/messages/chat/{chat}?after=0&limit=500"),
        Some(token),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{page}");
    page.as_array().unwrap().clone()
}

#[test]
fn sigterm_exits_cleanly_and_a_restart_keeps_data_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let (token, chat) = register_pair(&server.base);
    let sent: Vec<Value> = (0..20)
        .map(|i| send(&server.base, &token, &chat, &format!("m{i}")))
        .collect();
    signal(&server.child, "TERM");
    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    // No PALAVER_JWT_SECRET: the generated secret was kept, so the old token still works.
    let mut again = start(dir.path());
    let stored = history(&again.base, &token, &chat);
    assert_eq!(stored, sent, "every message, unchanged");
    let (status, me) = call(
        "GET",
        &format!("{}/api/auth/me", again.base),
        Some(&token),
        None,
    )
    .unwrap();
    assert_eq!(
        (status, me["email"].clone()),
        (200, json!("ada@example.com"))
    );
    signal(&again.child, "INT");
    assert!(
        wait_exit(&mut again.child, Duration::from_secs(10)).success(),
        "SIGINT exits 0"
    );
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let (token, chat) = register_pair(&server.base);
    let sent: Vec<Value> = (0..30)
        .map(|i| send(&server.base, &token, &chat, &format!("m{i}")))
        .collect();
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();

    let mut again = start(dir.path());
    let stored = history(&again.base, &token, &chat);
    assert_eq!(stored, sent);
    // And the chat goes on from the next seq.
    assert_eq!(
        send(&again.base, &token, &chat, "after the crash")["seq"],
        31
    );
    again.child.kill().unwrap();
    again.child.wait().unwrap();
}

#[test]
fn a_bad_setting_stops_the_start_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("PALAVER_SEND_BURST", "lots"),
        ("PALAVER_TOKEN_TTL", "forever"),
        ("PALAVER_LISTEN", "localhost"),
        ("PALAVER_MAX_TEXT_CHARS", "0"),
    ] {
        let mut child = spawn(dir.path(), free_port(), &[(key, value)]);
        let status = wait_exit(&mut child, Duration::from_secs(10));
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{key}={value} must stop the start");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}

#[test]
fn a_data_directory_from_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = palaver::storage::open_dir(dir.path()).unwrap();
        drop(palaver::storage::start(db, palaver::storage::Durability::Immediate).unwrap());
    }
    // Pretend a future palaver wrote this directory.
    {
        let db = redb::Database::open(dir.path().join(palaver::storage::DB_FILE)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta.insert("format", [palaver::storage::FORMAT_VERSION + 1].as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let mut child = spawn(dir.path(), free_port(), &[]);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("newer palaver"), "{stderr}");
}

/// Started with an open-files limit of 200, the binary logs it, caps connections
/// `FDS_RESERVED` (64) below it, closes the connections past the cap at once instead of running
/// out of descriptors, and serves again as soon as connections close.
/// The binary installs its allocator's probe: a scrape of its metrics listener reports
/// jemalloc's live and resident bytes beside the kernel's RSS (the library alone cannot).
#[test]
fn the_binary_reports_its_memory_at_metrics() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut child = spawn(
        data.path(),
        port,
        &[("PALAVER_METRICS_LISTEN", metrics_listen.as_str())],
    );
    let url = format!("http://{metrics_listen}/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Some(text) = get_text(&url) {
            break text;
        }
        assert!(Instant::now() < deadline, "no metrics at {url}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let figure = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    };
    let allocated = figure("palaver_heap_allocated_bytes");
    let resident = figure("palaver_heap_resident_bytes");
    let rss = figure("palaver_process_resident_bytes");
    assert!(allocated > 0.0, "allocated {allocated}");
    assert!(
        resident >= allocated,
        "resident {resident} < allocated {allocated}"
    );
    assert!(rss > 1e6, "rss {rss}");
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}

/// The body of a GET answered 200, as text.
fn get_text(url: &str) -> Option<String> {
    block_on(async {
        let response = reqwest::get(url).await.ok()?;
        if response.status() != 200 {
            return None;
        }
        response.text().await.ok()
    })
}

#[test]
fn connections_stay_below_the_open_files_limit() {
    use std::io::Read;
    use std::os::unix::process::CommandExt;

    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .env_clear()
        .env("PALAVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("PALAVER_DATA_DIR", data.path())
        .env("PALAVER_FIRST_BYTE_TIMEOUT", "60")
        .env("PALAVER_CONNECTIONS_PER_ADDRESS", "1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 200,
                rlim_max: 200,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn palaver");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&format!("{base}/health")).is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "palaver did not answer /health");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut held: Vec<std::net::TcpStream> = (0..150)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let closed = held
        .iter_mut()
        .filter(|stream| {
            let mut stream: &std::net::TcpStream = stream;
            stream.set_nonblocking(true).unwrap();
            // Refused connections were closed by the server: EOF (or a reset). Held ones
            // would block.
            !matches!(stream.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert!(
        (150 - 136..=150 - 136 + 4).contains(&closed),
        "{closed} of 150 closed; the cap is 200 - 64 = 136"
    );
    assert_eq!(child.try_wait().unwrap(), None, "palaver is still running");
    // Full of connections that never spoke, it closes the oldest of them for a client.
    let answered = get(&format!("{base}/health"));
    assert_eq!(
        answered.map(|(status, _)| status),
        Some(200),
        "served while full"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&format!("{base}/health")).is_none_or(|(status, _)| status != 200) {
        assert!(Instant::now() < deadline, "palaver did not serve again");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let mut log = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let log = without_colours(&log);
    assert!(
        log.contains("max_connections=136") && log.contains("open_files_limit=Some(200)"),
        "{log}"
    );
}

/// The log's text without its ANSI colour sequences.
fn without_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut in_escape = false;
    for c in log.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (false, c) => plain.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    plain
}
