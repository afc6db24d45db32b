//! The token profile of an issuer: which `typ` values its tokens may carry, whether `jti` is
//! required, which clients may hold them, which claim names the subject, where permissions come
//! from and which claims become extra identity headers. Compiled from `issuers[]` once; read by
//! the verify stage after a token's signature has been checked.
//!
//! A claim is named by a [`ClaimPath`]: member names joined by `.` (`realm_access.roles`,
//! `resource_access.my-api.roles`), with `\.` for a dot inside a name and `\\` for a
//! backslash (`https://example\.com/roles` is the one top-level claim
//! `https://example.com/roles`). The path walks JSON objects only; it never indexes arrays.

use http::HeaderName;
use serde_json::{Map, Value};

/// Longest claim path, in member names: the verify stage parses no JSON deeper than 16 levels.
pub const MAX_PATH_DEPTH: usize = 16;

/// A path to a claim in the token's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(Box<[Box<str>]>);

impl ClaimPath {
    /// Parses `a.b-c.d`; `\.` is a dot and `\\` a backslash inside a member name. Empty member
    /// names, any other escape and paths deeper than [`MAX_PATH_DEPTH`] are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments: Vec<Box<str>> = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('.' | '\\')) => current.push(e),
                    _ => {
                        return Err(format!(
                            "`{text}`: `\\` escapes only `.` or `\\` in a claim name"
                        ));
                    }
                },
                '.' => {
                    if current.is_empty() {
                        return Err(format!("`{text}` has an empty claim name"));
                    }
                    segments.push(std::mem::take(&mut current).into());
                }
                c => current.push(c),
            }
        }
        if current.is_empty() {
            return Err(if text.is_empty() {
                "a claim path must not be empty".to_owned()
            } else {
                format!("`{text}` has an empty claim name")
            });
        }
        segments.push(current.into());
        if segments.len() > MAX_PATH_DEPTH {
            return Err(format!(
                "`{text}` is deeper than {MAX_PATH_DEPTH} claim names"
            ));
        }
        Ok(Self(segments.into()))
    }

    /// The top-level claim `name`.
    pub fn top(name: &str) -> Self {
        Self(Box::new([name.into()]))
    }

    /// The value at this path in `claims`, when every step is an object member.
    pub fn find<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(&**first)?;
        for name in rest {
            value = value.as_object()?.get(&**name)?;
        }
        Some(value)
    }

    /// Whether the path is the single top-level claim `name`.
    pub fn is_top(&self, name: &str) -> bool {
        self.0.len() == 1 && &*self.0[0] == name
    }
}

impl std::fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(&s.replace('\\', "\\\\").replace('.', "\\."))?;
        }
        Ok(())
    }
}

/// What a claim's values are, read the way its claim is written: a string (for `scope` and
/// `scp`, a space-separated list, RFC 8693 §4.2) or an array of strings. Anything else yields
/// nothing, and so do the non-string members of an array; `ignored` is told how many values
/// were left out, for a debug line (never an error: a token's odd claim grants nothing).
pub fn claim_values<'a>(
    value: &'a Value,
    space_separated: bool,
    ignored: &mut usize,
) -> Vec<&'a str> {
    match value {
        Value::String(s) if space_separated => s.split(' ').filter(|v| !v.is_empty()).collect(),
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .filter_map(|v| {
                let s = v.as_str();
                if s.is_none() {
                    *ignored += 1;
                }
                s
            })
            .collect(),
        _ => {
            *ignored += 1;
            Vec::new()
        }
    }
}

/// How a claim's values become permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// Each value is a role name, mapped through the top-level `roles:`.
    Roles,
    /// Each value, after this prefix, is a permission name.
    Prefix(Box<str>),
}

/// One `permissions:` entry of an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionSource {
    /// Where the values are.
    pub claim: ClaimPath,
    /// What they mean.
    pub mapping: Mapping,
    /// Whether a string value is a space-separated list (`scope`, `scp`).
    pub space_separated: bool,
}

impl PermissionSource {
    /// The entry for `claim` (`scope` and `scp` are read as space-separated lists).
    pub fn new(claim: ClaimPath, mapping: Mapping) -> Self {
        let space_separated = claim.is_top("scope") || claim.is_top("scp");
        Self {
            claim,
            mapping,
            space_separated,
        }
    }
}

/// The `typ` header values an issuer's tokens may carry, compared without case and with the
/// `application/` prefix optional (RFC 7515 §4.1.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTypes {
    /// Lower-case, without `application/`.
    names: Box<[Box<str>]>,
    /// Whether a token without `typ` is accepted (`none` in the list).
    absent: bool,
}

impl Default for TokenTypes {
    /// `at+jwt` only (RFC 9068).
    fn default() -> Self {
        Self {
            names: Box::new(["at+jwt".into()]),
            absent: false,
        }
    }
}

impl TokenTypes {
    /// Parses one `token_types` list: `none` is "no `typ`"; any other entry a media type,
    /// `application/` optional. An empty list accepts nothing, so it is refused.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        if list.is_empty() {
            return Err("lists no type (the default is [at+jwt])".to_owned());
        }
        let mut names: Vec<Box<str>> = Vec::new();
        let mut absent = false;
        for entry in list {
            if entry.eq_ignore_ascii_case("none") {
                absent = true;
                continue;
            }
            let bare = strip_application(entry);
            if bare.is_empty()
                || !bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_'))
            {
                return Err(format!(
                    "`{entry}` is not a media type (`at+jwt`, `JWT`, or `none` for no `typ`)"
                ));
            }
            names.push(bare.to_ascii_lowercase().into());
        }
        names.sort();
        names.dedup();
        Ok(Self {
            names: names.into(),
            absent,
        })
    }

    /// Whether a token whose `typ` header is `typ` (`None`: absent) is acceptable.
    pub fn accepts(&self, typ: Option<&str>) -> bool {
        match typ {
            None => self.absent,
            Some(typ) => {
                let bare = strip_application(typ);
                self.names.iter().any(|n| n.eq_ignore_ascii_case(bare))
            }
        }
    }
}

fn strip_application(typ: &str) -> &str {
    match typ.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    }
}

/// An issuer's token profile. The default is the gateway's own profile: `typ: at+jwt`, `jti`
/// required, any client, `sub`, roles from the top-level `roles` claim, no extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenProfile {
    /// Accepted `typ` values.
    pub token_types: TokenTypes,
    /// Whether `jti` is required. Without one the denylist cannot revoke a single token.
    pub require_jti: bool,
    /// Accepted `azp` (else `client_id`) values; `None`: not checked.
    pub clients: Option<Box<[Box<str>]>>,
    /// The claim that names the subject.
    pub subject_claim: ClaimPath,
    /// Where permissions come from; `None`: the top-level `roles` claim, strictly (a `roles`
    /// claim that is not an array of identifiers refuses the token, as it always has).
    pub permissions: Option<Box<[PermissionSource]>>,
    /// Extra identity headers from string claims.
    pub identity_claims: Box<[(ClaimPath, HeaderName)]>,
}

impl Default for TokenProfile {
    fn default() -> Self {
        Self {
            token_types: TokenTypes::default(),
            require_jti: true,
            clients: None,
            subject_claim: ClaimPath::top("sub"),
            permissions: None,
            identity_claims: Box::new([]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn paths_split_on_dots_and_escape_literal_ones() {
        let p = ClaimPath::parse("resource_access.my-api.roles").unwrap();
        assert_eq!(p.0.len(), 3);
        assert_eq!(&*p.0[1], "my-api");
        let url = ClaimPath::parse(r"https://example\.com/roles").unwrap();
        assert!(url.is_top("https://example.com/roles"));
        assert_eq!(url.to_string(), r"https://example\.com/roles");
        let slash = ClaimPath::parse(r"a\\.b").unwrap();
        assert_eq!(slash.0.len(), 2);
        assert_eq!(&*slash.0[0], r"a\");
        for bad in ["", ".a", "a.", "a..b", r"a\b", "a\\", &["x"; 17].join(".")] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ClaimPath::parse(&["x"; 16].join(".")).is_ok());
    }

    #[test]
    fn the_walker_follows_objects_only() {
        let claims = obj(json!({
            "realm_access": { "roles": ["a", "b"] },
            "resource_access": { "my-api": { "roles": ["c"] } },
            "list": [{ "x": 1 }],
            "https://example.com/roles": ["d"],
            "flat.name": "dotted",
        }));
        let find = |p: &str| ClaimPath::parse(p).unwrap().find(&claims).cloned();
        assert_eq!(find("realm_access.roles"), Some(json!(["a", "b"])));
        assert_eq!(find("resource_access.my-api.roles"), Some(json!(["c"])));
        assert_eq!(find(r"https://example\.com/roles"), Some(json!(["d"])));
        assert_eq!(find(r"flat\.name"), Some(json!("dotted")));
        assert_eq!(find("flat.name"), None);
        assert_eq!(find("list.0.x"), None);
        assert_eq!(find("list.x"), None);
        assert_eq!(find("realm_access.roles.a"), None);
        assert_eq!(find("missing"), None);
    }

    #[test]
    fn scope_strings_split_on_spaces_other_strings_are_one_value() {
        let mut ignored = 0;
        let scope = json!("  documents.read  openid documents.write ");
        assert_eq!(
            claim_values(&scope, true, &mut ignored),
            ["documents.read", "openid", "documents.write"]
        );
        assert_eq!(claim_values(&scope, false, &mut ignored).len(), 1);
        assert_eq!(
            claim_values(&json!(["a b", 3, "c", null]), true, &mut ignored),
            ["a b", "c"]
        );
        assert_eq!(ignored, 2);
        assert!(claim_values(&json!({"a": "b"}), false, &mut ignored).is_empty());
        assert!(claim_values(&json!(7), true, &mut ignored).is_empty());
        assert_eq!(ignored, 4);
        assert!(claim_values(&json!(""), true, &mut ignored).is_empty());
        assert!(PermissionSource::new(ClaimPath::top("scp"), Mapping::Roles).space_separated);
        let nested = ClaimPath::parse("x.scope").unwrap();
        assert!(!PermissionSource::new(nested, Mapping::Roles).space_separated);
    }

    #[test]
    fn token_types_compare_without_case_and_application_prefix() {
        let default = TokenTypes::default();
        assert!(default.accepts(Some("at+jwt")));
        assert!(default.accepts(Some("AT+JWT")));
        assert!(default.accepts(Some("application/at+jwt")));
        assert!(default.accepts(Some("Application/AT+jwt")));
        assert!(!default.accepts(Some("JWT")));
        assert!(!default.accepts(None));
        assert!(!default.accepts(Some("")));
        let jwt = TokenTypes::parse(&["JWT".into(), "none".into()]).unwrap();
        assert!(jwt.accepts(Some("jwt")));
        assert!(jwt.accepts(Some("application/jwt")));
        assert!(jwt.accepts(None));
        assert!(!jwt.accepts(Some("at+jwt")));
        assert!(!jwt.accepts(Some("none")));
        assert!(TokenTypes::parse(&[]).is_err());
        assert!(TokenTypes::parse(&["a b".into()]).is_err());
        assert!(TokenTypes::parse(&["application/".into()]).is_err());
    }
}
