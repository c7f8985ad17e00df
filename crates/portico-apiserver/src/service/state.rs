//! The in-memory picture of what is allocated: one `FamilyRanges` per configured family and
//! the node-port range, plus the picks of writes still in flight. It is a fast hint for picking
//! free values; the store's compare-and-swap on IPAddress and node-port keys is what makes an
//! allocation unique across API servers.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use portico_core::service::IpFamily;
use portico_core::service::alloc::{AllocError, Allocator, FamilyRanges, IpRange, PortRange};
use rand::Rng;

#[derive(Debug)]
pub(crate) struct AllocState {
    /// Configured families, primary first (from `--service-cluster-ip-range`).
    pub families: Vec<IpFamily>,
    pub ranges: BTreeMap<IpFamily, FamilyRanges>,
    /// CIDRs contributed by each ServiceCIDR object (the flag's ranges are under `""`).
    pub cidr_sources: BTreeMap<String, Vec<IpNet>>,
    pub ports: PortRange,
    /// Addresses known allocated (from the store) that lie in no configured range.
    pub outside: HashSet<IpAddr>,
    /// Picks of writes not yet committed or abandoned.
    pub pending_ips: HashSet<IpAddr>,
    pub pending_ports: HashSet<i32>,
}

impl AllocState {
    pub fn new(flag_ranges: &[IpNet], ports: std::ops::RangeInclusive<u16>) -> Self {
        let mut s = AllocState {
            families: Vec::new(),
            ranges: BTreeMap::new(),
            cidr_sources: BTreeMap::new(),
            ports: PortRange::new(ports),
            outside: HashSet::new(),
            pending_ips: HashSet::new(),
            pending_ports: HashSet::new(),
        };
        for net in flag_ranges {
            let fam = if net.addr().is_ipv4() {
                IpFamily::V4
            } else {
                IpFamily::V6
            };
            if !s.families.contains(&fam) {
                s.families.push(fam);
            }
        }
        s.set_source("", flag_ranges.to_vec());
        s
    }

    /// Replaces the CIDRs one ServiceCIDR contributes (empty removes them). Families that the
    /// flags did not configure are ignored, as upstream does.
    pub fn set_source(&mut self, name: &str, cidrs: Vec<IpNet>) {
        let cidrs: Vec<IpNet> = cidrs
            .into_iter()
            .map(|c| c.trunc())
            .filter(|c| {
                self.families.contains(&if c.addr().is_ipv4() {
                    IpFamily::V4
                } else {
                    IpFamily::V6
                })
            })
            .collect();
        if cidrs.is_empty() {
            self.cidr_sources.remove(name);
        } else {
            self.cidr_sources.insert(name.to_string(), cidrs);
        }
        self.rebuild_ranges();
    }

    fn rebuild_ranges(&mut self) {
        // Keep what is allocated, then lay it onto the new set of ranges.
        let mut allocated: Vec<(IpAddr, bool)> = Vec::new();
        for fr in self.ranges.values() {
            for r in &fr.ranges {
                allocated.extend(allocated_in(r));
            }
        }
        allocated.extend(self.outside.drain().map(|ip| (ip, false)));
        let mut wanted: Vec<IpNet> = Vec::new();
        if let Some(flag) = self.cidr_sources.get("") {
            wanted.extend(flag.iter().copied());
        }
        for (name, cidrs) in &self.cidr_sources {
            if !name.is_empty() {
                for c in cidrs {
                    if !wanted.contains(c) {
                        wanted.push(*c);
                    }
                }
            }
        }
        let mut ranges: BTreeMap<IpFamily, FamilyRanges> = BTreeMap::new();
        for c in wanted {
            let fam = if c.addr().is_ipv4() {
                IpFamily::V4
            } else {
                IpFamily::V6
            };
            ranges.entry(fam).or_default().ranges.push(IpRange::new(c));
        }
        self.ranges = ranges;
        for (ip, _) in allocated {
            self.mark_ip(ip);
        }
    }

    /// Marks `ip` allocated wherever it falls (a range, or outside all ranges).
    pub fn mark_ip(&mut self, ip: IpAddr) {
        let fam = IpFamily::of(&ip);
        match self.ranges.get_mut(&fam).and_then(|f| f.find_mut(&ip)) {
            Some(r) => {
                let _ = r.allocate(&ip);
            }
            None => {
                self.outside.insert(ip);
            }
        }
    }

    pub fn unmark_ip(&mut self, ip: IpAddr) {
        if self.pending_ips.contains(&ip) {
            return;
        }
        let fam = IpFamily::of(&ip);
        if let Some(f) = self.ranges.get_mut(&fam) {
            f.release(&ip);
        }
        self.outside.remove(&ip);
    }

    pub fn mark_port(&mut self, port: i32) {
        let _ = self.ports.allocate(port);
    }

    pub fn unmark_port(&mut self, port: i32) {
        if !self.pending_ports.contains(&port) {
            self.ports.release(port);
        }
    }

    /// Whether `ip` lies in a configured range.
    pub fn ip_in_range(&self, ip: &IpAddr) -> bool {
        self.ranges
            .get(&IpFamily::of(ip))
            .is_some_and(|f| f.contains(ip))
    }
}

fn allocated_in(r: &IpRange) -> Vec<(IpAddr, bool)> {
    let mut out = Vec::new();
    let first = r.first_address();
    if r.is_allocated(&first) {
        out.push((first, true));
    }
    // Walk the tracked window; explicit picks beyond it are rare (IPv6 /64) and re-learned
    // from the store on the next sync.
    let bm = r.bitmap();
    let base = first;
    for i in 1..bm.size() {
        if bm.has(i) {
            out.push((offset_ip(base, i as u128), true));
        }
    }
    out
}

fn offset_ip(base: IpAddr, by: u128) -> IpAddr {
    match base {
        IpAddr::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(v4).wrapping_add(by as u32),
        )),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6).wrapping_add(by))),
    }
}

/// One write's view of the pools: every take sets the bit at once (so a second pick in the
/// same write cannot collide) and is remembered so the write can roll back or hand the picks
/// over as pending.
pub(crate) struct WriteAlloc<'a, R: Rng> {
    pub state: &'a mut AllocState,
    pub rng: &'a mut R,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<i32>,
}

impl<'a, R: Rng> WriteAlloc<'a, R> {
    pub fn new(state: &'a mut AllocState, rng: &'a mut R) -> Self {
        WriteAlloc {
            state,
            rng,
            ips: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// Undoes every take (failed write or dry run).
    pub fn rollback(self) {
        for ip in self.ips {
            let fam = IpFamily::of(&ip);
            if let Some(f) = self.state.ranges.get_mut(&fam) {
                f.release(&ip);
            }
        }
        for p in self.ports {
            self.state.ports.release(p);
        }
    }

    /// Keeps the takes as pending picks until `finish`.
    pub fn keep(self) -> (Vec<IpAddr>, Vec<i32>) {
        for ip in &self.ips {
            self.state.pending_ips.insert(*ip);
        }
        for p in &self.ports {
            self.state.pending_ports.insert(*p);
        }
        (self.ips, self.ports)
    }
}

impl<R: Rng> Allocator for WriteAlloc<'_, R> {
    fn families(&self) -> Vec<IpFamily> {
        self.state.families.clone()
    }

    fn allocate_ip(&mut self, family: IpFamily, ip: Option<IpAddr>) -> Result<IpAddr, AllocError> {
        let Some(fr) = self.state.ranges.get_mut(&family) else {
            return Err(AllocError::Full);
        };
        let ip = match ip {
            Some(ip) => {
                if self.state.outside.contains(&ip) {
                    return Err(AllocError::IpAllocated);
                }
                fr.allocate(&ip)?;
                ip
            }
            None => {
                let ip = fr.pick(self.rng).ok_or(AllocError::Full)?;
                fr.allocate(&ip)?;
                ip
            }
        };
        self.ips.push(ip);
        Ok(ip)
    }

    fn allocate_port(&mut self, port: Option<i32>) -> Result<i32, AllocError> {
        let p = match port {
            Some(p) => {
                self.state.ports.allocate(p)?;
                p
            }
            None => {
                let p = self.state.ports.pick(self.rng).ok_or(AllocError::Full)? as i32;
                self.state.ports.allocate(p)?;
                p
            }
        };
        self.ports.push(p);
        Ok(p)
    }
}
