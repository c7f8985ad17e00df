//! Address pools for `type: LoadBalancer` Services, parsed from `--load-balancer-ip-range`
//! (comma-separated CIDRs or `first-last` ranges, one or two families). Pure: allocation is a
//! function of the pools and the addresses in use; the lowest free address is chosen so that
//! results are reproducible.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    IPv4,
    IPv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::IPv4
        } else {
            Family::IPv6
        }
    }

    pub fn parse(value: &str) -> Option<Family> {
        match value {
            "IPv4" => Some(Family::IPv4),
            "IPv6" => Some(Family::IPv6),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        }
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(family: Family, n: u128) -> IpAddr {
    match family {
        Family::IPv4 => IpAddr::V4(std::net::Ipv4Addr::from(n as u32)),
        Family::IPv6 => IpAddr::V6(std::net::Ipv6Addr::from(n)),
    }
}

/// An inclusive range of addresses of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRange {
    pub family: Family,
    pub first: IpAddr,
    pub last: IpAddr,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family
            && to_u128(ip) >= to_u128(self.first)
            && to_u128(ip) <= to_u128(self.last)
    }

    pub fn size(&self) -> u128 {
        to_u128(self.last) - to_u128(self.first) + 1
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The configured pools; empty when the flag is not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pools {
    pub ranges: Vec<IpRange>,
}

/// Why no address could be given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    NoPool { family: Option<Family> },
    Exhausted { family: Family },
    InUse { ip: IpAddr, by: String },
    NotInPool { ip: IpAddr },
    Invalid { value: String },
}

impl AllocError {
    /// The condition/Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::NoPool { .. } => "NoPoolConfigured",
            AllocError::Exhausted { .. } => "PoolExhausted",
            AllocError::InUse { .. } => "AddressInUse",
            AllocError::NotInPool { .. } => "AddressNotInPool",
            AllocError::Invalid { .. } => "InvalidAddress",
        }
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::NoPool { family: None } => {
                write!(
                    f,
                    "no load-balancer address pool is configured (start the controllers with --load-balancer-ip-range)"
                )
            }
            AllocError::NoPool {
                family: Some(family),
            } => {
                write!(
                    f,
                    "no load-balancer address pool is configured for {} (see --load-balancer-ip-range)",
                    family.as_str()
                )
            }
            AllocError::Exhausted { family } => write!(
                f,
                "the {} load-balancer address pool is exhausted",
                family.as_str()
            ),
            AllocError::InUse { ip, by } => write!(
                f,
                "requested address {ip} is already in use by Service {by}"
            ),
            AllocError::NotInPool { ip } => write!(
                f,
                "requested address {ip} is not in any load-balancer address pool"
            ),
            AllocError::Invalid { value } => {
                write!(f, "spec.loadBalancerIP {value:?} is not a valid IP address")
            }
        }
    }
}

impl FromStr for Pools {
    type Err = String;

    fn from_str(value: &str) -> Result<Pools, String> {
        let mut ranges = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let range = if let Some((a, b)) = part.split_once('-') {
                let first: IpAddr = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid address {a:?} in range {part:?}"))?;
                let last: IpAddr = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid address {b:?} in range {part:?}"))?;
                if Family::of(first) != Family::of(last) {
                    return Err(format!("range {part:?} mixes address families"));
                }
                if to_u128(first) > to_u128(last) {
                    return Err(format!("range {part:?} ends before it starts"));
                }
                IpRange {
                    family: Family::of(first),
                    first,
                    last,
                }
            } else {
                let net: ipnet::IpNet = part
                    .parse()
                    .map_err(|_| format!("invalid CIDR or range {part:?}"))?;
                IpRange {
                    family: Family::of(net.network()),
                    first: net.network(),
                    last: net.broadcast(),
                }
            };
            if ranges.iter().any(|r: &IpRange| {
                r.family == range.family
                    && to_u128(r.first) <= to_u128(range.last)
                    && to_u128(range.first) <= to_u128(r.last)
            }) {
                return Err(format!("range {part:?} overlaps another range"));
            }
            ranges.push(range);
        }
        Ok(Pools { ranges })
    }
}

impl Pools {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    pub fn has_family(&self, family: Family) -> bool {
        self.ranges.iter().any(|r| r.family == family)
    }

    /// The lowest free address of `family`.
    pub fn allocate(&self, family: Family, in_use: &HashSet<IpAddr>) -> Result<IpAddr, AllocError> {
        if !self.has_family(family) {
            return Err(AllocError::NoPool {
                family: if self.is_empty() { None } else { Some(family) },
            });
        }
        for range in self.ranges.iter().filter(|r| r.family == family) {
            // At most |in_use| + 1 candidates are ever examined per range.
            let limit = range.size().min(in_use.len() as u128 + 1);
            let start = to_u128(range.first);
            for offset in 0..limit {
                let ip = from_u128(family, start + offset);
                if !in_use.contains(&ip) {
                    return Ok(ip);
                }
            }
        }
        Err(AllocError::Exhausted { family })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cases() {
        let ok = [
            "192.0.2.0/30",
            "192.0.2.10-192.0.2.20,2001:db8::/126",
            " 198.51.100.7-198.51.100.7 ",
        ];
        for case in ok {
            assert!(case.parse::<Pools>().is_ok(), "{case}");
        }
        let bad = [
            ("192.0.2.0/33", "invalid CIDR"),
            ("192.0.2.9-192.0.2.1", "ends before"),
            ("192.0.2.1-2001:db8::1", "mixes"),
            ("192.0.2.0/24,192.0.2.128/25", "overlaps"),
            ("nonsense", "invalid CIDR"),
        ];
        for (case, want) in bad {
            let err = case.parse::<Pools>().unwrap_err();
            assert!(err.contains(want), "{case}: {err}");
        }
        assert!("".parse::<Pools>().unwrap().is_empty());
    }

    #[test]
    fn allocation() {
        let pools: Pools = "192.0.2.0/31,198.51.100.5-198.51.100.5".parse().unwrap();
        let mut used = HashSet::new();
        let mut got = Vec::new();
        for _ in 0..3 {
            let ip = pools.allocate(Family::IPv4, &used).unwrap();
            used.insert(ip);
            got.push(ip.to_string());
        }
        assert_eq!(got, ["192.0.2.0", "192.0.2.1", "198.51.100.5"]);
        assert_eq!(
            pools.allocate(Family::IPv4, &used),
            Err(AllocError::Exhausted {
                family: Family::IPv4
            })
        );
        assert_eq!(
            pools.allocate(Family::IPv6, &used),
            Err(AllocError::NoPool {
                family: Some(Family::IPv6)
            })
        );
        assert_eq!(
            Pools::default().allocate(Family::IPv4, &used),
            Err(AllocError::NoPool { family: None })
        );
        let v6: Pools = "2001:db8::/64".parse().unwrap();
        assert_eq!(
            v6.allocate(Family::IPv6, &HashSet::new())
                .unwrap()
                .to_string(),
            "2001:db8::"
        );
    }
}
