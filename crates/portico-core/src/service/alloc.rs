//! Allocation of cluster IPs and node ports, as kube-apiserver does it.
//!
//! `Bitmap` has upstream's two bands: a static band at the bottom (offset
//! `min(max(16, size/step), cap)`) kept for explicitly requested values, and a dynamic band
//! above it. A dynamic pick starts at a random place in the upper band and scans it (wrapping),
//! then does the same in the lower band. Scans go a 64-bit word at a time, so a pick in a /16
//! that is 99% full touches at most ~1,000 words.
//!
//! `IpRange` / `PortRange` map addresses and ports onto bitmaps with upstream's error texts;
//! `allocate_create` / `allocate_update` decide what a Service write takes and releases,
//! through the `Allocator` trait so the caller decides what "reserve" means (memory, dry run).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use rand::Rng;

use super::*;
use crate::field::FieldError;
use crate::validation::parse_ip;

/// Upstream's allocator errors; `Display` is the exact text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    Full,
    IpAllocated,
    IpNotInRange { ip: String, valid: String },
    PortAllocated,
    PortNotInRange { valid: String },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Full => write!(f, "range is full"),
            AllocError::IpAllocated => write!(f, "provided IP is already allocated"),
            AllocError::IpNotInRange { ip, valid } => {
                write!(
                    f,
                    "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {valid}"
                )
            }
            AllocError::PortAllocated => write!(f, "provided port is already allocated"),
            AllocError::PortNotInRange { valid } => {
                write!(
                    f,
                    "provided port is not in the valid range. The range of valid ports is {valid}"
                )
            }
        }
    }
}

/// A fixed-size bit set with upstream's static/dynamic band split.
#[derive(Clone, Debug)]
pub struct Bitmap {
    words: Vec<u64>,
    size: usize,
    offset: usize,
    count: usize,
}

/// `min(max(min, size/step), max)`, or 0 when the range is smaller than `min`.
pub fn range_offset(size: usize, min: usize, step: usize, max: usize) -> usize {
    if size < min {
        return 0;
    }
    (size / step).clamp(min, max)
}

impl Bitmap {
    pub fn new(size: usize, offset: usize) -> Self {
        Bitmap {
            words: vec![0; size.div_ceil(64)],
            size,
            offset: offset.min(size),
            count: 0,
        }
    }
    pub fn size(&self) -> usize {
        self.size
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn count(&self) -> usize {
        self.count
    }
    pub fn free(&self) -> usize {
        self.size - self.count
    }
    pub fn has(&self, i: usize) -> bool {
        i < self.size && self.words[i / 64] & (1 << (i % 64)) != 0
    }
    /// Sets bit `i`; false when it was already set or out of range.
    pub fn set(&mut self, i: usize) -> bool {
        if i >= self.size || self.has(i) {
            return false;
        }
        self.words[i / 64] |= 1 << (i % 64);
        self.count += 1;
        true
    }
    /// Clears bit `i`; false when it was not set.
    pub fn clear(&mut self, i: usize) -> bool {
        if !self.has(i) {
            return false;
        }
        self.words[i / 64] &= !(1 << (i % 64));
        self.count -= 1;
        true
    }

    /// First clear bit in `[from, to)`, scanning words.
    fn first_clear(&self, from: usize, to: usize) -> Option<usize> {
        let mut i = from;
        while i < to {
            let w = i / 64;
            let bit = i % 64;
            let free = !self.words[w] & (u64::MAX << bit);
            if free != 0 {
                let at = w * 64 + free.trailing_zeros() as usize;
                return (at < to).then_some(at);
            }
            i = (w + 1) * 64;
        }
        None
    }

    /// First clear bit scanning `[lo, hi)` from `start`, wrapping once.
    fn scan_band(&self, lo: usize, hi: usize, start: usize) -> Option<usize> {
        self.first_clear(start, hi)
            .or_else(|| self.first_clear(lo, start))
    }

    /// Picks a clear bit the way upstream's `randomScanStrategyWithOffset` does, without setting it.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        if self.count >= self.size {
            return None;
        }
        let (lo, hi) = (self.offset, self.size);
        if hi > lo {
            let start = lo + rng.random_range(0..hi - lo);
            if let Some(i) = self.scan_band(lo, hi, start) {
                return Some(i);
            }
        }
        if self.offset > 0 {
            let start = rng.random_range(0..self.offset);
            return self.scan_band(0, self.offset, start);
        }
        None
    }

    /// The naive scan used as a baseline in the benchmark: every bit from a random start.
    pub fn pick_linear<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        if self.size == 0 {
            return None;
        }
        let start = rng.random_range(0..self.size);
        (0..self.size)
            .map(|k| (start + k) % self.size)
            .find(|&i| !self.has(i))
    }
}

/// Largest number of addresses tracked per range; bigger ranges (IPv6 /64) use their first
/// 2^20 addresses for dynamic picks, while explicit requests anywhere in the CIDR are accepted.
pub const MAX_TRACKED_ADDRESSES: u128 = 1 << 20;

/// One service CIDR: usable addresses are `network+1 ..` (IPv4 also loses the broadcast),
/// and the first usable address belongs to the `kubernetes` Service.
#[derive(Clone, Debug)]
pub struct IpRange {
    pub cidr: IpNet,
    base: u128,
    /// Usable addresses in the whole CIDR.
    usable: u128,
    bitmap: Bitmap,
    /// Explicit allocations beyond the tracked window.
    beyond: BTreeSet<u128>,
    /// Bit 0 is kept set so dynamic picks skip the `kubernetes` address.
    reserved_bit: bool,
    kubernetes_taken: bool,
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl IpRange {
    pub fn new(cidr: IpNet) -> Self {
        let cidr = cidr.trunc();
        let host_bits = (cidr.max_prefix_len() - cidr.prefix_len()) as u32;
        let total: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        let usable = match cidr {
            IpNet::V4(_) => total.saturating_sub(2),
            IpNet::V6(_) => total.saturating_sub(1),
        };
        let tracked = usable.min(MAX_TRACKED_ADDRESSES) as usize;
        let offset = range_offset(tracked, 16, 16, 256);
        let mut bitmap = Bitmap::new(tracked, offset);
        // The first usable address is the `kubernetes` Service's; only an explicit request takes it.
        let reserved_bit = bitmap.set(0);
        IpRange {
            cidr,
            base: ip_to_u128(cidr.network()) + 1,
            usable,
            bitmap,
            beyond: BTreeSet::new(),
            reserved_bit,
            kubernetes_taken: false,
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.index(ip).is_some()
    }

    fn index(&self, ip: &IpAddr) -> Option<u128> {
        if !self.cidr.contains(ip) {
            return None;
        }
        let v = ip_to_u128(*ip);
        (v >= self.base && v - self.base < self.usable).then(|| v - self.base)
    }

    fn addr(&self, idx: u128) -> IpAddr {
        match self.cidr {
            IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from((self.base + idx) as u32)),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(self.base + idx)),
        }
    }

    /// The address reserved for the `kubernetes` Service.
    pub fn first_address(&self) -> IpAddr {
        self.addr(0)
    }

    /// Marks `ip` allocated (`Allocate`). The reserved first address is accepted once.
    pub fn allocate(&mut self, ip: &IpAddr) -> Result<(), AllocError> {
        let Some(idx) = self.index(ip) else {
            return Err(AllocError::IpNotInRange {
                ip: ip.to_string(),
                valid: self.cidr.to_string(),
            });
        };
        if idx == 0 {
            return if self.kubernetes_taken {
                Err(AllocError::IpAllocated)
            } else {
                self.take_first()
            };
        }
        let ok = if idx < self.bitmap.size() as u128 {
            self.bitmap.set(idx as usize)
        } else {
            self.beyond.insert(idx)
        };
        if ok {
            Ok(())
        } else {
            Err(AllocError::IpAllocated)
        }
    }

    fn take_first(&mut self) -> Result<(), AllocError> {
        self.kubernetes_taken = true;
        Ok(())
    }

    pub fn is_allocated(&self, ip: &IpAddr) -> bool {
        match self.index(ip) {
            Some(0) => self.kubernetes_taken,
            Some(i) if i < self.bitmap.size() as u128 => self.bitmap.has(i as usize),
            Some(i) => self.beyond.contains(&i),
            None => false,
        }
    }

    pub fn release(&mut self, ip: &IpAddr) -> bool {
        match self.index(ip) {
            Some(0) => std::mem::replace(&mut self.kubernetes_taken, false),
            Some(i) if i < self.bitmap.size() as u128 => self.bitmap.clear(i as usize),
            Some(i) => self.beyond.remove(&i),
            None => false,
        }
    }

    /// Picks a free address without taking it.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<IpAddr> {
        self.bitmap.pick(rng).map(|i| self.addr(i as u128))
    }

    /// Allocated addresses (the reserved first one only when a Service holds it).
    pub fn used(&self) -> usize {
        self.bitmap.count() - usize::from(self.reserved_bit)
            + self.beyond.len()
            + usize::from(self.kubernetes_taken)
    }

    pub fn free(&self) -> usize {
        self.bitmap.free()
    }

    pub fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }
}

/// The node-port range with upstream's band split (offset `min(max(16, size/32), 128)`).
#[derive(Clone, Debug)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    bitmap: Bitmap,
}

impl PortRange {
    pub fn new(range: std::ops::RangeInclusive<u16>) -> Self {
        let (first, last) = (*range.start(), *range.end());
        let size = if last >= first {
            (last - first) as usize + 1
        } else {
            0
        };
        PortRange {
            first,
            last,
            bitmap: Bitmap::new(size, range_offset(size, 16, 32, 128)),
        }
    }
    /// `30000-32767`, as upstream prints a port range.
    pub fn describe(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }
    pub fn contains(&self, port: i32) -> bool {
        port >= self.first as i32 && port <= self.last as i32
    }
    pub fn allocate(&mut self, port: i32) -> Result<(), AllocError> {
        if !self.contains(port) {
            return Err(AllocError::PortNotInRange {
                valid: self.describe(),
            });
        }
        if self.bitmap.set((port - self.first as i32) as usize) {
            Ok(())
        } else {
            Err(AllocError::PortAllocated)
        }
    }
    pub fn is_allocated(&self, port: i32) -> bool {
        self.contains(port) && self.bitmap.has((port - self.first as i32) as usize)
    }
    pub fn release(&mut self, port: i32) -> bool {
        self.contains(port) && self.bitmap.clear((port - self.first as i32) as usize)
    }
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<u16> {
        self.bitmap.pick(rng).map(|i| self.first + i as u16)
    }
    pub fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }
}

/// All ranges of one family, the flag's range first; dynamic picks use later ranges only when
/// earlier ones are full.
#[derive(Clone, Debug, Default)]
pub struct FamilyRanges {
    pub ranges: Vec<IpRange>,
}

impl FamilyRanges {
    pub fn describe(&self) -> String {
        self.ranges
            .iter()
            .map(|r| r.cidr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
    pub fn find_mut(&mut self, ip: &IpAddr) -> Option<&mut IpRange> {
        self.ranges.iter_mut().find(|r| r.contains(ip))
    }
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }
    pub fn is_allocated(&self, ip: &IpAddr) -> bool {
        self.ranges.iter().any(|r| r.is_allocated(ip))
    }
    pub fn allocate(&mut self, ip: &IpAddr) -> Result<(), AllocError> {
        let valid = self.describe();
        match self.find_mut(ip) {
            Some(r) => r.allocate(ip),
            None => Err(AllocError::IpNotInRange {
                ip: ip.to_string(),
                valid,
            }),
        }
    }
    pub fn release(&mut self, ip: &IpAddr) -> bool {
        self.ranges.iter_mut().any(|r| r.release(ip))
    }
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<IpAddr> {
        self.ranges.iter().find_map(|r| r.pick(rng))
    }
}

/// What a Service write may take from the pools. Implementations decide whether a take is a
/// real reservation (and remember it for rollback) or a dry run.
pub trait Allocator {
    /// Families configured on the cluster, primary first.
    fn families(&self) -> Vec<IpFamily>;
    /// Takes `ip` (`Some`) or any free address of `family` (`None`).
    fn allocate_ip(&mut self, family: IpFamily, ip: Option<IpAddr>) -> Result<IpAddr, AllocError>;
    /// Takes `port` (`Some`) or any free node port (`None`).
    fn allocate_port(&mut self, port: Option<i32>) -> Result<i32, AllocError>;
}

/// Why an allocation step failed, in upstream's shape.
#[derive(Clone, Debug, PartialEq)]
pub enum AllocFailure {
    /// 422 Invalid with these causes.
    Invalid(Vec<FieldError>),
    /// 500 InternalError with this text (after `Internal error occurred: `).
    Internal(String),
}

/// What a write frees when it commits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub ips: Vec<IpAddr>,
    pub ports: Vec<i32>,
}

fn alloc_ip_invalid(svc: &Service, ip: &str, e: AllocError) -> AllocFailure {
    AllocFailure::Invalid(vec![FieldError::invalid(
        "spec.clusterIPs",
        go_string_slice(
            "string",
            svc.spec.as_ref().and_then(|s| s.cluster_ips.as_deref()),
        ),
        format!("failed to allocate IP {ip}: {e}"),
    )])
}

fn alloc_ips_for(
    svc: &mut Service,
    wanted: &[(IpFamily, String)],
    alloc: &mut dyn Allocator,
) -> Result<Vec<(IpFamily, IpAddr)>, AllocFailure> {
    let mut out = Vec::new();
    for (fam, ip) in wanted {
        if ip.is_empty() {
            match alloc.allocate_ip(*fam, None) {
                Ok(a) => out.push((*fam, a)),
                Err(e) => {
                    return Err(AllocFailure::Internal(format!(
                        "failed to allocate a serviceIP: {e}"
                    )));
                }
            }
        } else {
            let Some(addr) = parse_ip(ip) else {
                return Err(alloc_ip_invalid(
                    svc,
                    ip,
                    AllocError::IpNotInRange {
                        ip: ip.clone(),
                        valid: String::new(),
                    },
                ));
            };
            match alloc.allocate_ip(*fam, Some(addr)) {
                Ok(a) => out.push((*fam, a)),
                Err(e) => return Err(alloc_ip_invalid(svc, ip, e)),
            }
        }
    }
    Ok(out)
}

/// Fills clusterIPs for every family in `ipFamilies` (`allocClusterIPs`).
fn alloc_cluster_ips(svc: &mut Service, alloc: &mut dyn Allocator) -> Result<(), AllocFailure> {
    if service_type(svc) == TYPE_EXTERNAL_NAME
        || cluster_ips(svc)
            .first()
            .is_some_and(|i| i == CLUSTER_IP_NONE)
    {
        return Ok(());
    }
    let fams: Vec<IpFamily> = ip_families(svc)
        .iter()
        .filter_map(|f| IpFamily::parse(f))
        .collect();
    let mut ips = cluster_ips(svc).to_vec();
    while ips.len() < fams.len() {
        ips.push(String::new());
    }
    let wanted: Vec<(IpFamily, String)> = fams.iter().copied().zip(ips.iter().cloned()).collect();
    let got = alloc_ips_for(svc, &wanted, alloc)?;
    for (i, (_, ip)) in got.iter().enumerate() {
        ips[i] = ip.to_string();
    }
    let spec = spec_mut(svc);
    if let Some(first) = ips.first() {
        spec.cluster_ip = Some(first.clone());
    }
    spec.cluster_ips = Some(ips);
    Ok(())
}

fn node_port_invalid(i: usize, port: i32, e: AllocError) -> AllocFailure {
    AllocFailure::Invalid(vec![FieldError::invalid(
        format!("spec.ports[{i}].nodePort"),
        port.to_string(),
        e.to_string(),
    )])
}

/// `initNodePorts`: the same port number shares one node port across protocols; requested
/// ports are honoured; new ones only when `should_allocate_node_ports`.
fn init_node_ports(svc: &mut Service, alloc: &mut dyn Allocator) -> Result<(), AllocFailure> {
    let allocate_new = should_allocate_node_ports(svc);
    let snapshot = ports(svc).to_vec();
    let mut by_port: BTreeMap<i32, i32> = BTreeMap::new();
    let spec = spec_mut(svc);
    for (i, sp) in spec.ports.iter_mut().flatten().enumerate() {
        let np = sp.node_port.unwrap_or(0);
        if np == 0 && !allocate_new {
            continue;
        }
        match by_port.get(&sp.port).copied() {
            None => {
                let requested = snapshot
                    .iter()
                    .skip(i)
                    .find(|p| p.port == sp.port && p.node_port.unwrap_or(0) != 0)
                    .and_then(|p| p.node_port);
                let got = match requested {
                    Some(r) => alloc
                        .allocate_port(Some(r))
                        .map_err(|e| node_port_invalid(i, r, e))?,
                    None => alloc.allocate_port(None).map_err(|e| {
                        AllocFailure::Internal(format!("failed to allocate a nodePort: {e}"))
                    })?,
                };
                sp.node_port = Some(got);
                by_port.insert(sp.port, got);
            }
            Some(shared) if np != shared => {
                if np == 0 {
                    sp.node_port = Some(shared);
                } else {
                    alloc
                        .allocate_port(Some(np))
                        .map_err(|e| node_port_invalid(i, np, e))?;
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn alloc_health_check_node_port(
    svc: &mut Service,
    alloc: &mut dyn Allocator,
) -> Result<(), AllocFailure> {
    let hc = health_check_node_port(svc);
    if hc != 0 {
        alloc.allocate_port(Some(hc)).map_err(|e| {
            AllocFailure::Internal(format!(
                "failed to allocate requested HealthCheck NodePort {hc}: {e}"
            ))
        })?;
    } else {
        let got = alloc.allocate_port(None).map_err(|e| {
            AllocFailure::Internal(format!("failed to allocate a HealthCheck NodePort 0: {e}"))
        })?;
        spec_mut(svc).health_check_node_port = Some(got);
    }
    Ok(())
}

/// Allocation for a create (`allocateCreate` after `initIPFamilyFields`). On error the caller
/// rolls back whatever the allocator took.
pub fn allocate_create(svc: &mut Service, alloc: &mut dyn Allocator) -> Result<(), AllocFailure> {
    alloc_cluster_ips(svc, alloc)?;
    if needs_node_port(svc) {
        init_node_ports(svc, alloc)?;
    }
    if needs_health_check(svc) {
        alloc_health_check_node_port(svc, alloc)?;
    }
    Ok(())
}

fn family_ips(svc: &Service) -> Vec<(IpFamily, IpAddr)> {
    let fams = ip_families(svc);
    cluster_ips(svc)
        .iter()
        .enumerate()
        .filter_map(|(i, ip)| {
            let a = parse_ip(ip)?;
            let f = fams
                .get(i)
                .and_then(|f| IpFamily::parse(f))
                .unwrap_or(IpFamily::of(&a));
            Some((f, a))
        })
        .collect()
}

/// Every node port a Service of its type holds (ports and health-check port), deduplicated.
pub fn held_node_ports(svc: &Service) -> BTreeSet<i32> {
    let mut s: BTreeSet<i32> = if needs_node_port(svc) {
        ports(svc)
            .iter()
            .filter_map(|p| p.node_port)
            .filter(|&n| n > 0)
            .collect()
    } else {
        BTreeSet::new()
    };
    let hc = health_check_node_port(svc);
    if hc > 0 && needs_health_check(svc) {
        s.insert(hc);
    }
    s
}

/// Every cluster IP a Service holds.
pub fn held_ips(svc: &Service) -> Vec<IpAddr> {
    if service_type(svc) == TYPE_EXTERNAL_NAME {
        return Vec::new();
    }
    family_ips(svc).into_iter().map(|(_, a)| a).collect()
}

/// Allocation for an update (`allocateUpdate` after `initIPFamilyFields`): type changes to and
/// from ExternalName, dual-stack up/downgrades, node-port and health-check-port changes.
/// Returns what the write frees on commit.
pub fn allocate_update(
    svc: &mut Service,
    old: &Service,
    alloc: &mut dyn Allocator,
) -> Result<Released, AllocFailure> {
    let mut released = Released::default();
    let prefer_match = service_type(old) == service_type(svc)
        && ip_family_policy(old) == Some(PREFER_DUAL_STACK)
        && ip_family_policy(svc) == Some(PREFER_DUAL_STACK)
        && cluster_ips(old) == cluster_ips(svc)
        && ip_families(old) == ip_families(svc);
    if !prefer_match {
        let old_headless = cluster_ips(old)
            .first()
            .is_some_and(|i| i == CLUSTER_IP_NONE);
        if service_type(old) == TYPE_EXTERNAL_NAME && service_type(svc) != TYPE_EXTERNAL_NAME {
            alloc_cluster_ips(svc, alloc)?;
        } else if old_headless {
            // Headless Services hold no addresses.
        } else if service_type(svc) == TYPE_EXTERNAL_NAME {
            released
                .ips
                .extend(family_ips(old).into_iter().map(|(_, a)| a));
        } else {
            let (of, nf) = (ip_families(old).len(), ip_families(svc).len());
            if of == 1 && nf == 2 {
                let fam = IpFamily::parse(&ip_families(svc)[1]).unwrap_or(IpFamily::V6);
                let mut ips = cluster_ips(svc).to_vec();
                if ips.len() < 2 {
                    ips.push(String::new());
                }
                let got = alloc_ips_for(svc, &[(fam, ips[1].clone())], alloc)?;
                if let Some((_, a)) = got.first() {
                    ips[1] = a.to_string();
                }
                spec_mut(svc).cluster_ips = Some(ips);
            } else if of == 2
                && nf == 1
                && let Some(ip) = cluster_ips(old).get(1).and_then(|s| parse_ip(s))
            {
                released.ips.push(ip);
            }
        }
    }

    // Node ports: release everything when leaving NodePort/LoadBalancer.
    let old_ports: BTreeSet<i32> = ports(old)
        .iter()
        .filter_map(|p| p.node_port)
        .filter(|&n| n > 0)
        .collect();
    if needs_node_port(old) && !needs_node_port(svc) {
        released.ports.extend(old_ports.iter().copied());
    }
    if needs_node_port(svc) {
        let allocate_new = should_allocate_node_ports(svc);
        let mut taken_now = BTreeSet::new();
        let spec = spec_mut(svc);
        for (i, sp) in spec.ports.iter_mut().flatten().enumerate() {
            let np = sp.node_port.unwrap_or(0);
            if np == 0 && !allocate_new {
                continue;
            }
            if np != 0 {
                if !old_ports.contains(&np) && !taken_now.contains(&np) {
                    alloc
                        .allocate_port(Some(np))
                        .map_err(|e| node_port_invalid(i, np, e))?;
                    taken_now.insert(np);
                }
            } else {
                let got = alloc.allocate_port(None).map_err(|e| {
                    AllocFailure::Internal(format!("failed to allocate a nodePort: {e}"))
                })?;
                sp.node_port = Some(got);
            }
        }
        let new_ports: BTreeSet<i32> = ports(svc)
            .iter()
            .filter_map(|p| p.node_port)
            .filter(|&n| n > 0)
            .collect();
        released
            .ports
            .extend(old_ports.difference(&new_ports).copied());
    }

    // Health-check node port.
    let (needed, needs) = (needs_health_check(old), needs_health_check(svc));
    let old_hc = health_check_node_port(old);
    if !needed && needs {
        alloc_health_check_node_port(svc, alloc)?;
    } else if needed && !needs {
        if old_hc > 0 {
            released.ports.push(old_hc);
        }
    } else if needed && needs {
        let hc = health_check_node_port(svc);
        if hc == 0 {
            spec_mut(svc).health_check_node_port = Some(old_hc);
        }
    }
    // A port still held by the new object (for example an old node port reused as health-check
    // port) is not released.
    let still = held_node_ports(svc);
    released.ports.retain(|p| !still.contains(p));
    released.ports.sort_unstable();
    released.ports.dedup();
    Ok(released)
}

#[cfg(test)]
mod tests;
