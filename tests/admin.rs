//! The operator's commands (`palaver user …`, `token`, `backup`, `restore`, `--help`) run as
//! the binary, both on a stopped data directory (they open the database themselves) and against
//! a running server (through its admin socket); `--registration closed`; disabled accounts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{relaxed_config, start, start_in};
use palaver::config::Config;
use palaver::storage::DB_FILE;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_palaver");

/// What a run of the binary printed, and how it ended.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        self.stdout
    }

    fn failed(self) -> String {
        assert_eq!(
            self.code, 1,
            "stdout: {} stderr: {}",
            self.stdout, self.stderr
        );
        self.stderr
    }
}

/// Runs `palaver ARGS` on data directory `dir` with nothing else in its environment.
async fn palaver(dir: &Path, args: &[&str], stdin: Option<&str>) -> Ran {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PALAVER_DATA_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn palaver");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("palaver finishes")
        .expect("palaver runs");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

async fn users(dir: &Path) -> Vec<Value> {
    let listed = palaver(dir, &["user", "list", "--json"], None).await.ok();
    serde_json::from_str::<Value>(&listed)
        .unwrap_or_else(|e| panic!("{e}: {listed}"))
        .as_array()
        .unwrap()
        .clone()
}

async fn login(server: &common::TestServer, email: &str, password: &str) -> (u16, Value) {
    server
        .post(
            "/api/auth/login",
            None,
            json!({ "email": email, "password": password }),
        )
        .await
}

/// A copy of the database of `dir` in a new directory: a stopped in-process server's last
/// database handle may outlive its stop in a socket task (as in tests/flood.rs).
fn copy_of(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join(DB_FILE), copy.path().join(DB_FILE)).unwrap();
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_work_on_a_stopped_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let missing = palaver(dir, &["user", "list"], None).await.failed();
    assert!(missing.contains("no database in"), "{missing}");

    let added = palaver(
        dir,
        &[
            "user",
            "add",
            "--name",
            "Ann",
            "--email",
            "Ann@Example.com",
            "--password-stdin",
        ],
        Some("password123\n"),
    )
    .await
    .ok();
    assert!(added.contains("added ann@example.com"), "{added}");
    let again = palaver(
        dir,
        &[
            "user",
            "add",
            "--name",
            "Ann",
            "--email",
            "ann@example.com",
            "--password",
            "password123",
        ],
        None,
    )
    .await
    .failed();
    assert!(again.contains("Email already registered"), "{again}");
    let short = palaver(
        dir,
        &[
            "user",
            "add",
            "--name",
            "Bo",
            "--email",
            "bo@example.com",
            "--password",
            "short",
        ],
        None,
    )
    .await
    .failed();
    assert!(short.contains("Password must be"), "{short}");
    let no_password = palaver(
        dir,
        &["user", "add", "--name", "Bo", "--email", "bo@example.com"],
        None,
    )
    .await;
    assert_eq!(
        no_password.code, 2,
        "clap refuses a missing password: {}",
        no_password.stderr
    );

    let token = palaver(dir, &["token", "ann@example.com", "--ttl", "1h"], None)
        .await
        .ok()
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let unknown = palaver(dir, &["token", "nobody@example.com"], None)
        .await
        .failed();
    assert!(unknown.contains("no user with email"), "{unknown}");

    palaver(dir, &["user", "disable", "ann@example.com"], None)
        .await
        .ok();
    let refused = palaver(dir, &["token", "ann@example.com"], None)
        .await
        .failed();
    assert!(refused.contains("disabled"), "{refused}");
    let listed = users(dir).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["email"], "ann@example.com");
    assert_eq!(listed[0]["signIn"], "password");
    assert_eq!(listed[0]["disabled"], true);
    assert!(listed[0].get("passwordHash").is_none());
    let table = palaver(dir, &["user", "list"], None).await.ok();
    assert!(
        table.contains("ann@example.com") && table.contains("disabled since"),
        "{table}"
    );

    // A server on that database: the account is disabled, the token issued before refused.
    let copy = copy_of(dir);
    let server = start_in(relaxed_config(), copy).await;
    let (status, body) = login(&server, "ann@example.com", "password123").await;
    assert_eq!(
        (status, &body["message"]),
        (403, &json!("Account disabled"))
    );
    assert_eq!(server.get("/api/auth/me", Some(&token)).await.0, 401);
    server.stop().await;

    palaver(dir, &["user", "enable", "ann@example.com"], None)
        .await
        .ok();
    palaver(
        dir,
        &[
            "user",
            "set-password",
            "ann@example.com",
            "--password-stdin",
        ],
        Some("another-password\n"),
    )
    .await
    .ok();
    assert_eq!(users(dir).await[0]["disabled"], false);
    let fresh = palaver(dir, &["token", "ann@example.com"], None).await.ok();

    let server = start_in(relaxed_config(), copy_of(dir)).await;
    assert_eq!(
        login(&server, "ann@example.com", "password123").await.0,
        401
    );
    assert_eq!(
        login(&server, "ann@example.com", "another-password")
            .await
            .0,
        200
    );
    assert_eq!(
        server.get("/api/auth/me", Some(&token)).await.0,
        401,
        "tokens from before stay dead"
    );
    let (status, me) = server.get("/api/auth/me", Some(fresh.trim())).await;
    assert_eq!((status, &me["email"]), (200, &json!("ann@example.com")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_reach_a_running_server_through_its_admin_socket() {
    let server = start(relaxed_config()).await;
    let dir = server.dir.path().to_owned();
    let socket = dir.join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the server's user may connect");

    let (bob_token, _) = server.register("bob").await;
    let mut tab = server.connect(&bob_token).await;
    palaver(&dir, &["user", "disable", "bob@example.com"], None)
        .await
        .ok();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), async {
            while tab.events.recv().await.is_some() {}
        })
        .await
        .is_ok(),
        "the disabled user's socket is closed at once"
    );
    let (status, body) = server.get("/api/auth/me", Some(&bob_token)).await;
    assert_eq!((status, &body["message"]), (401, &json!("Unauthorized")));
    assert_eq!(server.connect_refused(&bob_token).await, "Unauthorized");
    let (status, body) = login(&server, "bob@example.com", "password123").await;
    assert_eq!(
        (status, &body["message"]),
        (403, &json!("Account disabled"))
    );

    palaver(&dir, &["user", "enable", "bob@example.com"], None)
        .await
        .ok();
    let (status, body) = login(&server, "bob@example.com", "password123").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get("/api/auth/me", Some(&bob_token)).await.0, 401);
    let fresh = body["token"].as_str().unwrap();
    drop(server.connect(fresh).await);

    palaver(
        &dir,
        &[
            "user",
            "add",
            "--name",
            "Cy",
            "--email",
            "cy@example.com",
            "--password",
            "password123",
        ],
        None,
    )
    .await
    .ok();
    assert_eq!(login(&server, "cy@example.com", "password123").await.0, 200);
    let token = palaver(&dir, &["token", "cy@example.com"], None).await.ok();
    let (status, me) = server.get("/api/auth/me", Some(token.trim())).await;
    assert_eq!((status, &me["name"]), (200, &json!("Cy")));
    let listed = users(&dir).await;
    let emails: Vec<&str> = listed
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails.len(), 2);
    assert!(emails.contains(&"bob@example.com") && emails.contains(&"cy@example.com"));
    assert!(listed.iter().all(|u| u["disabled"] == false));

    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("palaver.backup");
    let file = file.to_str().unwrap();
    let done = palaver(&dir, &["backup", file], None).await.ok();
    assert!(done.contains("backup written to"), "{done}");
    let in_use = palaver(&dir, &["restore", file, "--force"], None)
        .await
        .failed();
    assert!(in_use.contains("in use"), "{in_use}");
    let restored_dir = tempfile::tempdir().unwrap();
    palaver(restored_dir.path(), &["restore", file], None)
        .await
        .ok();
    let again = palaver(restored_dir.path(), &["restore", file], None)
        .await
        .failed();
    assert!(again.contains("--force"), "{again}");
    palaver(restored_dir.path(), &["restore", file, "--force"], None)
        .await
        .ok();
    assert_eq!(
        users(restored_dir.path()).await.len(),
        2,
        "the restored copy holds both accounts"
    );

    server.stop().await;
    assert!(!socket.exists(), "a clean stop removes the admin socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_admin_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // What a killed server leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("admin.sock")).unwrap());
    let server = start_in(relaxed_config(), dir).await;
    let dir = server.dir.path().to_owned();
    let listed = users(&dir).await;
    assert!(listed.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_registration_refuses_the_route_but_not_the_operator() {
    let server = start(Config {
        registration_open: false,
        ..relaxed_config()
    })
    .await;
    let (status, body) = server.get("/health", None).await;
    assert_eq!((status, &body["registration"]), (200, &json!("closed")));
    let (status, body) = server
        .post(
            "/api/auth/register",
            None,
            json!({ "name": "Eve", "email": "eve@example.com", "password": "password123" }),
        )
        .await;
    assert_eq!(
        (status, body),
        (403, json!({ "message": "Registration is closed" }))
    );
    palaver(
        server.dir.path(),
        &[
            "user",
            "add",
            "--name",
            "Eve",
            "--email",
            "eve@example.com",
            "--password",
            "password123",
        ],
        None,
    )
    .await
    .ok();
    assert_eq!(
        login(&server, "eve@example.com", "password123").await.0,
        200
    );
    server.stop().await;

    let open = start(relaxed_config()).await;
    let (_, body) = open.get("/health", None).await;
    assert_eq!(body["registration"], "open");
    open.stop().await;
}

#[tokio::test]
async fn every_command_has_complete_help() {
    let dir = tempfile::tempdir().unwrap();
    let top = palaver(dir.path(), &["--help"], None).await.ok();
    for command in ["serve", "user", "token", "backup", "restore"] {
        assert!(
            top.contains(command),
            "palaver --help names {command}: {top}"
        );
    }
    let commands: &[(&[&str], &[&str])] = &[
        (&["serve"], &["--data-dir", "--registration"]),
        (
            &["user"],
            &["add", "list", "set-password", "disable", "enable"],
        ),
        (
            &["user", "add"],
            &[
                "--name",
                "--email",
                "--password-stdin",
                "--data-dir",
                "--config",
            ],
        ),
        (&["user", "list"], &["--json", "--data-dir"]),
        (&["user", "set-password"], &["<EMAIL>", "--password-stdin"]),
        (&["user", "disable"], &["<EMAIL>", "--data-dir"]),
        (&["user", "enable"], &["<EMAIL>", "--data-dir"]),
        (&["token"], &["<EMAIL>", "--ttl", "--jwt-secret-file"]),
        (&["backup"], &["<FILE>", "--data-dir"]),
        (&["restore"], &["<FILE>", "--force", "--data-dir"]),
    ];
    for (command, words) in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let help = palaver(dir.path(), &args, None).await.ok();
        for word in *words {
            assert!(
                help.contains(word),
                "palaver {} --help names {word}: {help}",
                command.join(" ")
            );
        }
    }
}

const PROVIDER_EC: &[u8] = include_bytes!("../fuzz/keys/provider_ec.pem");
const PROVIDER_EC_PUB: &[u8] = include_bytes!("../fuzz/keys/provider_ec.pub.pem");
const AUDIENCE: &str = "palaver-tests";

/// A provider token for `sub`, issued `issued_in_secs` from now.
fn provider_token(sub: &str, issued_in_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": sub, "aud": AUDIENCE, "exp": now + 600, "iat": now + issued_in_secs,
        "email": format!("{sub}@example.com"), "name": sub,
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(PROVIDER_EC).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_provider_user_is_refused_even_with_a_token_issued_after() {
    let keys = tempfile::tempdir().unwrap();
    let pem = keys.path().join("provider.pem");
    std::fs::write(&pem, PROVIDER_EC_PUB).unwrap();
    let server = start(Config {
        external_auth: Some(palaver::config::ExternalAuth {
            keys: vec![palaver::config::KeySource::PemFile(pem)],
            issuer: None,
            audience: Some(AUDIENCE.into()),
        }),
        ..relaxed_config()
    })
    .await;
    let (status, user) = server
        .post(
            "/api/auth/callback",
            Some(&provider_token("victor", 0)),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    let dir = server.dir.path().to_owned();
    let listed = users(&dir).await;
    assert_eq!(listed[0]["signIn"], "external");
    let refused = palaver(
        &dir,
        &[
            "user",
            "set-password",
            "victor@example.com",
            "--password",
            "password123",
        ],
        None,
    )
    .await
    .failed();
    assert!(refused.contains("external identity provider"), "{refused}");

    palaver(&dir, &["user", "disable", "victor@example.com"], None)
        .await
        .ok();
    // Issued after the revocation the disable made: only the disabled flag refuses it.
    let later = provider_token("victor", 5);
    assert_eq!(server.get("/api/auth/me", Some(&later)).await.0, 401);
    assert_eq!(server.connect_refused(&later).await, "Unauthorized");
    let (status, body) = server
        .post("/api/auth/callback", Some(&later), json!({}))
        .await;
    assert_eq!(
        (status, &body["message"]),
        (403, &json!("Account disabled"))
    );

    palaver(&dir, &["user", "enable", "victor@example.com"], None)
        .await
        .ok();
    assert_eq!(server.get("/api/auth/me", Some(&later)).await.0, 200);
    server.stop().await;
}
