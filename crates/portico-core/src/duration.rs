//! Go-style durations for command-line flags (`500ms`, `1m30s`, `0`), as upstream's
//! components accept them, so flags copied from kube-proxy or kube-controller-manager work.

use std::time::Duration;

/// Parses a sequence of number+unit pairs (ns, us, µs, ms, s, m, h), or a bare `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration (use e.g. 500ms, 30s or 1m)".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!(
                "invalid duration {s:?} (use e.g. 500ms, 30s or 1m)"
            ));
        }
        let value: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("invalid duration {s:?} (use e.g. 500ms, 30s or 1m)"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "missing unit in duration {s:?} (use ms, s, m or h)"
                ));
            }
            unit => {
                return Err(format!(
                    "unknown unit {unit:?} in duration {s:?} (use ms, s, m or h)"
                ));
            }
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("invalid duration {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let cases = [
            ("1s", Some(1000)),
            ("500ms", Some(500)),
            ("1m30s", Some(90_000)),
            ("1.5s", Some(1500)),
            ("2h", Some(7_200_000)),
            ("0", Some(0)),
            ("0s", Some(0)),
            (" 250ms ", Some(250)),
            ("10", None),
            ("", None),
            ("1x", None),
            ("5 parsecs", None),
            ("ms", None),
            ("1..5s", None),
            ("99999999999999999999999h", None),
        ];
        for (input, want) in cases {
            let got = parse_go_duration(input).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, want, "{input:?}");
        }
    }
}
