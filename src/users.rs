//! The users file: who may log in, with which password hash and roles.
//!
//! ```yaml
//! users:
//!   - username: alice
//!     display_name: Alice Example          # optional, defaults to the username
//!     password_hash: "$argon2id$v=19$m=19456,t=2,p=1$..."
//!     roles: [reader]                      # optional, defaults to none
//!     disabled: false                      # optional, defaults to false
//! ```
//!
//! Contract:
//! - [`Users::load`] / [`Users::parse`] compile the file once: unknown keys, empty or duplicate
//!   usernames, and any hash that is not an argon2id (v=19) PHC string at least as costly as
//!   OWASP's minimum are errors. Nothing is parsed per login.
//! - [`authenticate`] runs exactly one argon2id verification per attempt, on the blocking
//!   pool, whatever the outcome: an unknown user, a disabled user and an over-long password all
//!   cost the same as a wrong password for a real user (docs/security.md 27: no enumeration by timing).
//!   Its error, [`LoginFailure`], is for the audit trail only; the client must get one answer
//!   for all of them.
//! - [`UsersHandle`] holds the current [`Users`] behind an `ArcSwap`: a reload builds the new
//!   set first and swaps only on success; a login keeps the snapshot it started with.
//!
//! Passwords travel in [`Password`], which never prints and is wiped (best effort) on drop.
//! No error in this module carries a password.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use argon2::password_hash::{self, PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use serde::Deserialize;

/// The longest password [`authenticate`] will hash, in bytes (UTF-8). Longer ones fail as a
/// wrong password, after the same amount of work; `portcullis hash-password` refuses them.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Parameters [`hash_password`] uses: OWASP's first recommendation for argon2id
/// (19 MiB, 2 passes, 1 lane). Also the dummy hash's parameters when the file has no users.
const OWASP_M_COST: u32 = 19_456;
const OWASP_T_COST: u32 = 2;
const OWASP_P_COST: u32 = 1;

/// OWASP's argon2id configurations (Password Storage Cheat Sheet), as (memory KiB, passes).
/// They are considered equally strong; a hash is accepted when its memory and passes are both
/// at least those of one row. (The simpler "m × t ≥ 19456 × 2" would refuse the rows with
/// 12, 9 and 7 MiB, which OWASP lists as equivalent.) Parallelism is not constrained: it
/// splits the same memory into lanes and does not change the total work.
const OWASP_MINIMUMS: &[(u32, u32)] = &[
    (47_104, 1),
    (19_456, 2),
    (12_288, 3),
    (9_216, 4),
    (7_168, 5),
];

/// Salts shorter than this (bytes) are refused; argon2's own minimum.
const MIN_SALT_BYTES: usize = argon2::MIN_SALT_LEN;
/// Hash outputs shorter than this (bytes) are refused.
const MIN_OUTPUT_BYTES: usize = 16;

/// A username as it is compared: surrounding whitespace trimmed, then Unicode-lowercased.
///
/// Usernames are case-insensitive: `Alice`, ` alice ` and `ALICE` are one account, both in the
/// users file (two of them there is an error) and at login, and this is the key login
/// throttling should count on. Unicode normalisation (NFKC) is *not* applied, so visually
/// equal names in different forms (`ａｌｉｃｅ` in full-width letters, a precomposed `é` versus
/// `e` + combining accent) remain different accounts; keep usernames to plain ASCII if that
/// matters to you.
pub fn canonical_username(input: &str) -> String {
    input.trim().to_lowercase()
}

/// A password as typed: never printed (`Debug` is redacted, there is no `Display`) and
/// overwritten with zeros when dropped.
///
/// The wipe is best effort: copies made before the value was wrapped (request buffers, form
/// decoding) are out of its reach.
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: String) -> Self {
        Self(password)
    }

    /// The password itself, for hashing.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Password {
    fn from(password: String) -> Self {
        Self::new(password)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        // No unsafe and no zeroize dependency: take the bytes out, overwrite them, and pass
        // them through `black_box` so the writes are not optimised away as dead stores.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

/// One account of the users file.
pub struct User {
    /// The canonical username (see [`canonical_username`]): the account's identity, used as
    /// the token subject.
    pub username: String,
    /// The name shown to people.
    pub display_name: String,
    /// Role names, mapped to permissions by `gateway.yaml`.
    pub roles: Vec<String>,
    /// A disabled account cannot log in (its tokens are refused elsewhere: docs/security.md 11).
    pub disabled: bool,
    hash: PasswordHash,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .field("roles", &self.roles)
            .field("disabled", &self.disabled)
            .field("hash", &"<redacted>")
            .finish()
    }
}

/// The accounts of one users file, by canonical username. Immutable once built; a reload
/// builds a new one.
pub struct Users {
    by_name: HashMap<String, User>,
    /// Verified against when the username is unknown, so that an unknown user costs what a
    /// known one does. Random salt, random password (never matches), and the strongest
    /// parameters found in the file.
    dummy: PasswordHash,
    /// SHA-256 of the file's bytes: tells a reload whether anything changed.
    fingerprint: [u8; 32],
    origin: String,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("origin", &self.origin)
            .field("users", &self.by_name.len())
            .finish_non_exhaustive()
    }
}

/// Why a users file was refused. Every variant names the file; per-user ones name the
/// entry's position (`users[0]` is the first) and its username as written.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not the expected shape (unknown key, missing field, wrong type).
    /// The parser's message ends with the line and column when it knows them.
    #[error("{origin}: {source}")]
    Syntax {
        /// The file.
        origin: String,
        /// 1-based line of the problem, when the parser knows it.
        line: Option<usize>,
        /// The parser's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A username holds `#`, which names users of other issuers (`<iss>#<sub>`).
    #[error(
        "{origin}: users[{index}]: a username may not contain `#` (it names users of other issuers)"
    )]
    HashInUsername {
        /// Where the file came from.
        origin: String,
        /// The entry's position.
        index: usize,
    },
    /// A username is empty or only whitespace.
    #[error("{origin}: users[{index}]: the username is empty")]
    EmptyUsername {
        /// The file.
        origin: String,
        /// Position of the entry.
        index: usize,
    },
    /// Two entries have the same username once canonicalised (case and surrounding
    /// whitespace ignored).
    #[error(
        "{origin}: users[{index}] `{username}` is the same user as users[{first_index}] (usernames are compared case-insensitively)"
    )]
    DuplicateUsername {
        /// The file.
        origin: String,
        /// Position of the second entry.
        index: usize,
        /// Its username as written.
        username: String,
        /// Position of the first entry with that name.
        first_index: usize,
    },
    /// A role name is empty.
    #[error("{origin}: users[{index}] `{username}`: a role name is empty")]
    EmptyRole {
        /// The file.
        origin: String,
        /// Position of the entry.
        index: usize,
        /// Its username as written.
        username: String,
    },
    /// The password hash is not an acceptable argon2id PHC string.
    #[error("{origin}: users[{index}] `{username}`: password_hash {problem}")]
    BadHash {
        /// The file.
        origin: String,
        /// Position of the entry.
        index: usize,
        /// Its username as written.
        username: String,
        /// What is wrong with it.
        problem: HashProblem,
    },
    /// The OS random generator failed while making the dummy hash.
    #[error("{origin}: cannot prepare password verification: {source}")]
    Hashing {
        /// The file.
        origin: String,
        /// The argon2 error.
        #[source]
        source: password_hash::Error,
    },
}

/// What is wrong with a `password_hash` (part of [`UsersError::BadHash`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashProblem {
    /// Not a PHC string, or its argon2 parameters do not parse.
    Malformed(String),
    /// Another algorithm than argon2id (argon2i and argon2d included).
    NotArgon2id(String),
    /// Not argon2 version 19 (`v=19`), or the version is missing.
    Version,
    /// No salt, or a salt shorter than 8 bytes.
    Salt,
    /// No hash output, or one shorter than 16 bytes.
    Output,
    /// Memory and passes below every OWASP configuration.
    TooWeak {
        /// Memory, KiB.
        m_cost: u32,
        /// Passes.
        t_cost: u32,
    },
}

impl fmt::Display for HashProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "is not a valid PHC string ({why})"),
            Self::NotArgon2id(alg) => write!(f, "uses `{alg}`; only argon2id is accepted"),
            Self::Version => f.write_str("must be argon2 version 19 (`$v=19$`)"),
            Self::Salt => write!(f, "needs a salt of at least {MIN_SALT_BYTES} bytes"),
            Self::Output => write!(f, "needs a hash of at least {MIN_OUTPUT_BYTES} bytes"),
            Self::TooWeak { m_cost, t_cost } => write!(
                f,
                "is too weak (m={m_cost}, t={t_cost}): need at least one of OWASP's argon2id \
                 settings, e.g. m=19456,t=2 or m=12288,t=3 (`portcullis hash-password` uses m=19456,t=2,p=1)"
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    #[serde(default)]
    display_name: Option<String>,
    password_hash: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    disabled: bool,
}

impl Users {
    /// Reads and compiles a users file. Blocking (file I/O and one argon2 hash for the dummy):
    /// from async code, call it on the blocking pool.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        Self::load_with(path, OWASP_MINIMUMS)
    }

    /// Compiles the text of a users file; `origin` names it in errors. Runs one argon2 hash
    /// (the dummy), so it takes as long as one login.
    pub fn parse(text: &str, origin: &str) -> Result<Users, UsersError> {
        Self::parse_with(text, origin, OWASP_MINIMUMS)
    }

    /// The user with this canonical username (see [`canonical_username`]).
    pub fn get(&self, canonical: &str) -> Option<&User> {
        self.by_name.get(canonical)
    }

    /// Every user, disabled ones included, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.by_name.values()
    }

    /// How many users the file has (disabled ones included).
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// SHA-256 of the file's bytes: equal fingerprints mean identical files.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    fn load_with(path: &Path, minimums: &[(u32, u32)]) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_with(&text, &path.display().to_string(), minimums)
    }

    fn parse_with(text: &str, origin: &str, minimums: &[(u32, u32)]) -> Result<Users, UsersError> {
        let raw: RawFile = serde_yaml::from_str(text).map_err(|source| UsersError::Syntax {
            origin: origin.to_owned(),
            line: source.location().map(|l| l.line()),
            source,
        })?;
        let mut by_name: HashMap<String, User> = HashMap::with_capacity(raw.users.len());
        let mut first_index: HashMap<String, usize> = HashMap::with_capacity(raw.users.len());
        for (index, entry) in raw.users.into_iter().enumerate() {
            let username = canonical_username(&entry.username);
            if username.is_empty() {
                return Err(UsersError::EmptyUsername {
                    origin: origin.to_owned(),
                    index,
                });
            }
            if username.contains('#') {
                // Another issuer's users are named `<iss>#<sub>`: a users-file name with a `#`
                // could be one of them in the store.
                return Err(UsersError::HashInUsername {
                    origin: origin.to_owned(),
                    index,
                });
            }
            if let Some(&first) = first_index.get(&username) {
                return Err(UsersError::DuplicateUsername {
                    origin: origin.to_owned(),
                    index,
                    username: entry.username,
                    first_index: first,
                });
            }
            if entry.roles.iter().any(|r| r.trim().is_empty()) {
                return Err(UsersError::EmptyRole {
                    origin: origin.to_owned(),
                    index,
                    username: entry.username,
                });
            }
            let hash = check_hash(&entry.password_hash, minimums).map_err(|problem| {
                UsersError::BadHash {
                    origin: origin.to_owned(),
                    index,
                    username: entry.username.clone(),
                    problem,
                }
            })?;
            let display_name = entry
                .display_name
                .unwrap_or_else(|| entry.username.trim().to_owned());
            first_index.insert(username.clone(), index);
            by_name.insert(
                username.clone(),
                User {
                    username,
                    display_name,
                    roles: entry.roles,
                    disabled: entry.disabled,
                    hash,
                },
            );
        }
        let dummy = make_dummy(by_name.values().map(|u| &u.hash)).map_err(|source| {
            UsersError::Hashing {
                origin: origin.to_owned(),
                source,
            }
        })?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Ok(Users {
            by_name,
            dummy,
            fingerprint,
            origin: origin.to_owned(),
        })
    }

    /// The hash one login attempt is verified against: the user's own when the user exists and
    /// the password is not over-long, else the dummy. Either way exactly one verification runs.
    fn verification_target<'a>(
        &'a self,
        user: Option<&'a User>,
        password_too_long: bool,
    ) -> &'a PasswordHash {
        match user {
            Some(user) if !password_too_long => &user.hash,
            _ => &self.dummy,
        }
    }
}

/// Parses and vets one `password_hash`.
fn check_hash(phc: &str, minimums: &[(u32, u32)]) -> Result<PasswordHash, HashProblem> {
    let hash = PasswordHash::new(phc.trim()).map_err(|e| HashProblem::Malformed(e.to_string()))?;
    if hash.algorithm != argon2::ARGON2ID_IDENT {
        return Err(HashProblem::NotArgon2id(hash.algorithm.to_string()));
    }
    if hash.version != Some(u32::from(Version::V0x13)) {
        return Err(HashProblem::Version);
    }
    let params = Params::try_from(&hash).map_err(|e| HashProblem::Malformed(e.to_string()))?;
    if hash.salt.as_ref().is_none_or(|s| s.len() < MIN_SALT_BYTES) {
        return Err(HashProblem::Salt);
    }
    if hash
        .hash
        .as_ref()
        .is_none_or(|h| h.len() < MIN_OUTPUT_BYTES)
    {
        return Err(HashProblem::Output);
    }
    let (m_cost, t_cost) = (params.m_cost(), params.t_cost());
    if !minimums.iter().any(|&(m, t)| m_cost >= m && t_cost >= t) {
        return Err(HashProblem::TooWeak { m_cost, t_cost });
    }
    Ok(hash)
}

/// A hash of a random password with a random salt and the strongest parameters among
/// `hashes` (by memory × passes), or OWASP's defaults when there are none.
fn make_dummy<'a>(
    hashes: impl Iterator<Item = &'a PasswordHash>,
) -> Result<PasswordHash, password_hash::Error> {
    let strongest = hashes
        .filter_map(|h| Params::try_from(h).ok())
        .max_by_key(|p| {
            (
                u64::from(p.m_cost()) * u64::from(p.t_cost()),
                p.m_cost(),
                p.p_cost(),
                p.output_len(),
            )
        });
    let params = match strongest {
        Some(p) => Params::new(p.m_cost(), p.t_cost(), p.p_cost(), p.output_len())?,
        None => owasp_params(),
    };
    let password =
        password_hash::try_generate_salt().map_err(|_| password_hash::Error::RngFailure)?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params).hash_password(&password)
}

fn owasp_params() -> Params {
    Params::new(OWASP_M_COST, OWASP_T_COST, OWASP_P_COST, None).unwrap_or(Params::DEFAULT)
}

/// Hashes a password for the users file: argon2id v19, OWASP parameters (m=19456 KiB, t=2,
/// p=1), a 16-byte salt from the OS random generator; returns the PHC string.
///
/// # Panics
/// If the OS random generator fails (nothing sensible can be done without it).
pub fn hash_password(password: &str) -> String {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, owasp_params())
        .hash_password(password.as_bytes())
        .expect("the OS random generator failed")
        .to_string()
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Canonical username: the token subject.
    pub username: String,
    /// The name shown to people.
    pub display_name: String,
    /// The user's roles.
    pub roles: Vec<String>,
}

/// Why a login failed — for the audit trail and logs only. The client must receive the same
/// answer for every variant, or it learns which usernames exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginFailure {
    /// No such user (a dummy hash was verified instead, at the same cost).
    #[error("unknown user")]
    UnknownUser,
    /// The password is wrong (or longer than [`MAX_PASSWORD_BYTES`]).
    #[error("wrong password")]
    BadPassword,
    /// The password is right but the account is disabled.
    #[error("account disabled")]
    Disabled,
    /// The verification could not run (the blocking pool is shutting down, or the task
    /// panicked). Fails closed; it is a server fault, not the user's.
    #[error("password verification unavailable")]
    Unavailable,
    /// Every verification slot stayed taken for [`SLOT_WAIT`]: a login flood. Nothing was
    /// verified, so it says nothing about the user or the password.
    #[error("password verification busy")]
    Busy,
}

impl LoginFailure {
    /// A stable reason id for the audit trail.
    pub fn reason_id(&self) -> &'static str {
        match self {
            Self::UnknownUser => "login.unknown_user",
            Self::BadPassword => "login.bad_password",
            Self::Disabled => "login.account_disabled",
            Self::Unavailable => "login.verifier_unavailable",
            Self::Busy => "login.busy",
        }
    }
}

/// Checks a username and password against `users`.
///
/// Runs exactly one argon2id verification, on tokio's blocking pool (it takes ~17 ms of CPU
/// at OWASP parameters and must not stall a reactor thread), in every case: an unknown user
/// is verified against the dummy hash, which has the parameters of the strongest hash in the
/// file; a disabled user's password is verified in full before the login is refused; a
/// password longer than [`MAX_PASSWORD_BYTES`] is cut to that length, verified against the
/// dummy, and refused. So the time taken does not tell whether the user exists, as long as
/// all users share the same parameters (with mixed parameters, an unknown user costs what the
/// strongest one does).
///
/// A disabled account with a wrong password reports [`LoginFailure::BadPassword`];
/// [`LoginFailure::Disabled`] means the password was right.
///
/// At most one verification per core runs at once (each holds the hash's memory, 19 MiB at
/// OWASP parameters, and a core for its duration); the others wait up to [`SLOT_WAIT`] and then
/// fail with [`LoginFailure::Busy`]. Without the bound a login flood would start as many as the
/// blocking pool has threads (512), ~10 GiB of argon2 memory, and starve the proxy's workers.
pub async fn authenticate(
    slots: &LoginSlots,
    users: Arc<Users>,
    username: &str,
    password: Password,
) -> Result<Authenticated, LoginFailure> {
    authenticate_in(&slots.0, SLOT_WAIT, users, username, password).await
}

/// The password-verification slots: how many argon2 verifications may run at once (one per
/// core; see [`authenticate`]). Owned by the users handle, and so by the gateway's runtime,
/// rather than by the process: two gateways in one process (tests, a future multi-tenant
/// build) do not share them. A config reload builds a new handle with new slots; logins that
/// already hold or wait for a slot of the old one finish there.
#[derive(Debug, Clone)]
pub struct LoginSlots(Arc<tokio::sync::Semaphore>);

impl LoginSlots {
    /// One slot per core the process may use.
    pub fn per_core() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self(Arc::new(tokio::sync::Semaphore::new(cores)))
    }
}

/// How long a login waits for a verification slot before it is refused as busy.
pub const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn authenticate_in(
    slots: &Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
    users: Arc<Users>,
    username: &str,
    password: Password,
) -> Result<Authenticated, LoginFailure> {
    let canonical = canonical_username(username);
    let slot = match tokio::time::timeout(wait, Arc::clone(slots).acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        Ok(Err(_closed)) => return Err(LoginFailure::Unavailable),
        Err(_elapsed) => return Err(LoginFailure::Busy),
    };
    tokio::task::spawn_blocking(move || {
        // Held until the verification itself ends, even if the request is dropped meanwhile.
        let _slot = slot;
        verify_blocking(&users, &canonical, &password)
    })
    .await
    .unwrap_or(Err(LoginFailure::Unavailable))
}

fn verify_blocking(
    users: &Users,
    canonical: &str,
    password: &Password,
) -> Result<Authenticated, LoginFailure> {
    let user = users.get(canonical);
    let bytes = password.expose_secret().as_bytes();
    let too_long = bytes.len() > MAX_PASSWORD_BYTES;
    let input = &bytes[..bytes.len().min(MAX_PASSWORD_BYTES)];
    let target = users.verification_target(user, too_long);
    let matched = match Argon2::default().verify_password(input, target) {
        Ok(()) => true,
        Err(password_hash::Error::PasswordInvalid) => false,
        Err(e) => {
            // Every stored hash was checked at load, so this is a bug; fail closed.
            tracing::error!(error = %e, "argon2 verification failed");
            false
        }
    };
    match user {
        None => Err(LoginFailure::UnknownUser),
        Some(_) if too_long || !matched => Err(LoginFailure::BadPassword),
        Some(user) if user.disabled => Err(LoginFailure::Disabled),
        Some(user) => Ok(Authenticated {
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            roles: user.roles.clone(),
        }),
    }
}

/// The current users, reloadable from their file.
///
/// Readers take a snapshot with [`current`](Self::current) (a lock-free `ArcSwap` load); a
/// reload builds the new [`Users`] completely before swapping it in, so a broken file never
/// replaces a working one.
pub struct UsersHandle {
    path: PathBuf,
    current: ArcSwap<Users>,
    /// Serialises reloads (the watcher and, say, an admin request): without it, a slower
    /// reload that read the file earlier could swap in older contents after a newer one.
    /// Held across file I/O and hashing, which is why reloads run on the blocking pool.
    reloading: Mutex<()>,
    minimums: &'static [(u32, u32)],
    /// Bounds the argon2 verifications of logins against these users.
    slots: LoginSlots,
}

impl fmt::Debug for UsersHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsersHandle")
            .field("path", &self.path)
            .field("users", &self.current.load().len())
            .finish_non_exhaustive()
    }
}

impl UsersHandle {
    /// Loads the file at `path` (see [`Users::load`]; blocking).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, UsersError> {
        Self::load_with(path.into(), OWASP_MINIMUMS)
    }

    /// No users file (`auth.users_file` left out: sign-in only through `auth.providers`): no
    /// user, and nothing to reload.
    pub fn empty() -> Self {
        let users = Users::parse_with("users: []\n", "no users file", OWASP_MINIMUMS)
            .expect("an empty users list parses");
        Self {
            path: PathBuf::new(),
            current: ArcSwap::from_pointee(users),
            reloading: Mutex::new(()),
            minimums: OWASP_MINIMUMS,
            slots: LoginSlots::per_core(),
        }
    }

    fn load_with(path: PathBuf, minimums: &'static [(u32, u32)]) -> Result<Self, UsersError> {
        let users = Users::load_with(&path, minimums)?;
        Ok(Self {
            path,
            current: ArcSwap::from_pointee(users),
            reloading: Mutex::new(()),
            minimums,
            slots: LoginSlots::per_core(),
        })
    }

    /// The users file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The verification slots logins against these users share.
    pub fn slots(&self) -> &LoginSlots {
        &self.slots
    }

    /// The current users. Hold on to the `Arc` for the length of one login.
    pub fn current(&self) -> Arc<Users> {
        self.current.load_full()
    }

    /// Re-reads the file. `Ok(true)`: it changed and the new users are in place; `Ok(false)`:
    /// it is byte-for-byte the same, nothing was done; `Err`: the file is unreadable or
    /// invalid and the old users stay (log the error). Blocking.
    pub fn reload(&self) -> Result<bool, UsersError> {
        if self.path.as_os_str().is_empty() {
            return Ok(false);
        }
        let _guard = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let text = std::fs::read_to_string(&self.path).map_err(|source| UsersError::Read {
            path: self.path.clone(),
            source,
        })?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        if digest.as_ref() == self.current.load().fingerprint() {
            return Ok(false);
        }
        let users = Users::parse_with(&text, &self.path.display().to_string(), self.minimums)?;
        self.current.store(Arc::new(users));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cheapest argon2id parameters, for tests only: the real policy refuses them, so
    /// tests that need users build them with this floor instead.
    const TEST_MINIMUMS: &[(u32, u32)] = &[(8, 1)];

    fn cheap_hash(password: &str) -> String {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        )
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
    }

    fn hash_with(alg: Algorithm, m: u32, t: u32, password: &str) -> String {
        Argon2::new(alg, Version::V0x13, Params::new(m, t, 1, None).unwrap())
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string()
    }

    fn users_yaml() -> String {
        format!(
            "users:\n\
             \x20 - username: Alice\n\
             \x20   display_name: Alice Example\n\
             \x20   password_hash: \"{}\"\n\
             \x20   roles: [reader, editor]\n\
             \x20 - username: mallory\n\
             \x20   password_hash: \"{}\"\n\
             \x20   disabled: true\n",
            cheap_hash("alice-pw"),
            cheap_hash("mallory-pw"),
        )
    }

    fn test_users() -> Arc<Users> {
        Arc::new(Users::parse_with(&users_yaml(), "test.yaml", TEST_MINIMUMS).unwrap())
    }

    fn pw(s: &str) -> Password {
        Password::new(s.to_owned())
    }

    #[test]
    fn canonical_username_trims_and_lowercases() {
        assert_eq!(canonical_username("  Alice\t"), "alice");
        assert_eq!(canonical_username("ÉLODIE"), "élodie");
        assert_eq!(canonical_username("   "), "");
        // No NFKC: full-width letters stay distinct.
        assert_ne!(canonical_username("ＡＬＩＣＥ"), "alice");
    }

    #[test]
    fn users_are_stored_under_their_canonical_name() {
        let users = test_users();
        assert_eq!(users.len(), 2);
        let alice = users.get("alice").unwrap();
        assert_eq!(alice.username, "alice");
        assert_eq!(alice.display_name, "Alice Example");
        assert_eq!(alice.roles, ["reader", "editor"]);
        assert!(!alice.disabled);
        assert_eq!(users.get("mallory").unwrap().display_name, "mallory");
        assert!(users.get("mallory").unwrap().disabled);
        assert!(users.get("Alice").is_none(), "get takes the canonical form");
    }

    #[test]
    fn a_duplicate_after_canonicalisation_is_rejected() {
        let yaml = format!(
            "users:\n  - username: alice\n    password_hash: \"{h}\"\n  - username: \" ALICE \"\n    password_hash: \"{h}\"\n",
            h = cheap_hash("x")
        );
        let err = Users::parse_with(&yaml, "u.yaml", TEST_MINIMUMS).unwrap_err();
        assert!(
            matches!(&err, UsersError::DuplicateUsername { index: 1, first_index: 0, username, .. } if username == " ALICE "),
            "{err:?}"
        );
        assert!(err.to_string().contains("users[1]"), "{err}");
    }

    #[test]
    fn a_username_with_a_hash_is_rejected_since_it_could_name_another_issuers_user() {
        let yaml = format!(
            "users:\n  - username: \"https://idp.example#alice\"\n    password_hash: \"{}\"\n",
            cheap_hash("x")
        );
        let err = Users::parse_with(&yaml, "u.yaml", TEST_MINIMUMS).unwrap_err();
        assert!(
            matches!(err, UsersError::HashInUsername { index: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn an_empty_username_is_rejected() {
        let yaml = format!(
            "users:\n  - username: \"  \"\n    password_hash: \"{}\"\n",
            cheap_hash("x")
        );
        let err = Users::parse_with(&yaml, "u.yaml", TEST_MINIMUMS).unwrap_err();
        assert!(
            matches!(err, UsersError::EmptyUsername { index: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn an_unknown_field_is_rejected_with_its_line() {
        let yaml = format!(
            "users:\n  - username: alice\n    password_hash: \"{}\"\n    role: [admin]\n",
            cheap_hash("x")
        );
        let err = Users::parse_with(&yaml, "u.yaml", TEST_MINIMUMS).unwrap_err();
        let UsersError::Syntax { line, .. } = &err else {
            panic!("expected a syntax error, got {err:?}");
        };
        assert_eq!(*line, Some(4));
        let message = err.to_string();
        assert!(
            message.starts_with("u.yaml: ")
                && message.contains("at line 4")
                && message.contains("role"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_top_level_key_is_rejected() {
        let err =
            Users::parse_with("users: []\nadmins: []\n", "u.yaml", TEST_MINIMUMS).unwrap_err();
        assert!(
            matches!(err, UsersError::Syntax { line: Some(2), .. }),
            "{err:?}"
        );
    }

    fn hash_problem(phc: &str, minimums: &[(u32, u32)]) -> HashProblem {
        let yaml = format!("users:\n  - username: bob\n    password_hash: \"{phc}\"\n");
        match Users::parse_with(&yaml, "u.yaml", minimums).unwrap_err() {
            UsersError::BadHash {
                index: 0,
                username,
                problem,
                ..
            } if username == "bob" => problem,
            other => panic!("expected BadHash for bob, got {other:?}"),
        }
    }

    #[test]
    fn argon2i_and_argon2d_hashes_are_rejected() {
        for alg in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let problem = hash_problem(&hash_with(alg, 8, 1, "x"), TEST_MINIMUMS);
            assert_eq!(problem, HashProblem::NotArgon2id(alg.as_str().to_owned()));
        }
    }

    #[test]
    fn non_phc_and_foreign_hashes_are_rejected() {
        assert!(matches!(
            hash_problem("hunter2", TEST_MINIMUMS),
            HashProblem::Malformed(_)
        ));
        let bcrypt = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
        assert!(matches!(
            hash_problem(bcrypt, TEST_MINIMUMS),
            HashProblem::Malformed(_) | HashProblem::NotArgon2id(_)
        ));
        let no_version = cheap_hash("x").replace("$v=19", "");
        assert_eq!(
            hash_problem(&no_version, TEST_MINIMUMS),
            HashProblem::Version
        );
    }

    #[test]
    fn parameters_below_owasp_are_rejected() {
        // 19 MiB with one pass, and 12 MiB with two, are each below every OWASP row.
        for (m, t) in [(19_456, 1), (12_288, 2), (8, 1)] {
            let phc = hash_with(Algorithm::Argon2id, m, t, "x");
            assert_eq!(
                hash_problem(&phc, OWASP_MINIMUMS),
                HashProblem::TooWeak {
                    m_cost: m,
                    t_cost: t
                }
            );
        }
    }

    #[test]
    fn every_owasp_configuration_passes_the_policy() {
        for &(m, t) in OWASP_MINIMUMS {
            let phc = format!(
                "$argon2id$v=19$m={m},t={t},p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            );
            assert!(check_hash(&phc, OWASP_MINIMUMS).is_ok(), "m={m}, t={t}");
        }
    }

    #[test]
    fn hash_password_makes_an_owasp_argon2id_phc_string() {
        let phc = hash_password("correct horse");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let parsed = check_hash(&phc, OWASP_MINIMUMS).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert_ne!(phc, hash_password("correct horse"), "the salt is random");
    }

    #[test]
    fn an_empty_file_gets_an_owasp_dummy() {
        let users = Users::parse("users: []\n", "empty.yaml").unwrap();
        assert!(users.is_empty());
        let params = Params::try_from(&users.dummy).unwrap();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (OWASP_M_COST, OWASP_T_COST, OWASP_P_COST)
        );
    }

    #[test]
    fn an_unknown_user_is_verified_against_a_dummy_with_the_users_parameters() {
        let users = test_users();
        let alice = users.get("alice").unwrap();
        let target = users.verification_target(None, false);
        assert!(std::ptr::eq(target, &users.dummy));
        assert_eq!(
            Params::try_from(target).unwrap(),
            Params::try_from(&alice.hash).unwrap()
        );
        assert_eq!(target.algorithm, alice.hash.algorithm);
        assert_eq!(target.version, alice.hash.version);
        assert_ne!(target.salt, alice.hash.salt);
        // An over-long password for a real user goes to the dummy too.
        assert!(std::ptr::eq(
            users.verification_target(Some(alice), true),
            &users.dummy
        ));
    }

    #[test]
    fn the_dummy_takes_the_strongest_parameters_in_the_file() {
        let yaml = format!(
            "users:\n  - username: a\n    password_hash: \"{}\"\n  - username: b\n    password_hash: \"{}\"\n",
            hash_with(Algorithm::Argon2id, 8, 1, "x"),
            hash_with(Algorithm::Argon2id, 16, 2, "y"),
        );
        let users = Users::parse_with(&yaml, "u.yaml", TEST_MINIMUMS).unwrap();
        let p = Params::try_from(&users.dummy).unwrap();
        assert_eq!((p.m_cost(), p.t_cost()), (16, 2));
    }

    #[tokio::test]
    async fn logins_wait_for_a_verification_slot_and_are_refused_as_busy_when_none_frees() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let wait = std::time::Duration::from_millis(200);
        // The only slot is taken (another login, say): nothing is verified, the login is busy.
        let taken = Arc::clone(&slots).acquire_owned().await.unwrap();
        let busy = authenticate_in(&slots, wait, test_users(), "alice", pw("alice-pw")).await;
        assert!(matches!(busy, Err(LoginFailure::Busy)), "{busy:?}");
        // A slot freed while waiting is taken, and the login goes through.
        let release = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(taken);
        });
        let ok = authenticate_in(&slots, wait, test_users(), "alice", pw("alice-pw")).await;
        assert!(ok.is_ok(), "{ok:?}");
        release.await.unwrap();
        // The slot is back once the verification has ended.
        assert_eq!(slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn verification_slots_belong_to_a_users_handle_not_to_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        std::fs::write(&path, users_yaml()).unwrap();
        let (a, b) = (handle_on(&path), handle_on(&path));
        // Every slot of `a` taken: a login against `a` is busy, one against `b` is not.
        let all = u32::try_from(a.slots().0.available_permits()).unwrap();
        let _taken = Arc::clone(&a.slots().0)
            .acquire_many_owned(all)
            .await
            .unwrap();
        let wait = std::time::Duration::from_millis(50);
        let busy = authenticate_in(&a.slots().0, wait, a.current(), "alice", pw("alice-pw")).await;
        assert!(matches!(busy, Err(LoginFailure::Busy)), "{busy:?}");
        let ok = authenticate(b.slots(), b.current(), "alice", pw("alice-pw")).await;
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[tokio::test]
    async fn the_right_password_authenticates() {
        let ok = authenticate(
            &LoginSlots::per_core(),
            test_users(),
            "  ALICE ",
            pw("alice-pw"),
        )
        .await;
        assert_eq!(
            ok,
            Ok(Authenticated {
                username: "alice".into(),
                display_name: "Alice Example".into(),
                roles: vec!["reader".into(), "editor".into()],
            })
        );
    }

    #[tokio::test]
    async fn a_wrong_password_is_refused() {
        let users = test_users();
        assert_eq!(
            authenticate(
                &LoginSlots::per_core(),
                users.clone(),
                "alice",
                pw("Alice-pw")
            )
            .await,
            Err(LoginFailure::BadPassword)
        );
        assert_eq!(
            authenticate(&LoginSlots::per_core(), users, "alice", pw("")).await,
            Err(LoginFailure::BadPassword)
        );
    }

    #[tokio::test]
    async fn an_unknown_user_is_refused() {
        assert_eq!(
            authenticate(&LoginSlots::per_core(), test_users(), "eve", pw("alice-pw")).await,
            Err(LoginFailure::UnknownUser)
        );
    }

    #[tokio::test]
    async fn a_disabled_user_is_refused_even_with_the_right_password() {
        let users = test_users();
        assert_eq!(
            authenticate(
                &LoginSlots::per_core(),
                users.clone(),
                "mallory",
                pw("mallory-pw")
            )
            .await,
            Err(LoginFailure::Disabled)
        );
        assert_eq!(
            authenticate(&LoginSlots::per_core(), users, "mallory", pw("wrong")).await,
            Err(LoginFailure::BadPassword)
        );
    }

    #[tokio::test]
    async fn an_over_long_password_is_refused_even_if_it_is_right() {
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        let yaml = format!(
            "users:\n  - username: long\n    password_hash: \"{}\"\n",
            cheap_hash(&long)
        );
        let users = Arc::new(Users::parse_with(&yaml, "u.yaml", TEST_MINIMUMS).unwrap());
        assert_eq!(
            authenticate(&LoginSlots::per_core(), users, "long", Password::new(long)).await,
            Err(LoginFailure::BadPassword)
        );
    }

    #[test]
    fn no_secret_appears_in_debug_output() {
        assert_eq!(format!("{:?}", pw("hunter2")), "Password(<redacted>)");
        let users = test_users();
        let alice = format!("{:?}", users.get("alice").unwrap());
        assert!(
            !alice.contains("argon2") && alice.contains("<redacted>"),
            "{alice}"
        );
        assert!(!format!("{users:?}").contains("argon2"));
    }

    #[tokio::test]
    async fn the_example_users_file_loads_and_its_demo_passwords_work() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/users.yaml");
        let users = Arc::new(Users::load(&path).unwrap());
        assert_eq!(users.len(), 3);
        let alice = authenticate(
            &LoginSlots::per_core(),
            users.clone(),
            "alice",
            pw("demo-password-alice"),
        )
        .await;
        assert_eq!(alice.unwrap().roles, ["reader", "editor"]);
        let bob = authenticate(
            &LoginSlots::per_core(),
            users.clone(),
            "Bob",
            pw("demo-password-bob"),
        )
        .await;
        assert_eq!(bob.unwrap().roles, ["reader"]);
        assert_eq!(
            authenticate(
                &LoginSlots::per_core(),
                users,
                "mallory",
                pw("demo-password-mallory")
            )
            .await,
            Err(LoginFailure::Disabled)
        );
    }

    fn handle_on(path: &Path) -> UsersHandle {
        UsersHandle::load_with(path.to_owned(), TEST_MINIMUMS).unwrap()
    }

    #[test]
    fn reload_swaps_in_a_changed_file_and_reports_no_change_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        std::fs::write(&path, users_yaml()).unwrap();
        let handle = handle_on(&path);
        assert!(!handle.reload().unwrap(), "unchanged");
        let bob = format!(
            "{}  - username: bob\n    password_hash: \"{}\"\n",
            users_yaml(),
            cheap_hash("bob-pw")
        );
        std::fs::write(&path, bob).unwrap();
        assert!(handle.reload().unwrap(), "changed");
        assert_eq!(handle.current().len(), 3);
    }

    #[test]
    fn reload_keeps_the_old_users_when_the_file_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        std::fs::write(&path, users_yaml()).unwrap();
        let handle = handle_on(&path);
        let before = handle.current();

        std::fs::write(&path, "users:\n  - username: alice\n    pasword_hash: x\n").unwrap();
        assert!(matches!(handle.reload(), Err(UsersError::Syntax { .. })));
        assert!(Arc::ptr_eq(&before, &handle.current()));

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(handle.reload(), Err(UsersError::Read { .. })));
        assert!(Arc::ptr_eq(&before, &handle.current()));
        assert!(handle.current().get("alice").is_some());
    }
}
