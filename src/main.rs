//! The `portcullis` command: run the gateway, check a config, and the operator tools (`token`,
//! `keys generate`, `hash-password`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: hyper allocates a fresh 8 KiB read buffer per message on
/// both the client and the upstream connection, and glibc serves those through its slow bins.
/// Measured with callgrind under load (docs/PERFORMANCE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portcullis: an authentication gateway in front of backends that know nothing about tokens.
///
/// It verifies access tokens (cookie or Bearer), checks the session, enforces per-route
/// permissions from gateway.yaml and forwards requests with verified identity headers.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve requests as gateway.yaml says. Stops gracefully on SIGTERM or Ctrl-C.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a configuration file: exit 0 if it would load, else print what is wrong and exit 1.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Mint an access token with a private key, for trying routes out (prints it to stdout).
    ///
    /// A development tool: anyone holding the private key can do the same, which is why real
    /// signing keys belong to the issuer alone.
    Token(TokenArgs),
    /// Manage the gateway's own signing keys (`auth.signing_keys`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Inspect and end sessions through the admin API of a running gateway.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Ask a running gateway to reload its config now (like SIGHUP, but reports the outcome).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hash a password for the users file: prints an argon2id PHC string to stdout.
    ///
    /// Asks for the password twice on the terminal, without echo. With --stdin, reads one line
    /// from standard input instead (its trailing newline is removed; other whitespace is kept),
    /// for scripts. An empty password, or one over 1024 bytes, is refused. The hash uses
    /// OWASP's argon2id parameters (m=19456 KiB, t=2, p=1) and a random salt; paste it into
    /// the `password_hash` field of the users file.
    HashPassword {
        /// Read the password from one line of standard input instead of the terminal.
        #[arg(long)]
        stdin: bool,
    },
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Private key PEM (PKCS#8) of a key the gateway verifies with.
    #[arg(long)]
    key: PathBuf,
    /// The key's algorithm: EdDSA, ES256, RS256 or PS256.
    #[arg(long)]
    alg: String,
    /// The key id the gateway knows the public key by.
    #[arg(long)]
    kid: String,
    /// The `iss` claim.
    #[arg(long)]
    iss: String,
    /// The `aud` claim.
    #[arg(long)]
    aud: String,
    /// The `sub` claim.
    #[arg(long)]
    sub: String,
    /// Roles, comma-separated.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// The `sid` claim (required by issuers with sessions).
    #[arg(long)]
    sid: Option<String>,
    /// Lifetime, e.g. 15m.
    #[arg(long, default_value = "15m")]
    ttl: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The gateway's config: the admin address and token file are read from its `admin:` section.
    #[arg(short, long, default_value = "gateway.yaml", global = true)]
    config: PathBuf,
    /// The admin API's base URL, instead of the config's `admin.bind`.
    #[arg(long, global = true)]
    admin_url: Option<String>,
    /// A file holding the admin bearer secret, instead of the config's `admin.token_file`.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List a user's live sessions (JSON).
    List {
        /// The user (canonical username / token subject).
        #[arg(long)]
        user: String,
    },
    /// End one session of a user: its tokens fail on every instance at once.
    Revoke {
        /// The user.
        #[arg(long)]
        user: String,
        /// The session id (from `sessions list`).
        #[arg(long)]
        session: String,
    },
    /// End every session of a user and refuse every token issued to them until now.
    RevokeAll {
        /// The user.
        #[arg(long)]
        user: String,
        /// The issuer (`iss`) whose user this is, for a user of an external identity
        /// provider; omitted: a user of the gateway's own users file.
        #[arg(long)]
        issuer: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generate a signing key pair and print its kid and the line to add to the config
    ///
    /// Writes two files into DIR (created with mode 0700 if missing), named after the key's
    /// kid, its RFC 7638 thumbprint, which every token it signs carries:
    ///
    ///   <kid>.key.pem   the PKCS#8 private key, mode 0600, for `auth.signing_keys`
    ///   <kid>.pub.pem   the public key, for services that only verify
    ///
    /// Existing files are never overwritten. Prints the kid on the first line, then the YAML
    /// entry to append under `auth.signing_keys:`.
    ///
    /// The last listed key signs and every listed key verifies: to rotate, append the new key
    /// and reload; remove the old one once the tokens it signed have expired.
    #[command(verbatim_doc_comment)]
    Generate {
        /// Key algorithm. RS256 and PS256 get a 2048-bit RSA key.
        #[arg(long, value_enum, ignore_case = true, default_value_t = KeyAlg::EdDsa)]
        alg: KeyAlg,
        /// Directory to write the key files into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeyAlg {
    #[value(name = "EdDSA")]
    EdDsa,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "PS256")]
    Ps256,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match portcullis::config::Config::load(&config) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("{}: warning: {w}", config.display());
                }
                let keys = &loaded.runtime.identify.verifier.keys;
                // Remote key sets are not fetched by `check`: it reads files only.
                let remote = match keys.remote().len() {
                    0 => String::new(),
                    n => format!(", {n} remote key sets, not fetched"),
                };
                println!(
                    "{}: ok ({} listeners, {} routes, {} keys{remote})",
                    config.display(),
                    loaded.listeners.len(),
                    loaded.runtime.router.len(),
                    keys.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Token(args) => match mint(&args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis token: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::HashPassword { stdin } => match hash_password(stdin) {
            Ok(phc) => {
                println!("{phc}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis hash-password: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Keys {
            command: KeysCommand::Generate { alg, out },
        } => match generate_key(alg, &out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis keys generate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Sessions { command, admin } => {
            let (method, path, body) = match command {
                SessionsCommand::List { user } => (
                    "GET",
                    format!(
                        "/admin/sessions?user={}",
                        portcullis::error::percent_encode(&user)
                    ),
                    None,
                ),
                SessionsCommand::Revoke { user, session } => (
                    "POST",
                    "/admin/sessions/revoke".to_owned(),
                    Some(serde_json::json!({"user": user, "session": session})),
                ),
                SessionsCommand::RevokeAll { user, issuer } => {
                    let mut body = serde_json::json!({"user": user});
                    if let Some(issuer) = issuer {
                        body["issuer"] = issuer.into();
                    }
                    ("POST", "/admin/users/revoke".to_owned(), Some(body))
                }
            };
            admin_call(&admin, method, &path, body)
        }
        Command::Reload { admin } => admin_call(&admin, "POST", "/admin/reload", None),
        Command::Run { config, log_format } => {
            init_logging(log_format);
            match run(config) {
                Ok(Drain::Complete) => ExitCode::SUCCESS,
                Ok(Drain::Cut) => {
                    eprintln!("portcullis: shutdown grace period ended: open requests were cut");
                    ExitCode::from(EXIT_CUT)
                }
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("portcullis: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem =
        std::fs::read(&args.key).with_context(|| format!("reading {}", args.key.display()))?;
    let (alg, key) = match args.alg.as_str() {
        "EdDSA" => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem)),
        "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)),
        "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)),
        "PS256" => (Algorithm::PS256, EncodingKey::from_rsa_pem(&pem)),
        other => anyhow::bail!("algorithm `{other}` is not one of EdDSA, ES256, RS256, PS256"),
    };
    let key =
        key.with_context(|| format!("{} is not a {} private key", args.key.display(), args.alg))?;
    let ttl = portcullis::config::units::parse_duration(&args.ttl).map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti)
        .map_err(|_| anyhow::anyhow!("the OS random generator failed"))?;
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let mut claims = serde_json::json!({
        "iss": args.iss, "aud": args.aud, "sub": args.sub, "jti": jti,
        "iat": now, "exp": now + ttl.as_secs(), "roles": args.roles,
    });
    if let Some(sid) = &args.sid {
        claims["sid"] = sid.as_str().into();
    }
    let mut header = Header::new(alg);
    header.kid = Some(args.kid.clone());
    header.typ = Some("at+jwt".into());
    // The gateway accepts ES256 signatures in low-S form only.
    let token = jsonwebtoken::encode(&header, &claims, &key)?;
    Ok(portcullis::keys::ecdsa::low_s_token(alg, token))
}

fn hash_password(from_stdin: bool) -> anyhow::Result<String> {
    use portcullis::users::{MAX_PASSWORD_BYTES, Password};
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        let line = Password::new(line);
        let trimmed = line.expose_secret();
        let trimmed = trimmed.strip_suffix('\n').unwrap_or(trimmed);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        Password::new(trimmed.to_owned())
    } else {
        let first = Password::new(
            rpassword::prompt_password("Password: ")
                .context("reading the password from the terminal (use --stdin without one)")?,
        );
        let second = Password::new(
            rpassword::prompt_password("Repeat password: ")
                .context("reading the password from the terminal")?,
        );
        anyhow::ensure!(
            first.expose_secret() == second.expose_secret(),
            "the passwords do not match"
        );
        first
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    anyhow::ensure!(
        password.len() <= MAX_PASSWORD_BYTES,
        "the password is longer than {MAX_PASSWORD_BYTES} bytes; logins refuse longer ones"
    );
    Ok(portcullis::users::hash_password(password.expose_secret()))
}

/// Writes `<kid>.key.pem` and `<kid>.pub.pem` into `out` and prints the kid and config line.
fn generate_key(alg: KeyAlg, out: &std::path::Path) -> anyhow::Result<()> {
    use jsonwebtoken::Algorithm;
    use portcullis::keys::signing::SigningKey;

    let alg = match alg {
        KeyAlg::EdDsa => Algorithm::EdDSA,
        KeyAlg::Es256 => Algorithm::ES256,
        KeyAlg::Rs256 => Algorithm::RS256,
        KeyAlg::Ps256 => Algorithm::PS256,
    };
    let (key, private_pem) = SigningKey::generate(alg)?;
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(out)
        .with_context(|| format!("creating {}", out.display()))?;
    // An absolute path: the config resolves relative paths against its own directory, which
    // need not be the current one.
    let out = out
        .canonicalize()
        .with_context(|| format!("resolving {}", out.display()))?;
    let private_path = out.join(format!("{}.key.pem", key.kid()));
    let public_path = out.join(format!("{}.pub.pem", key.kid()));
    write_new(&private_path, private_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public_path, key.public_key_pem().as_bytes(), 0o644) {
        // Leave nothing half-done behind.
        let _ = std::fs::remove_file(&private_path);
        return Err(e);
    }
    println!("{}", key.kid());
    println!("# under auth.signing_keys: (the last listed key signs)");
    println!(
        "- {{ alg: {}, pem: {} }}",
        portcullis::keys::algorithm_name(alg),
        yaml_plain_or_quoted(&private_path.to_string_lossy())
    );
    Ok(())
}

/// Creates `path` (never replacing an existing file) with `mode` on Unix, and writes `bytes`.
fn write_new(path: &std::path::Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// `s` as a YAML flow scalar: bare when that is unambiguous, else single-quoted.
fn yaml_plain_or_quoted(s: &str) -> String {
    let plain = s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '/' || c == '.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The exit code of `portcullis run` when the shutdown grace period ended with requests still
/// in flight (they were cut). 1 is a failure to start or serve, 2 a command-line error (clap).
const EXIT_CUT: u8 = 3;

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Every connection finished within `limits.shutdown_grace`.
    Complete,
    /// The grace period ended first; what was still open was cut.
    Cut,
}

#[tokio::main]
async fn run(path: PathBuf) -> anyhow::Result<Drain> {
    let config = portcullis::config::Config::load(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    let running = portcullis::start_from(config, Some(path))
        .await
        .context("starting")?;
    for addr in running.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    // SIGHUP reloads gateway.yaml (and what it names); an invalid file keeps the old config.
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let gateway = std::sync::Arc::clone(running.gateway());
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = portcullis::reload::reload_file(&gateway, "sighup").await;
            }
        });
    }
    // SIGUSR1 reopens the audit file (log rotation: `mv` it, then signal).
    #[cfg(unix)]
    if let Ok(mut usr1) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
    {
        let gateway = std::sync::Arc::clone(running.gateway());
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                tracing::info!("SIGUSR1: reopening the audit file");
                gateway.audit().reopen();
            }
        });
    }
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    if running.shutdown().await {
        tracing::info!("drained");
        Ok(Drain::Complete)
    } else {
        // `shutdown` logged how many connections were still open.
        tracing::error!(
            exit_code = EXIT_CUT,
            "grace period ended with requests still in flight: they were cut"
        );
        Ok(Drain::Cut)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Calls the admin API of a running gateway and prints its JSON answer.
fn admin_call(
    args: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> ExitCode {
    match admin_request(args, method, path, body) {
        Ok((status, text)) => {
            println!("{text}");
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("portcullis: the gateway answered {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn admin_request(
    args: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(http::StatusCode, String)> {
    use http_body_util::BodyExt as _;

    let (base, token_file) = match (&args.admin_url, &args.token_file) {
        (Some(url), Some(file)) => (url.trim_end_matches('/').to_owned(), file.clone()),
        _ => {
            let raw = std::fs::read_to_string(&args.config)
                .with_context(|| format!("reading {}", args.config.display()))?;
            let value: serde_yaml::Value = serde_yaml::from_str(&raw).with_context(|| {
                format!(
                    "parsing {} for its admin address (pass --admin-url and --token-file to \
                     reach the gateway without it)",
                    args.config.display()
                )
            })?;
            let admin = value
                .get("admin")
                .with_context(|| format!("{} has no `admin:` section", args.config.display()))?;
            let bind = admin
                .get("bind")
                .and_then(|b| b.as_str())
                .context("admin.bind is missing")?;
            let bind = bind.replacen("0.0.0.0", "127.0.0.1", 1);
            let base_dir = args.config.parent().unwrap_or(std::path::Path::new("."));
            let file = match &args.token_file {
                Some(f) => f.clone(),
                None => base_dir.join(
                    admin
                        .get("token_file")
                        .and_then(|f| f.as_str())
                        .context("admin.token_file is missing: the admin API is off")?,
                ),
            };
            let url = args.admin_url.clone().unwrap_or(format!("http://{bind}"));
            (url.trim_end_matches('/').to_owned(), file)
        }
    };
    let secret = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {}", secret.trim()));
    let payload = match body {
        Some(v) => {
            request = request.header("content-type", "application/json");
            bytes::Bytes::from(v.to_string())
        }
        None => bytes::Bytes::new(),
    };
    let request = request
        .body(http_body_util::Full::new(payload))
        .context("building the request")?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
            .await
            .context("the gateway did not answer within 30s")?
            .with_context(|| format!("calling {base}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
