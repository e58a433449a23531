//! Parsers for command-line values both binaries share: durations and IP prefixes.

use std::time::Duration;

use crate::model::IpPrefix;

/// Parses `500ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration {text:?} (use ms, s or m)")),
    }
}

/// Parses `10.96.0.0/12` or `fd00::/108` (an address alone is a host prefix).
pub fn parse_prefix(text: &str) -> Result<IpPrefix, String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("bad address in {text:?}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or(format!("bad prefix length in {text:?}"))?,
        None => max,
    };
    Ok(IpPrefix { addr, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse_prefix("10.96.0.0/12").map(|p| p.len), Ok(12));
        assert_eq!(parse_prefix("fd00::1").map(|p| p.len), Ok(128));
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("nope/8").is_err());
    }
}
