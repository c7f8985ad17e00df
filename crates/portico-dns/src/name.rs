//! Domain names in wire form: building index keys from Kubernetes names and reverse names from IPs.
//!
//! Keys in the index are *relative* names: lowercase wire labels (length byte + bytes) without the
//! zone and without the final root byte, so `svc.ns.svc` under `cluster.local` is
//! `\x03svc\x02ns\x03svc`. Appending the zone's wire form gives the absolute name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest name on the wire, root byte included (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL: usize = 63;

/// The cluster zone, e.g. `cluster.local`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// Lowercase wire form ending with the root byte.
    pub wire: Vec<u8>,
    /// Dotted form without a trailing dot.
    pub dotted: String,
    /// Number of labels.
    pub labels: usize,
}

impl Zone {
    /// Parses a dotted zone such as `cluster.local` (a trailing dot is accepted).
    pub fn new(dotted: &str) -> Result<Zone, String> {
        let trimmed = dotted.trim_end_matches('.').to_ascii_lowercase();
        if trimmed.is_empty() {
            return Err("the cluster domain must not be empty".into());
        }
        let mut wire = Vec::new();
        let mut labels = 0;
        for label in trimmed.split('.') {
            push_label(&mut wire, label.as_bytes())
                .ok_or_else(|| format!("invalid cluster domain {dotted:?}"))?;
            labels += 1;
        }
        wire.push(0);
        if wire.len() > MAX_NAME - 32 {
            return Err(format!("cluster domain {dotted:?} is too long"));
        }
        Ok(Zone {
            wire,
            dotted: trimmed,
            labels,
        })
    }
}

/// Appends one lowercase label; `None` when it is empty or longer than 63 bytes.
pub fn push_label(out: &mut Vec<u8>, label: &[u8]) -> Option<()> {
    if label.is_empty() || label.len() > MAX_LABEL {
        return None;
    }
    out.push(label.len() as u8);
    out.extend(label.iter().map(u8::to_ascii_lowercase));
    Some(())
}

/// Builds a relative key from labels given most-specific first.
pub fn key(labels: &[&str]) -> Option<Box<[u8]>> {
    let mut out = Vec::with_capacity(labels.iter().map(|l| l.len() + 1).sum());
    for label in labels {
        push_label(&mut out, label.as_bytes())?;
    }
    Some(out.into_boxed_slice())
}

/// Prepends labels to an existing relative key.
pub fn prefixed(prefix: &[&str], base: &[u8]) -> Option<Box<[u8]>> {
    let mut out =
        Vec::with_capacity(base.len() + prefix.iter().map(|l| l.len() + 1).sum::<usize>());
    for label in prefix {
        push_label(&mut out, label.as_bytes())?;
    }
    out.extend_from_slice(base);
    Some(out.into_boxed_slice())
}

/// Encodes an absolute dotted name (e.g. an ExternalName target) keeping its case.
pub fn absolute_wire(dotted: &str) -> Option<Box<[u8]>> {
    let trimmed = dotted.trim_end_matches('.');
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then(|| out.into_boxed_slice())
}

/// The label used for an endpoint without a hostname: its address with `.` or `:` replaced by `-`
/// (CoreDNS's form; IPv6 uses the canonical compressed text, so `fd00::1` becomes `fd00--1`).
pub fn dashed_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// Parses a dashed-IP label back into an address (`10-0-0-1`, `fd00--1`).
pub fn parse_dashed_ip(label: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(label).ok()?;
    if text.bytes().filter(|b| *b == b'-').count() == 3 && !text.contains(':') {
        let v4: Ipv4Addr = text.replace('-', ".").parse().ok()?;
        return Some(IpAddr::V4(v4));
    }
    let v6: Ipv6Addr = text.replace('-', ":").parse().ok()?;
    Some(IpAddr::V6(v6))
}

/// Splits a lowercase wire name into label slices (most-specific first).
pub fn labels_of(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let len = *wire.get(pos)? as usize;
        if len == 0 {
            return None;
        }
        let label = wire.get(pos + 1..pos + 1 + len)?;
        pos += 1 + len;
        Some(label)
    })
}

/// Splits a wire name into at most `N` labels without allocating; `None` when there are more.
pub fn split_labels<'a, const N: usize>(wire: &'a [u8], out: &mut [&'a [u8]; N]) -> Option<usize> {
    let mut n = 0;
    for label in labels_of(wire) {
        *out.get_mut(n)? = label;
        n += 1;
    }
    Some(n)
}

/// Parses the labels of a reverse name below `in-addr.arpa` / `ip6.arpa` into an address.
/// `labels` are the labels before the reverse suffix, most-specific first.
pub fn parse_reverse(wire: &[u8]) -> Option<IpAddr> {
    let mut array: [&[u8]; 34] = [&[]; 34];
    let n = split_labels(wire, &mut array)?;
    let labels = &array[..n];
    if n == 6 && labels[4] == b"in-addr" && labels[5] == b"arpa" {
        let mut octets = [0u8; 4];
        for (i, label) in labels[..4].iter().enumerate() {
            let text = std::str::from_utf8(label).ok()?;
            if text.len() > 1 && text.starts_with('0') {
                return None;
            }
            octets[3 - i] = text.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if n == 34 && labels[32] == b"ip6" && labels[33] == b"arpa" {
        let mut value: u128 = 0;
        for label in labels[..32].iter().rev() {
            if label.len() != 1 {
                return None;
            }
            let digit = (label[0] as char).to_digit(16)?;
            value = (value << 4) | u128::from(digit);
        }
        return Some(IpAddr::V6(Ipv6Addr::from(value)));
    }
    None
}

/// The reverse name of an address as a dotted string (for tests and logs).
pub fn reverse_dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                s.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// Dotted form of a wire name (relative or absolute), for logs and tests.
pub fn to_dotted(wire: &[u8]) -> String {
    let mut out = String::new();
    for label in labels_of(wire) {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashed_round_trip() {
        for ip in ["10.1.2.3", "fd00::1", "2001:db8::a:1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let dashed = dashed_ip(ip);
            assert_eq!(parse_dashed_ip(dashed.as_bytes()), Some(ip), "{dashed}");
        }
        assert_eq!(parse_dashed_ip(b"10-1-2"), None);
        assert_eq!(parse_dashed_ip(b"web"), None);
    }

    #[test]
    fn reverse_round_trip() {
        for ip in ["10.96.0.10", "fd00:10:96::a", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let dotted = reverse_dotted(ip);
            let mut wire = Vec::new();
            for label in dotted.split('.') {
                push_label(&mut wire, label.as_bytes()).unwrap();
            }
            wire.push(0);
            assert_eq!(parse_reverse(&wire), Some(ip), "{dotted}");
        }
    }

    #[test]
    fn zone_parsing() {
        let zone = Zone::new("Cluster.Local.").unwrap();
        assert_eq!(zone.wire, b"\x07cluster\x05local\x00");
        assert_eq!(zone.labels, 2);
        assert!(Zone::new("").is_err());
        assert!(Zone::new("a..b").is_err());
    }
}
