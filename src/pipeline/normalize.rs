//! Path normalization, run before routing (docs/security.md 29).
//!
//! The path that is matched is the path the upstream receives, so a rule can never be dodged by
//! spelling the same resource differently. Unreserved characters that were percent-encoded are
//! decoded (`/%61dmin` is `/admin`), dot segments are resolved after that decoding
//! (`/pub/%2e%2e/admin` is `/admin`), empty segments collapse (`//admin`), and any remaining
//! percent-encoding is upper-cased. Encodings whose meaning differs between servers are refused
//! rather than guessed at: an encoded `/`, `\` or `#`, NUL and other control characters, a raw
//! backslash, and `;` path parameters (Tomcat-style servers strip them; we will not route on a
//! spelling the backend reads differently). A path whose decoded bytes are not UTF-8 is refused
//! too (overlong `%c0%ae`, `%e0%80%ae`, a lone continuation byte `%80`, surrogates): a decoder
//! that accepts an overlong form reads `%c0%ae` as `.`.
//!
//! What stays data: characters outside ASCII remain percent-encoded (upper-cased) and are
//! matched as they are, so a look-alike such as `%ef%bc%8f` (U+FF0F, fullwidth solidus) is
//! part of its segment, never a `/`; and `%25` is decoded to nothing but itself, so a double
//! encoding such as `%252e` reaches the upstream as `%252e` and is never a dot segment here.
//! A backend that decodes twice or folds Unicode look-alikes must not serve paths from them.

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
    /// Percent-encoded bytes that are not UTF-8: overlong forms, lone continuation bytes.
    #[error("path is not UTF-8")]
    NotUtf8,
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

/// Normalizes one segment into `out`; returns an error for refused encodings. `high` collects
/// a run of consecutive encoded bytes above 0x7f: such a run must be UTF-8 by itself, since an
/// ASCII byte can never continue a multi-byte character.
fn push_segment(raw: &str, out: &mut String, high: &mut Vec<u8>) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            utf8_run(high)?;
        }
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
                if decoded >= 0x80 {
                    high.push(decoded);
                } else {
                    utf8_run(high)?;
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
    utf8_run(high)
}

/// Checks (and empties) a run of decoded bytes above 0x7f: it must be whole UTF-8 characters.
/// `from_utf8` refuses overlong forms, surrogates and stray continuation bytes.
fn utf8_run(high: &mut Vec<u8>) -> Result<(), PathError> {
    if high.is_empty() {
        return Ok(());
    }
    let valid = std::str::from_utf8(high).is_ok();
    high.clear();
    if valid {
        Ok(())
    } else {
        Err(PathError::NotUtf8)
    }
}

/// Normalizes a request path (without its query).
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    // Allocates only for a path with encoded bytes above 0x7f.
    let mut high = Vec::new();
    for raw_segment in raw.split('/').skip(1) {
        let mut segment = String::with_capacity(raw_segment.len());
        push_segment(raw_segment, &mut segment, &mut high)?;
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
    fn encoded_bytes_that_are_not_utf8_are_refused() {
        for p in [
            "/%c0%ae%c0%ae/admin",
            "/pub/%e0%80%ae%e0%80%ae/admin",
            "/a%80",
            "/a%c3",
            "/a%c3x%a9",
            "/a%c3/%a9",
            "/%ed%a0%80",
            "/%f8%88%80%80%80",
            "/%fe",
        ] {
            assert_eq!(n(p), Err(PathError::NotUtf8), "{p}");
        }
        assert_eq!(
            n("/caf%C3%A9/%E2%82%AC%F0%9F%98%80").unwrap(),
            "/caf%C3%A9/%E2%82%AC%F0%9F%98%80"
        );
    }

    #[test]
    fn look_alike_slashes_and_double_encodings_stay_data() {
        let fullwidth = normalize("/admin%ef%bc%8fx").unwrap();
        assert_eq!(fullwidth.path, "/admin%EF%BC%8Fx");
        assert_eq!(fullwidth.segments().count(), 1);
        assert_eq!(n("/pub/%252e%252e/admin").unwrap(), "/pub/%252e%252e/admin");
        assert_eq!(n("/pub/%252fadmin").unwrap(), "/pub/%252fadmin");
    }

    #[test]
    fn reserved_encodings_are_kept_and_upper_cased() {
        assert_eq!(n("/files/a%3fb").unwrap(), "/files/a%3Fb");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    }
}
