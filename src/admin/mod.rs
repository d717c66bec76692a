//! The operator's commands: `palaver user …`, `token`, `backup`, `restore`.
//!
//! Each finds the data directory exactly as `serve` does (the same flags, environment and
//! `--config` file, resolved by `Config::resolve`). A command first puts its request to a
//! running server through the admin socket in the data directory (`socket`); when no server
//! answers there, it opens the database itself and carries out the same request with the same
//! code (`protocol::execute`), so both paths give the same results. redb lets one process hold
//! a database, so a database held by a process that does not answer on the socket (a server
//! still starting, or stopping) is reported as such rather than waited for.

pub mod protocol;
pub mod socket;
mod transfer;

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::config::{Config, ServeArgs, parse_duration};
use crate::limits::{ADMIN_USERS_PAGE_MAX, PASSWORD_CHARS_MAX};
use crate::server::{Server, StartError};
use crate::storage::{DB_FILE, backup};
use protocol::{Request, execute};
use socket::CallError;

/// Heading of the settings every command shares with `serve`.
const SETTINGS: &str = "Settings (read like `palaver serve` reads them; the data directory and token secret matter here)";

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Manage accounts: add, list, set a password, disable, enable.
    #[command(subcommand)]
    User(UserCommand),
    /// Print a token for a user (for bots and scripts), signed with the server's secret like a
    /// login's.
    Token(TokenArgs),
    /// Write a consistent copy of the database to FILE, while the server runs (through its admin
    /// socket) or not.
    Backup(BackupArgs),
    /// Put a backup in place as the database of the data directory. Refuses a database a running
    /// server holds, and one with accounts or chats unless --force.
    Restore(RestoreArgs),
    /// Write every user, chat, member and message as JSON Lines (a `version` line first), to
    /// standard output or --out. With a running server, it exports a backup taken through the
    /// admin socket.
    Export(ExportArgs),
    /// Load an export into a data directory with no accounts or chats yet, ids and seqs included.
    Import(ImportArgs),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account (with the same checks and password hashing as registration; works
    /// whether registration is open or closed).
    Add(UserAddArgs),
    /// List every account: id, email, name, how it signs in, when it was created, whether it is
    /// disabled.
    List(UserListArgs),
    /// Give an account a new password; every token issued before is refused and its sockets are
    /// closed.
    SetPassword(SetPasswordArgs),
    /// Disable an account at once: its sockets are closed, its tokens and logins refused; its
    /// messages stay.
    Disable(EmailArgs),
    /// Enable a disabled account: it can log in again (tokens issued before stay refused).
    Enable(EmailArgs),
}

/// A new password: on the command line or on standard input.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PasswordArgs {
    /// The password. It shows in `ps` and the shell's history: prefer --password-stdin.
    #[arg(long)]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// Display name (1 to 64 characters).
    #[arg(long)]
    name: String,
    /// Email address, the account's login (stored lower-case).
    #[arg(long)]
    email: String,
    #[command(flatten)]
    password: PasswordArgs,
    #[command(flatten, next_help_heading = SETTINGS)]
    settings: ServeArgs,
}

#[derive(Debug, Args)]
pub struct UserListArgs {
    /// A JSON array of the accounts instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten, next_help_heading = SETTINGS)]
    settings: ServeArgs,
}

#[derive(Debug, Args)]
pub struct SetPasswordArgs {
    /// The account's email.
    email: String,
    #[command(flatten)]
    password: PasswordArgs,
    #[command(flatten, next_help_heading = SETTINGS)]
    settings: ServeArgs,
}

#[derive(Debug, Args)]
pub struct EmailArgs {
    /// The account's email.
    email: String,
    #[command(flatten, next_help_heading = SETTINGS)]
    settings: ServeArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The account's email.
    email: String,
    /// The token's lifetime: seconds, or a number with s, m, h or d (default: the configured
    /// token lifetime, `--token-ttl`).
    #[arg(long)]
    ttl: Option<String>,
    #[command(flatten, next_help_heading = SETTINGS)]
    settings: ServeArgs,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the backup (a redb file). Written beside it as FILE.partial, then renamed
    /// into place. With a running server, the server's process writes it.
    file: PathBuf,
    #[command(flatten, next_help_heading = SETTINGS)]
    settings: ServeArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file written by `palaver backup`.
    file: PathBuf,
    /// Replace a database that has accounts or chats.
    #[arg(long)]
    force: bool,
    #[command(flatten, next_help_heading = SETTINGS)]
    settings: ServeArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to this file (created 0600) instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Include password hashes and the token secret (then the import's users keep their
    /// passwords and tokens). Without it, imported users need `user set-password`.
    #[arg(long)]
    include_secrets: bool,
    #[command(flatten, next_help_heading = SETTINGS)]
    settings: ServeArgs,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A file written by `palaver export` (`-`: standard input).
    file: PathBuf,
    #[command(flatten, next_help_heading = SETTINGS)]
    settings: ServeArgs,
}

/// Why a command failed: its settings (exit status 2, like `serve`) or the command itself (1).
enum Failure {
    Settings(String),
    Command(String),
}

/// Runs an operator's command; its output goes to standard output, errors to standard error.
pub fn run(command: AdminCommand) -> ExitCode {
    let rust_log = std::env::var("RUST_LOG").ok();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(crate::logs::filter(Some(
            rust_log
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or("warn"),
        )))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("palaver: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Settings(message)) => {
            eprintln!("palaver: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Command(message)) => {
            eprintln!("palaver: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: AdminCommand) -> Result<(), Failure> {
    match command {
        AdminCommand::User(UserCommand::Add(args)) => {
            let config = resolve(args.settings)?;
            let request = Request::UserAdd {
                name: args.name,
                email: args.email,
                password: args.password.read()?,
            };
            let user = perform(&config, request, Database::MayCreate).await?;
            println!("added {} (id {})", text(&user["email"]), text(&user["id"]));
        }
        AdminCommand::User(UserCommand::List(args)) => {
            let config = resolve(args.settings)?;
            list_users(&config, args.json).await?;
        }
        AdminCommand::User(UserCommand::SetPassword(args)) => {
            let config = resolve(args.settings)?;
            let request = Request::UserSetPassword {
                email: args.email,
                password: args.password.read()?,
            };
            let user = perform(&config, request, Database::MustExist).await?;
            println!(
                "new password set for {}; tokens issued before are refused",
                text(&user["email"])
            );
        }
        AdminCommand::User(UserCommand::Disable(args)) => {
            let config = resolve(args.settings)?;
            let request = Request::UserDisable { email: args.email };
            let user = perform(&config, request, Database::MustExist).await?;
            println!(
                "disabled {}: sockets closed, tokens and logins refused",
                text(&user["email"])
            );
        }
        AdminCommand::User(UserCommand::Enable(args)) => {
            let config = resolve(args.settings)?;
            let request = Request::UserEnable { email: args.email };
            let user = perform(&config, request, Database::MustExist).await?;
            println!(
                "enabled {}: logins work again (tokens issued before stay refused)",
                text(&user["email"])
            );
        }
        AdminCommand::Token(args) => {
            let config = resolve(args.settings)?;
            let ttl_secs = match args.ttl {
                Some(ttl) => Some(
                    parse_duration(&ttl)
                        .map_err(|reason| Failure::Settings(format!("--ttl: {reason}")))?
                        .as_secs(),
                ),
                None => None,
            };
            let request = Request::Token {
                email: args.email,
                ttl_secs,
            };
            let token = perform(&config, request, Database::MustExist).await?;
            println!("{}", text(&token["token"]));
        }
        AdminCommand::Backup(args) => {
            let config = resolve(args.settings)?;
            let path = std::path::absolute(&args.file)
                .map_err(|e| Failure::Command(format!("{}: {e}", args.file.display())))?;
            let request = Request::Backup { path: path.clone() };
            let done = perform(&config, request, Database::MustExist).await?;
            println!(
                "backup written to {}: {} bytes, {} rows, {:.1} s",
                path.display(),
                done["bytes"],
                done["rows"],
                done["seconds"].as_f64().unwrap_or_default()
            );
        }
        AdminCommand::Export(args) => {
            let config = resolve(args.settings)?;
            let summary = transfer::export(&config, args.out.as_deref(), args.include_secrets)
                .await
                .map_err(Failure::Command)?;
            eprintln!(
                "exported {} users, {} chats, {} messages",
                summary.users, summary.chats, summary.messages
            );
        }
        AdminCommand::Import(args) => {
            let config = resolve(args.settings)?;
            let summary = transfer::import(&config, &args.file).map_err(Failure::Command)?;
            println!(
                "imported {} users, {} chats, {} messages into {}",
                summary.users,
                summary.chats,
                summary.messages,
                config.data_dir.display()
            );
        }
        AdminCommand::Restore(args) => {
            let config = resolve(args.settings)?;
            let restored = backup::restore(&args.file, &config.data_dir, args.force)
                .map_err(|e| Failure::Command(e.to_string()))?;
            println!(
                "restored {} into {} ({} bytes{})",
                args.file.display(),
                config.data_dir.display(),
                restored.bytes,
                if restored.replaced {
                    ", replacing the database that was there"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

fn resolve(settings: ServeArgs) -> Result<Config, Failure> {
    Config::resolve(settings).map_err(|e| Failure::Settings(e.to_string()))
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

impl PasswordArgs {
    fn read(self) -> Result<String, Failure> {
        if let Some(password) = self.password {
            return Ok(password);
        }
        // A password's characters take at most 4 bytes each; one more than that is "too long",
        // which the validation then says.
        let bound = (PASSWORD_CHARS_MAX * 4 + 2) as u64;
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(bound)
            .read_line(&mut line)
            .map_err(|e| {
                Failure::Command(format!("cannot read the password from standard input: {e}"))
            })?;
        let password = line.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(Failure::Command(
                "--password-stdin: standard input held no password".into(),
            ));
        }
        Ok(password.to_owned())
    }
}

/// Whether a command may create the data directory's database (adding the first account
/// before the first start) or needs one to be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Database {
    MayCreate,
    MustExist,
}

/// Puts `request` to the running server, or carries it out on the data directory when no
/// server answers on its admin socket.
async fn perform(config: &Config, request: Request, database: Database) -> Result<Value, Failure> {
    let socket = socket::path(&config.data_dir);
    match socket::call(&socket, &request).await {
        Ok(reply) => return Result::from(reply).map_err(Failure::Command),
        Err(CallError::Failed(message)) => return Err(Failure::Command(message)),
        Err(CallError::NoServer) => {}
    }
    if database == Database::MustExist && !config.data_dir.join(DB_FILE).exists() {
        return Err(Failure::Command(format!(
            "no database in {} (is the data directory right? --data-dir, PALAVER_DATA_DIR or --config)",
            config.data_dir.display()
        )));
    }
    let service = Server::builder(config.clone())
        .build()
        .await
        .map_err(|error| Failure::Command(explain_start(error, config, &socket)))?;
    let result = execute(&service.app, None, request).await;
    service.close().await;
    result.map_err(Failure::Command)
}

fn explain_start(error: StartError, config: &Config, socket: &std::path::Path) -> String {
    match error {
        StartError::Storage(error) if error.is_in_use() => format!(
            "the database in {} is held by another process, but no server answers on its admin socket {}: \
             a server starting or stopping, or another command running; try again in a moment",
            config.data_dir.display(),
            socket.display()
        ),
        other => format!("cannot open {}: {other}", config.data_dir.display()),
    }
}

/// Every account, page by page, as a table or one JSON array.
async fn list_users(config: &Config, json: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let write_failed = |e: std::io::Error| Failure::Command(format!("cannot write: {e}"));
    if json {
        write!(out, "[").map_err(write_failed)?;
    } else {
        writeln!(
            out,
            "{:<24}  {:<32}  {:<24}  {:<8}  {:<24}  STATUS",
            "ID", "EMAIL", "NAME", "SIGN-IN", "CREATED"
        )
        .map_err(write_failed)?;
    }
    let mut after: Option<String> = None;
    let mut first = true;
    loop {
        let request = Request::UserList {
            after: after.clone(),
            limit: ADMIN_USERS_PAGE_MAX,
        };
        let page = perform(config, request, Database::MustExist).await?;
        let users = page.as_array().cloned().unwrap_or_default();
        for user in &users {
            if json {
                let separator = if first { "\n  " } else { ",\n  " };
                write!(out, "{separator}{user}").map_err(write_failed)?;
            } else {
                let status = if user["disabled"].as_bool() == Some(true) {
                    format!("disabled since {}", text(&user["disabledAt"]))
                } else {
                    "active".to_owned()
                };
                writeln!(
                    out,
                    "{:<24}  {:<32}  {:<24}  {:<8}  {:<24}  {status}",
                    text(&user["id"]),
                    text(&user["email"]),
                    text(&user["name"]),
                    text(&user["signIn"]),
                    text(&user["createdAt"]),
                )
                .map_err(write_failed)?;
            }
            first = false;
        }
        if users.len() < ADMIN_USERS_PAGE_MAX {
            break;
        }
        after = users.last().map(|user| text(&user["id"]).to_owned());
    }
    if json {
        writeln!(out, "{}]", if first { "" } else { "\n" }).map_err(write_failed)?;
    }
    Ok(())
}
