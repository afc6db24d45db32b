//! Parsers for the value types `gateway.yaml` writes as text: durations and byte sizes (CIDRs
//! are [`crate::net::IpNet`]);
//! and the two helpers that let a bad value's error name its key and line.

use std::time::Duration;

use serde::Deserializer;
use serde::de::{self, Visitor};

use super::error::{ConfigError, invalid};
use super::raw::RawSize;

/// Deserializes an optional text value that YAML typed as a number or a boolean
/// (`timeout: 500`) as its text, so that the value's own check refuses it naming the key
/// ("`500` has no unit"). Needed inside mappings serde buffers (`store:`, whose `kind` tag is
/// read first): there a wrong type is reported without its key or line.
pub fn scalar_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Text;
    impl<'de> Visitor<'de> for Text {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_option(Text)
}

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

/// Parses `500ms`, `30s`, `15m`, `1h`, `7d`. A bare number is refused: the unit is the point.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a byte count: a number, or `16KiB`, `1MiB`, `1GiB` (also `KB`/`MB`, which mean the same).
pub fn parse_size(size: &RawSize) -> Result<u64, String> {
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
        .map_err(|_| format!("`{text}` is not a size like 64KiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}` (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
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
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("30 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
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
        assert!(parse_size(&RawSize::Text("1 parsec".into())).is_err());
    }
}
