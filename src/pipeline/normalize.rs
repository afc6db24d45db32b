//! Path normalization, run before routing (SECURITY.md 29).
//!
//! The path that is matched is the path the upstream receives, so a rule can never be dodged by
//! spelling the same resource differently. Unreserved characters that were percent-encoded are
//! decoded (`/%61dmin` is `/admin`), dot segments are resolved after that decoding
//! (`/pub/%2e%2e/admin` is `/admin`), empty segments collapse (`//admin`), and any remaining
//! percent-encoding is upper-cased. Encodings whose meaning differs between servers are refused
//! rather than guessed at: an encoded `/`, `\` or `#`, NUL and other control characters, a raw
//! backslash, and `;` path parameters (Tomcat-style servers strip them; we will not route on a
//! spelling the backend reads differently).

/// Why a path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path starting with `/`.
    #[error("request target is not an absolute path")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    BadEncoding,
    /// An encoding that servers disagree about: `%2F`, `%5C`, `%00`, `%23`, `;`, `\`, controls.
    #[error("ambiguous path encoding")]
    Ambiguous,
}

/// A normalized path: the form forwarded upstream, and its lower-cased segments for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// `/a/b` or `/a/b/` (a trailing slash is kept), never empty.
    pub path: String,
    /// Lower-case copy of `path`, matched against route prefixes.
    pub lower: String,
}

impl NormalizedPath {
    /// The lower-case segments, for the router.
    pub fn segments(&self) -> impl Iterator<Item = &str> + Clone {
        self.lower.split('/').filter(|s| !s.is_empty())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes one segment into `out`; returns an error for refused encodings.
fn push_segment(raw: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEncoding);
                };
                let decoded = hi << 4 | lo;
                if decoded < 0x20
                    || decoded == 0x7f
                    || matches!(decoded, b'/' | b'\\' | b'#' | b';')
                {
                    return Err(PathError::Ambiguous);
                }
                if is_unreserved(decoded) {
                    out.push(decoded as char);
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
                }
                i += 3;
            }
            b'\\' | b';' | b'#' => return Err(PathError::Ambiguous),
            0..=0x20 | 0x7f..=0xff => return Err(PathError::Ambiguous),
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    Ok(())
}

/// Normalizes a request path (without its query).
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw_segment in raw.split('/').skip(1) {
        let mut segment = String::with_capacity(raw_segment.len());
        push_segment(raw_segment, &mut segment)?;
        trailing_slash = false;
        match segment.as_str() {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => segments.push(segment),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    let lower = path.to_ascii_lowercase();
    Ok(NormalizedPath { path, lower })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|p| p.path)
    }

    #[test]
    fn spellings_of_admin_all_normalize_to_admin() {
        for p in [
            "/admin",
            "/%61dmin",
            "/pub/../admin",
            "/pub/%2e%2e/admin",
            "//admin",
            "/./admin",
        ] {
            assert_eq!(n(p).unwrap(), "/admin", "{p}");
        }
        assert_eq!(normalize("/ADMIN").unwrap().lower, "/admin");
    }

    #[test]
    fn ambiguous_encodings_are_refused() {
        for p in [
            "/admin%2f",
            "/pub/%2e%2e%2fadmin",
            "/admin%00",
            "/a%5cb",
            "/a\\b",
            "/admin;x",
            "/admin%3bx",
            "/admin%23x",
            "/a%0d%0ab",
        ] {
            assert_eq!(n(p), Err(PathError::Ambiguous), "{p}");
        }
        assert_eq!(n("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(n("/a%4"), Err(PathError::BadEncoding));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn dot_segments_cannot_climb_above_the_root() {
        assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/a/").unwrap(), "/a/");
    }

    #[test]
    fn reserved_encodings_are_kept_and_upper_cased() {
        assert_eq!(n("/files/a%3fb").unwrap(), "/files/a%3Fb");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    }
}
