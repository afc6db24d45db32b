//! The `portcullis` command: run the gateway, or check a config.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match portcullis::config::Config::load(&config) {
            Ok(loaded) => {
                println!(
                    "{}: ok ({} listeners, {} routes, {} keys)",
                    config.display(),
                    loaded.listeners.len(),
                    loaded.runtime.router.len(),
                    loaded.runtime.verifier.keys.len()
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
        Command::Run { config, log_format } => {
            init_logging(log_format);
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
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
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
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

#[tokio::main]
async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = portcullis::config::Config::load(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    let running = portcullis::start(config)
        .await
        .context("binding listeners")?;
    for addr in running.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    if running.shutdown().await {
        tracing::info!("drained");
    } else {
        tracing::warn!("grace period ended with requests still in flight");
    }
    Ok(())
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
