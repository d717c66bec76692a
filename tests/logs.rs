//! The binary's logs as an operator collects them: `--log-format json` writes one JSON object a
//! line (timestamp, level, target, fields), and no token or password ever appears in them, even
//! at `RUST_LOG=debug`, through registrations, logins, sockets, a bad token and a logout.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palaver_client as client;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_palaver");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server at debug level, its standard output and error going to `log`.
fn spawn(data_dir: &Path, port: u16, log: &Path) -> Child {
    let out = File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Command::new(BIN)
        .args(["serve", "--log-format", "json"])
        .env_clear()
        .env("RUST_LOG", "debug")
        .env("PALAVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("PALAVER_DATA_DIR", data_dir)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn palaver")
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
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
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_healthy(base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "palaver exited during start"
        );
        if let Ok(response) = reqwest::get(format!("{base}/health")).await
            && response.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "palaver did not answer /health");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_at_debug_carry_no_token_or_password() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("palaver.log");
    let port = free_port();
    let mut child = spawn(&dir.path().join("data"), port, &log);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, &mut child).await;

    let mut secrets: Vec<String> = Vec::new();
    let mut tokens = Vec::new();
    for name in ["ada", "bob"] {
        let password = format!("{name}-Secret-Passw0rd-{port}");
        let (status, body) = call(
            "POST",
            &format!("{base}/api/auth/register"),
            None,
            Some(json!({ "name": name, "email": format!("{name}@example.com"), "password": password })),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        secrets.push(body["token"].as_str().unwrap().to_owned());
        let (status, body) = call(
            "POST",
            &format!("{base}/api/auth/login"),
            None,
            Some(json!({ "email": format!("{name}@example.com"), "password": password })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let token = body["token"].as_str().unwrap().to_owned();
        secrets.push(token.clone());
        tokens.push((token, body["user"]["_id"].as_str().unwrap().to_owned()));
        secrets.push(password);
    }
    let wrong_password = format!("Wrong-Passw0rd-{port}");
    let (status, _) = call(
        "POST",
        &format!("{base}/api/auth/login"),
        None,
        Some(json!({ "email": "ada@example.com", "password": wrong_password })),
    )
    .await;
    assert_eq!(status, 401);
    secrets.push(wrong_password);

    let (ada, _) = &tokens[0];
    let (bob, bob_id) = &tokens[1];
    let (status, chat) = call(
        "POST",
        &format!("{base}/api/chats/with/{bob_id}"),
        Some(ada),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let chat = chat["_id"].as_str().unwrap().to_owned();
    let addr = format!("127.0.0.1:{port}");
    let mut sockets = Vec::new();
    for token in [ada, bob] {
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (socket, events) = client::connect(stream, &addr, token).await.expect("socket");
        let ack = socket
            .emit_with_ack(
                "send-message",
                &json!({ "chatId": chat, "text": "hello" }),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(ack["ok"], true, "{ack}");
        sockets.push((socket, events));
    }
    // A token with a forged signature, on a socket and on REST.
    let forged = format!("{}AAAA", &ada[..ada.len() - 4]);
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(client::connect(stream, &addr, &forged).await.is_err());
    let (status, _) = call("GET", &format!("{base}/api/auth/me"), Some(&forged), None).await;
    assert_eq!(status, 401);
    secrets.push(forged);
    let (status, _) = call("POST", &format!("{base}/api/auth/logout"), Some(bob), None).await;
    assert_eq!(status, 204);
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(
        client::connect(stream, &addr, bob).await.is_err(),
        "a revoked token"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "palaver did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let logs = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() > 5, "logs were written:\n{logs}");
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret in the logs: {secret}\n{logs}"
        );
    }
    for line in &lines {
        let object: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(object.get(key).is_some(), "no {key} in {line}");
        }
    }
    let debug = lines
        .iter()
        .filter(|l| l.contains(r#""level":"DEBUG""#))
        .count();
    assert!(debug > 0, "debug lines were written");
    assert!(
        logs.contains(r#""message":"palaver listening""#),
        "the start is logged with its message field"
    );
}
