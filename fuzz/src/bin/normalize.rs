//! The path normalizer (`pipeline::normalize::normalize`), on any bytes as a request path.
//!
//! Properties from its module docs: it never panics; an accepted path starts with `/`, has no
//! empty, `.` or `..` segment (so no `//`), holds only visible ASCII with no `\`, `;` or `#`,
//! keeps percent-encoding only as upper-case `%XX` of a byte that is neither unreserved (those
//! are decoded) nor refused (`/`, `\`, `#`, `;`, controls); `lower` is its lower-case copy; and
//! normalizing it again changes nothing (the path matched is the path forwarded).

use portcullis::pipeline::normalize::normalize;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(raw) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(n) = normalize(raw) else {
            return;
        };
        let path = &n.path;
        assert!(path.starts_with('/'), "{raw:?} → {path:?}");
        assert!(!path.contains("//"), "{raw:?} → {path:?}");
        let inner = path.strip_suffix('/').unwrap_or(path);
        for segment in inner.split('/').skip(1) {
            assert!(!matches!(segment, "" | "." | ".."), "{raw:?} → {path:?}");
        }
        let bytes = path.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            assert!(
                b.is_ascii_graphic() && !matches!(b, b'\\' | b';' | b'#'),
                "{raw:?} → {path:?}"
            );
            if b == b'%' {
                let hex = &bytes[i + 1..(i + 3).min(bytes.len())];
                assert!(
                    hex.len() == 2 && hex.iter().all(|h| matches!(h, b'0'..=b'9' | b'A'..=b'F')),
                    "{raw:?} → {path:?}"
                );
                let decoded = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
                assert!(!is_unreserved(decoded), "{raw:?} → {path:?}");
                assert!(
                    decoded >= 0x20
                        && decoded != 0x7f
                        && !matches!(decoded, b'/' | b'\\' | b'#' | b';'),
                    "{raw:?} → {path:?}"
                );
            }
        }
        assert_eq!(n.lower, path.to_ascii_lowercase());
        assert_eq!(
            normalize(path).as_ref(),
            Ok(&n),
            "not idempotent: {raw:?} → {path:?}"
        );
    });
}
