//! Parsers for the value types `gateway.yaml` writes as text, durations and byte sizes (CIDRs
//! are [`crate::net::IpNet`]), and [`line_of`], which lets a bad value's error name its line.

use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::raw::RawSize;

/// The 1-based line where the dotted `key` of a config error (`store.timeout`,
/// `routes[2].policy`, `upstreams.app.response_timeout`) is written in `yaml`, for the error
/// message: the YAML parser's own errors carry a line, the checks after parsing only a key.
/// A best effort over block and single-line flow style: when a step of the path cannot be
/// followed (a flow mapping over several lines, say), the line of the deepest step found, and
/// `None` when not even the first is found.
pub fn line_of(yaml: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = yaml.lines().collect();
    // The region the next step is looked for in: from `line` (its text after `col`) up to
    // `end`, deeper than `parent` (the column of the enclosing key or `-`).
    let mut region = Region {
        line: 0,
        col: 0,
        end: lines.len(),
        parent: None,
    };
    let mut found = None;
    for step in key.split('.') {
        let (name, indices) = match step.find('[') {
            Some(i) => (&step[..i], &step[i..]),
            None => (step, ""),
        };
        if !name.is_empty() {
            let Some((line, col, after)) = find_key(&lines, &region, name) else {
                return found;
            };
            found = Some(line + 1);
            region = Region {
                line,
                col: after,
                end: block_end(&lines, line + 1, col, true),
                parent: Some(col),
            };
        }
        for index in indices
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .map(str::parse::<usize>)
        {
            let Ok(index) = index else { return found };
            let Some((line, dash)) = find_item(&lines, &region, index) else {
                return found;
            };
            found = Some(line + 1);
            region = Region {
                line,
                col: dash + 1,
                end: block_end(&lines, line + 1, dash, false),
                parent: Some(dash),
            };
        }
    }
    found
}

struct Region {
    line: usize,
    col: usize,
    end: usize,
    parent: Option<usize>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// The first line at or after `from` that ends the block of a key (or `-`) at column `col`.
/// A mapping key's block sequence may be written at the key's own indentation (`- item`).
fn block_end(lines: &[&str], from: usize, col: usize, dash_at_col: bool) -> usize {
    (from..lines.len())
        .find(|&i| {
            let l = lines[i];
            !is_blank(l)
                && indent(l) <= col
                && !(dash_at_col && indent(l) == col && l.trim_start().starts_with('-'))
        })
        .unwrap_or(lines.len())
}

/// `name:` in the region: (line, column of the name, column after the colon).
fn find_key(lines: &[&str], region: &Region, name: &str) -> Option<(usize, usize, usize)> {
    for (i, line) in lines.iter().enumerate().take(region.end).skip(region.line) {
        let from = if i == region.line { region.col } else { 0 };
        if from > line.len() || (i > region.line && is_blank(line)) {
            continue;
        }
        let bytes = line.as_bytes();
        let mut at = from;
        while let Some(pos) = line[at..].find(name) {
            let start = at + pos;
            let end = start + name.len();
            at = start + 1;
            // A whole key: `name:` or `"name":`, after the start, a space, `{`, `,` or `-`.
            let (start, end) = match (start.checked_sub(1).map(|p| bytes[p]), bytes.get(end)) {
                (Some(b'"' | b'\''), Some(b'"' | b'\'')) => (start - 1, end + 1),
                _ => (start, end),
            };
            let before_ok =
                start == 0 || matches!(bytes[start - 1], b' ' | b'{' | b',' | b'-' | b'\t');
            let deeper = region.parent.is_none_or(|p| start > p);
            if before_ok && deeper && bytes.get(end) == Some(&b':') {
                return Some((i, start, end + 1));
            }
        }
    }
    None
}

/// The `index`-th item (from 0) of the block sequence in the region: (line, column of `-`).
fn find_item(lines: &[&str], region: &Region, index: usize) -> Option<(usize, usize)> {
    if lines
        .get(region.line)
        .and_then(|l| l.get(region.col..))
        .is_some_and(|rest| rest.trim_start().starts_with('['))
    {
        // A flow sequence: its items are not told apart here.
        return None;
    }
    let mut dash = None;
    let mut seen = 0;
    for (i, line) in lines
        .iter()
        .enumerate()
        .take(region.end)
        .skip(region.line + 1)
    {
        if is_blank(line) || !line.trim_start().starts_with('-') {
            continue;
        }
        let col = indent(line);
        if *dash.get_or_insert(col) != col {
            continue;
        }
        if seen == index {
            return Some((i, col));
        }
        seen += 1;
    }
    None
}

/// Why a duration or a byte size is not acceptable. Each names the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// A bare number for a duration: the unit is the point.
    #[error("`{0}` has no unit (use ms, s, m, h or d)")]
    NoDurationUnit(String),
    /// Not a number followed by a unit.
    #[error("`{0}` is not a duration like 30s")]
    NotADuration(String),
    /// A duration unit other than ms, s, m, h, d.
    #[error("`{text}` has an unknown unit `{unit}` (use ms, s, m, h or d)")]
    UnknownDurationUnit {
        /// The text as written.
        text: String,
        /// Its unit part.
        unit: String,
    },
    /// Not a number, with or without a unit.
    #[error("`{0}` is not a size like 64KiB")]
    NotASize(String),
    /// A size unit other than B, KiB, MiB, GiB.
    #[error("`{text}` has an unknown unit `{unit}` (use KiB, MiB or GiB)")]
    UnknownSizeUnit {
        /// The text as written.
        text: String,
        /// Its unit part.
        unit: String,
    },
    /// More than 64 bits of milliseconds or bytes.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// Parses `500ms`, `30s`, `15m`, `1h`, `7d`. A bare number is refused: the unit is the point.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| UnitError::NoDurationUnit(text.to_owned()))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| UnitError::NotADuration(text.to_owned()))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(UnitError::UnknownDurationUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| UnitError::TooLarge(text.to_owned()))
}

/// Parses a byte count: a number, or `16KiB`, `1MiB`, `1GiB` (also `KB`/`MB`, which mean the same).
pub fn parse_size(size: &RawSize) -> Result<u64, UnitError> {
    let text = match size {
        RawSize::Bytes(n) => return Ok(*n),
        RawSize::Text(text) => text.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| UnitError::NotASize(text.to_owned()))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        other => {
            return Err(UnitError::UnknownSizeUnit {
                text: text.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| UnitError::TooLarge(text.to_owned()))
}

/// `value` at `key` as a duration, or `default` when it is not written.
pub(super) fn duration(
    key: &str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), |v| {
        parse_duration(v).map_err(|m| invalid(key, m))
    })
}

/// `value` at `key` as a byte count, or `default` when it is not written.
pub(super) fn size(key: &str, value: Option<&RawSize>, default: u64) -> Result<u64, ConfigError> {
    value.map_or(Ok(default), |v| parse_size(v).map_err(|m| invalid(key, m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_accept_the_common_ones() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            parse_duration("30"),
            Err(UnitError::NoDurationUnit("30".into()))
        );
        assert_eq!(
            parse_duration("30 parsecs"),
            Err(UnitError::UnknownDurationUnit {
                text: "30 parsecs".into(),
                unit: " parsecs".into()
            })
        );
        assert_eq!(
            parse_duration("-1s"),
            Err(UnitError::NotADuration("-1s".into()))
        );
    }

    #[test]
    fn a_key_path_is_found_on_its_line_in_block_and_flow_style() {
        let yaml = "\
listeners:
  - bind: 127.0.0.1:0
  - bind: 127.0.0.1:1
    tls: { cert: c.pem, key: k.pem }
store:
  kind: redis
  # timeout: 1s
  url: redis://x
  timeout: 500
upstreams:
  app: { url: \"http://x\", response_timeout: 30 }
routes:
- { id: a, path: /a, upstream: app, policy: public }
- id: b
  path: /b
  policy: { any_of: [x] }
limits: { max_connections: lots }
";
        assert_eq!(line_of(yaml, "store.timeout"), Some(9));
        assert_eq!(line_of(yaml, "store"), Some(5));
        assert_eq!(line_of(yaml, "listeners[1].tls.key"), Some(4));
        assert_eq!(line_of(yaml, "listeners[0].bind"), Some(2));
        assert_eq!(line_of(yaml, "upstreams.app.response_timeout"), Some(11));
        assert_eq!(line_of(yaml, "routes[1].policy"), Some(16));
        assert_eq!(line_of(yaml, "routes[0].path"), Some(13));
        assert_eq!(line_of(yaml, "limits.max_connections"), Some(17));
        // Not written: the deepest step that is, or nothing.
        assert_eq!(line_of(yaml, "store.cache_ttl"), Some(5));
        assert_eq!(line_of(yaml, "listeners[5]"), Some(1));
        assert_eq!(line_of(yaml, "admin.bind"), None);
    }

    #[test]
    fn sizes_accept_numbers_and_binary_units() {
        assert_eq!(parse_size(&RawSize::Bytes(10)), Ok(10));
        assert_eq!(parse_size(&RawSize::Text("64KiB".into())), Ok(65536));
        assert_eq!(parse_size(&RawSize::Text("1MiB".into())), Ok(1 << 20));
        assert_eq!(
            parse_size(&RawSize::Text("1 parsec".into())),
            Err(UnitError::UnknownSizeUnit {
                text: "1 parsec".into(),
                unit: "parsec".into()
            })
        );
    }
}
