//! [`NftBackend`]: keeps the last COMMITTED state in memory, diffs each new [`Plan`] against it
//! per Service, and sends the difference as one atomic netlink batch. Kernel state is never
//! read back. A first sync (or one after a failure) rebuilds the table: in ONE transaction up
//! to `NftConfig::batch_services` Services (so a restart swaps the old table for the new one
//! atomically, without a window where Services are missing), in batches of that size beyond.
//! One huge transaction is quadratic in the kernel for chains, rules and jumps (the
//! kube-proxy shape), but not for set elements, which is all a Service is here: measured, 30,000
//! Services load in the same time in 1 or in 30 transactions (bench/nft/RESULTS.md).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use portico_core::plan::{
    NoEndpoints, Plan, Protocol, ServiceName, ServicePortName, ServicePortPlan,
};

use crate::Error;
use crate::conntrack::{Conntrack, stale_flows};
use crate::model::{Data, Elem, Op, SetDef, Transaction, Val};
use crate::netlink::msg::{Batch, Family};
use crate::netlink::socket::NfSocket;
use crate::render::{self, Rendered, SetId, Value, family_of};
use crate::ruleset::{self, Shape, mark, sets};

/// Configuration of the nftables backend (kube-proxy flag names in the comments).
#[derive(Clone, Debug)]
pub struct NftConfig {
    /// Table name in both the `ip` and `ip6` families.
    pub table: String,
    /// `--cluster-cidr`: sources inside are "in-cluster" (no masquerade to cluster IPs, and
    /// short-circuit of externalTrafficPolicy Local addresses). Empty: no off-cluster masquerade.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--nodeport-addresses` as CIDRs. Empty: every local address except loopback.
    pub nodeport_addresses: Vec<IpNet>,
    /// Service CIDRs: traffic to unallocated addresses inside is dropped.
    pub service_cidrs: Vec<IpNet>,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Services per transaction of a full sync (the message of one transaction grows by about
    /// 1 KiB per Service with 10 endpoints).
    pub batch_services: usize,
    /// Delete stale UDP conntrack entries after each sync that changed a UDP Service.
    pub conntrack_cleanup: bool,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            table: "portico".into(),
            cluster_cidrs: Vec::new(),
            nodeport_addresses: Vec::new(),
            service_cidrs: Vec::new(),
            ipv4: true,
            ipv6: true,
            batch_services: 50_000,
            conntrack_cleanup: true,
        }
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// The table was (re)built from scratch.
    pub full: bool,
    pub services_changed: usize,
    pub transactions: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub conntrack_deleted: usize,
    pub duration: Duration,
    /// Of `duration`: time spent in the kernel (sending batches and reading their ACKs).
    pub kernel: Duration,
}

#[derive(Debug)]
struct SlotRec {
    id: u32,
    refs: u32,
    affinity: bool,
}

#[derive(Debug, Default)]
struct FamilyService {
    entries: Vec<(SetId, Vec<Val>)>,
    slots: Vec<Endpoints>,
    endpoint_ips: Vec<IpAddr>,
}

#[derive(Debug)]
struct ServiceState {
    owner: u32,
    /// [`fingerprint`] of the plan this state was rendered from (a copy of the plan itself
    /// would cost ~5 KiB per Service port with 10 endpoints).
    fingerprint: u64,
    families: Vec<(Family, FamilyService)>,
    affinity_class: Option<u32>,
}

/// Element changes of one sync for one family, netted at the end.
#[derive(Default)]
struct Delta {
    adds: BTreeMap<&'static str, (SetDef, Vec<Elem>)>,
    dels: BTreeMap<&'static str, (SetDef, Vec<Elem>)>,
}

impl Delta {
    fn add(&mut self, set: SetDef, elem: Elem) {
        self.adds
            .entry(set.name)
            .or_insert_with(|| (set, Vec::new()))
            .1
            .push(elem);
    }
    fn del(&mut self, set: SetDef, elem: Elem) {
        self.dels
            .entry(set.name)
            .or_insert_with(|| (set, Vec::new()))
            .1
            .push(elem);
    }
}

/// One endpoint list (a slot's content), shared between the slot table and its users.
type Endpoints = std::sync::Arc<[(IpAddr, u16)]>;

/// A service-owned element: its set and key.
type EntryKey = (SetId, Vec<Val>);

#[derive(Debug)]
struct FamilyState {
    family: Family,
    slots: HashMap<Endpoints, SlotRec>,
    free_slots: Vec<u32>,
    /// Ids of freed slots that had affinity: their `affinity` entries may live until timeout.
    quarantine: VecDeque<(Instant, u32)>,
    next_slot: u32,
    /// Owners and their data for every service-owned element (conflicts: the first owner wins).
    entries: HashMap<EntryKey, Vec<(u32, Data)>>,
    hairpin: HashMap<IpAddr, u32>,
}

impl FamilyState {
    fn new(family: Family) -> Self {
        FamilyState {
            family,
            slots: HashMap::new(),
            free_slots: Vec::new(),
            quarantine: VecDeque::new(),
            next_slot: 1,
            entries: HashMap::new(),
            hairpin: HashMap::new(),
        }
    }
}

/// Per-sync bookkeeping of one family: what was touched, to net the changes at the end.
#[derive(Default)]
struct Touched {
    entries: HashMap<EntryKey, Option<Data>>,
    hairpin: HashMap<IpAddr, bool>,
    slots: Vec<Endpoints>,
    new_slots: Vec<Endpoints>,
}

#[derive(Debug, Default)]
struct AffinityClasses {
    /// Index i is class i + 1: (timeout seconds, users).
    classes: Vec<Option<(u32, u32)>>,
    changed: bool,
}

impl AffinityClasses {
    fn acquire(&mut self, timeout: u32) -> u32 {
        if let Some(i) = self
            .classes
            .iter()
            .position(|c| matches!(c, Some((t, _)) if *t == timeout))
        {
            if let Some((_, users)) = &mut self.classes[i] {
                *users += 1;
            }
            return i as u32 + 1;
        }
        if let Some(i) = self.classes.iter().position(Option::is_none) {
            self.classes[i] = Some((timeout, 1));
            self.changed = true;
            return i as u32 + 1;
        }
        if (self.classes.len() as u32) < mark::AFFINITY_CLASSES {
            self.classes.push(Some((timeout, 1)));
            self.changed = true;
            return self.classes.len() as u32;
        }
        // More distinct timeouts than mark bits: share the class of the closest timeout.
        let (i, _) = self
            .classes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|(t, _)| (i, t.abs_diff(timeout))))
            .min_by_key(|(_, d)| *d)
            .unwrap_or((0, 0));
        tracing::warn!(
            timeout,
            "more than 15 distinct session affinity timeouts; sharing the closest one"
        );
        if let Some((_, users)) = &mut self.classes[i] {
            *users += 1;
        }
        i as u32 + 1
    }

    fn release(&mut self, class: u32) {
        if let Some(Some((_, users))) = self.classes.get_mut(class as usize - 1) {
            *users = users.saturating_sub(1);
        }
    }

    /// Frees unused classes at the end of a sync.
    fn collect(&mut self) {
        for c in &mut self.classes {
            if matches!(c, Some((_, 0))) {
                *c = None;
                self.changed = true;
            }
        }
    }

    fn max_timeout(&self) -> u32 {
        self.classes
            .iter()
            .filter_map(|c| c.map(|(t, _)| t))
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug)]
struct State {
    services: BTreeMap<ServicePortName, ServiceState>,
    families: Vec<FamilyState>,
    affinity: AffinityClasses,
    next_owner: u32,
}

/// The nftables data plane of one node.
pub struct NftBackend {
    netns: Option<PathBuf>,
    config: NftConfig,
    sock: NfSocket,
    conntrack: Option<Conntrack>,
    state: Option<State>,
    kernel_time: Duration,
}

impl std::fmt::Debug for NftBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftBackend")
            .field("netns", &self.netns)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn families_of(config: &NftConfig) -> Vec<Family> {
    let mut out = Vec::new();
    if config.ipv4 {
        out.push(Family::Ipv4);
    }
    if config.ipv6 {
        out.push(Family::Ipv6);
    }
    out
}

fn nets_of(nets: &[IpNet], family: Family) -> Vec<IpNet> {
    nets.iter()
        .filter(|n| family_of(&n.addr()) == family)
        .map(|n| n.trunc())
        .collect()
}

fn shape_of(config: &NftConfig, family: Family) -> Shape {
    Shape {
        has_cluster_cidrs: !nets_of(&config.cluster_cidrs, family).is_empty(),
        has_nodeport_addresses: !nets_of(&config.nodeport_addresses, family).is_empty(),
        has_service_cidrs: !nets_of(&config.service_cidrs, family).is_empty(),
    }
}

/// The whole fixed skeleton of one family's table, replacing any previous table of that name.
pub fn skeleton(config: &NftConfig, family: Family) -> Transaction {
    let mut tx = Transaction::new(family, &config.table);
    tx.ops.push(Op::AddTable);
    tx.ops.push(Op::DeleteTable);
    tx.ops.push(Op::AddTable);
    for set in sets::all(family) {
        tx.ops.push(Op::AddSet(set));
    }
    let chains = ruleset::chains(family, &shape_of(config, family));
    for chain in &chains {
        tx.ops.push(Op::AddChain {
            name: chain.name.clone(),
            hook: chain.hook.clone(),
        });
    }
    tx.ops.push(Op::AddElements {
        set: sets::bucket_dispatch(),
        elems: ruleset::bucket_dispatch_elements(),
    });
    for (set, nets) in [
        (sets::cluster_cidrs(), &config.cluster_cidrs),
        (sets::service_cidrs(), &config.service_cidrs),
        (sets::nodeport_addresses(), &config.nodeport_addresses),
    ] {
        let elems: Vec<Elem> = nets_of(nets, family)
            .into_iter()
            .map(|n| Elem::key(vec![Val::Prefix(n)]))
            .collect();
        if !elems.is_empty() {
            tx.ops.push(Op::AddElements { set, elems });
        }
    }
    for chain in chains {
        for rule in chain.rules {
            tx.ops.push(Op::AddRule {
                chain: chain.name.clone(),
                rule,
            });
        }
    }
    tx
}

/// A hash of everything in a Service port's plan. The exhaustive destructuring makes a new
/// plan field a compile error here, so no change can go unnoticed.
fn fingerprint(sp: &ServicePortPlan) -> u64 {
    use std::hash::{Hash, Hasher};
    let ServicePortPlan {
        name,
        cluster_ips,
        port,
        node_port,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        affinity_timeout_seconds,
        internal_policy_local,
        external_policy_local,
        health_check_node_port,
        cluster_endpoints,
        external_endpoints,
        cluster_no_endpoints,
        external_no_endpoints,
        local_endpoint_count,
        last_change_trigger_time,
        cluster_policy_endpoints,
        local_policy_endpoints,
        has_endpoints_v4,
        has_endpoints_v6,
    } = sp;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    cluster_ips.hash(&mut h);
    port.hash(&mut h);
    node_port.hash(&mut h);
    external_ips.hash(&mut h);
    load_balancer_ips.hash(&mut h);
    load_balancer_source_ranges.hash(&mut h);
    affinity_timeout_seconds.hash(&mut h);
    internal_policy_local.hash(&mut h);
    external_policy_local.hash(&mut h);
    health_check_node_port.hash(&mut h);
    cluster_endpoints.hash(&mut h);
    external_endpoints.hash(&mut h);
    (*cluster_no_endpoints == NoEndpoints::Drop).hash(&mut h);
    (*external_no_endpoints == NoEndpoints::Drop).hash(&mut h);
    local_endpoint_count.hash(&mut h);
    last_change_trigger_time.hash(&mut h);
    cluster_policy_endpoints.hash(&mut h);
    local_policy_endpoints.hash(&mut h);
    has_endpoints_v4.hash(&mut h);
    has_endpoints_v6.hash(&mut h);
    h.finish()
}

fn mark_value(slot: u32, class: Option<u32>, flags: u32, count: u32) -> u32 {
    (slot << mark::SLOT_SHIFT) | (class.unwrap_or(0) << mark::AFFINITY_SHIFT) | flags | count
}

fn slot_elements(id: u32, endpoints: &[(IpAddr, u16)]) -> Vec<Elem> {
    let n = render::bucket_count(endpoints.len());
    (0..n)
        .map(|b| {
            let (ip, port) = endpoints[b as usize % endpoints.len()];
            Elem::map(
                vec![Val::Mark(id << mark::SLOT_SHIFT), Val::Index(b)],
                vec![Val::Addr(ip), Val::Port(port)],
            )
        })
        .collect()
}

impl FamilyState {
    fn visible(&self, key: &EntryKey) -> Option<Data> {
        self.entries
            .get(key)
            .and_then(|owners| owners.first().map(|(_, d)| d.clone()))
    }

    fn touch(&self, touched: &mut Touched, key: &EntryKey) {
        if !touched.entries.contains_key(key) {
            touched.entries.insert(key.clone(), self.visible(key));
        }
    }

    fn release(&mut self, fs: &FamilyService, owner: u32, touched: &mut Touched) {
        for (set, key) in &fs.entries {
            let k = (*set, key.clone());
            self.touch(touched, &k);
            if let Some(owners) = self.entries.get_mut(&k) {
                owners.retain(|(o, _)| *o != owner);
                if owners.is_empty() {
                    self.entries.remove(&k);
                }
            }
        }
        for eps in &fs.slots {
            if let Some(slot) = self.slots.get_mut(eps) {
                slot.refs = slot.refs.saturating_sub(1);
                if slot.refs == 0 {
                    touched.slots.push(eps.clone());
                }
            }
        }
        for ip in &fs.endpoint_ips {
            touched
                .hairpin
                .entry(*ip)
                .or_insert_with(|| self.hairpin.get(ip).copied().unwrap_or(0) > 0);
            if let Some(n) = self.hairpin.get_mut(ip) {
                *n = n.saturating_sub(1);
            }
        }
    }

    fn allocate_slot(&mut self) -> Result<u32, Error> {
        let now = Instant::now();
        while let Some((until, _)) = self.quarantine.front() {
            if *until > now {
                break;
            }
            if let Some((_, id)) = self.quarantine.pop_front() {
                self.free_slots.push(id);
            }
        }
        if let Some(id) = self.free_slots.pop() {
            return Ok(id);
        }
        if self.next_slot > mark::MAX_SLOTS {
            return Err(Error::Capacity(format!(
                "more than {} distinct endpoint sets",
                mark::MAX_SLOTS
            )));
        }
        self.next_slot += 1;
        Ok(self.next_slot - 1)
    }

    fn acquire(
        &mut self,
        rendered: &Rendered,
        owner: u32,
        class: Option<u32>,
        touched: &mut Touched,
    ) -> Result<FamilyService, Error> {
        let mut slot_ids = Vec::with_capacity(rendered.paths.len());
        let mut shared: Vec<Endpoints> = Vec::with_capacity(rendered.paths.len());
        for eps in &rendered.paths {
            let id = match self.slots.get_key_value(eps.as_slice()) {
                Some((key, slot)) => {
                    shared.push(key.clone());
                    let id = slot.id;
                    if let Some(slot) = self.slots.get_mut(eps.as_slice()) {
                        slot.refs += 1;
                        slot.affinity |= class.is_some();
                    }
                    id
                }
                None => {
                    let id = self.allocate_slot()?;
                    let key: Endpoints = eps.as_slice().into();
                    self.slots.insert(
                        key.clone(),
                        SlotRec {
                            id,
                            refs: 1,
                            affinity: class.is_some(),
                        },
                    );
                    touched.new_slots.push(key.clone());
                    shared.push(key);
                    id
                }
            };
            slot_ids.push((id, render::bucket_count(eps.len())));
        }
        let mut fs = FamilyService {
            slots: shared,
            endpoint_ips: rendered.endpoint_ips.clone(),
            ..Default::default()
        };
        for entry in &rendered.entries {
            let data = match entry.value {
                Value::None => Data::None,
                Value::Path { path, flags } => {
                    let (id, count) = slot_ids[path];
                    Data::Vals(vec![Val::Mark(mark_value(id, class, flags, count))])
                }
            };
            let k = (entry.set, entry.key.clone());
            self.touch(touched, &k);
            self.entries.entry(k).or_default().push((owner, data));
            fs.entries.push((entry.set, entry.key.clone()));
        }
        for ip in &rendered.endpoint_ips {
            touched
                .hairpin
                .entry(*ip)
                .or_insert_with(|| self.hairpin.get(ip).copied().unwrap_or(0) > 0);
            *self.hairpin.entry(*ip).or_default() += 1;
        }
        Ok(fs)
    }

    /// Nets the touched state into element changes.
    fn finish(&mut self, touched: Touched, quarantine_for: Duration, delta: &mut Delta) {
        let new_slots: std::collections::HashSet<&Endpoints> = touched.new_slots.iter().collect();
        for eps in &touched.new_slots {
            if let Some(slot) = self.slots.get(eps)
                && slot.refs > 0
            {
                for e in slot_elements(slot.id, eps) {
                    delta.add(sets::service_endpoints(self.family), e);
                }
            }
        }
        for eps in touched.slots {
            let Some(slot) = self.slots.get(&eps) else {
                continue;
            };
            if slot.refs > 0 {
                continue;
            }
            if let Some(slot) = self.slots.remove(&eps) {
                // A slot created and freed in the same sync was never sent.
                if !new_slots.contains(&eps) {
                    for e in slot_elements(slot.id, &eps) {
                        delta.del(sets::service_endpoints(self.family), e);
                    }
                }
                if slot.affinity {
                    self.quarantine
                        .push_back((Instant::now() + quarantine_for, slot.id));
                } else {
                    self.free_slots.push(slot.id);
                }
            }
        }
        for ((set, key), before) in touched.entries {
            let after = self.visible(&(set, key.clone()));
            if before == after {
                continue;
            }
            if let Some(d) = before {
                delta.del(
                    set.def(),
                    Elem {
                        key: key.clone(),
                        data: d,
                    },
                );
            }
            if let Some(d) = after {
                delta.add(set.def(), Elem { key, data: d });
            }
        }
        for (ip, before) in touched.hairpin {
            let after = self.hairpin.get(&ip).copied().unwrap_or(0) > 0;
            if self.hairpin.get(&ip) == Some(&0) {
                self.hairpin.remove(&ip);
            }
            let elem = Elem::key(vec![Val::Addr(ip), Val::Addr(ip)]);
            match (before, after) {
                (true, false) => delta.del(sets::hairpin(), elem),
                (false, true) => delta.add(sets::hairpin(), elem),
                _ => {}
            }
        }
    }
}

impl State {
    fn new(families: &[Family]) -> State {
        State {
            services: BTreeMap::new(),
            families: families.iter().map(|f| FamilyState::new(*f)).collect(),
            affinity: AffinityClasses::default(),
            next_owner: 1,
        }
    }

    /// Applies one service's change (`None` = removed) to the in-memory state.
    fn apply(
        &mut self,
        name: &ServicePortName,
        new: Option<&ServicePortPlan>,
        touched: &mut [Touched],
    ) -> Result<(), Error> {
        let old = self.services.remove(name);
        let owner = match &old {
            Some(s) => s.owner,
            None => {
                self.next_owner += 1;
                self.next_owner
            }
        };
        if let Some(old) = &old {
            for (family, fs) in &old.families {
                if let Some(i) = self.families.iter().position(|f| f.family == *family) {
                    self.families[i].release(fs, owner, &mut touched[i]);
                }
            }
            if let Some(class) = old.affinity_class {
                self.affinity.release(class);
            }
        }
        let Some(sp) = new else { return Ok(()) };
        let class = sp
            .affinity_timeout_seconds
            .map(|t| self.affinity.acquire(t));
        let mut families = Vec::new();
        for (i, fam) in self.families.iter_mut().enumerate() {
            let rendered = render::render(sp, fam.family);
            if rendered.entries.is_empty() {
                continue;
            }
            let fs = fam.acquire(&rendered, owner, class, &mut touched[i])?;
            families.push((fam.family, fs));
        }
        self.services.insert(
            name.clone(),
            ServiceState {
                owner,
                fingerprint: fingerprint(sp),
                families,
                affinity_class: class,
            },
        );
        Ok(())
    }

    /// Turns the touched state into one transaction per family.
    fn finish(&mut self, touched: Vec<Touched>, table: &str) -> Vec<Transaction> {
        self.affinity.collect();
        let quarantine = Duration::from_secs(u64::from(self.affinity.max_timeout()) + 10);
        let mut out = Vec::new();
        for (fam, t) in self.families.iter_mut().zip(touched) {
            let mut delta = Delta::default();
            fam.finish(t, quarantine, &mut delta);
            let mut tx = Transaction::new(fam.family, table);
            if self.affinity.changed {
                tx.ops.push(Op::FlushChain {
                    chain: "affinity-update".into(),
                });
                for (i, c) in self.affinity.classes.iter().enumerate() {
                    if let Some((timeout, _)) = c {
                        tx.ops.push(Op::AddRule {
                            chain: "affinity-update".into(),
                            rule: ruleset::affinity_update_rule(fam.family, i as u32 + 1, *timeout),
                        });
                    }
                }
            }
            for (_, (set, mut elems)) in delta.dels {
                elems.sort();
                tx.ops.push(Op::DeleteElements { set, elems });
            }
            for (_, (set, mut elems)) in delta.adds {
                elems.sort();
                tx.ops.push(Op::AddElements { set, elems });
            }
            out.push(tx);
        }
        self.affinity.changed = false;
        out
    }
}

impl NftBackend {
    /// Opens the backend in the network namespace at `netns` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`), or in the caller's namespace when `None`. Nothing is programmed
    /// until the first [`NftBackend::sync`].
    pub fn new(netns: Option<PathBuf>, config: NftConfig) -> Result<NftBackend, Error> {
        if config.table.is_empty() || config.table.len() > 200 {
            return Err(Error::Config(
                "table name must have 1 to 200 characters".into(),
            ));
        }
        if !config.ipv4 && !config.ipv6 {
            return Err(Error::Config(
                "at least one of ipv4 and ipv6 must be enabled".into(),
            ));
        }
        let sock = NfSocket::open(netns.as_deref())?;
        let conntrack = if config.conntrack_cleanup {
            Some(Conntrack::open(netns.as_deref())?)
        } else {
            None
        };
        Ok(NftBackend {
            netns,
            config,
            sock,
            conntrack,
            state: None,
            kernel_time: Duration::ZERO,
        })
    }

    pub fn config(&self) -> &NftConfig {
        &self.config
    }

    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// Forces the next sync to rebuild the table (e.g. on a periodic resync).
    pub fn invalidate(&mut self) {
        self.state = None;
    }

    /// Programs `plan`: incrementally when the last commit succeeded (comparing every Service
    /// with the committed one), else a full rebuild.
    pub fn sync(&mut self, plan: &Plan) -> Result<SyncStats, Error> {
        self.sync_inner(plan, None)
    }

    /// Like [`NftBackend::sync`], but only the Services in `changed` are compared with the
    /// committed state (every other Service of `plan` must be unchanged since the last
    /// successful sync): the cost is proportional to the change, not to the cluster. The
    /// proxy's change trackers know this set.
    pub fn sync_changed<'a>(
        &mut self,
        plan: &Plan,
        changed: impl IntoIterator<Item = &'a ServiceName>,
    ) -> Result<SyncStats, Error> {
        let changed: Vec<&ServiceName> = changed.into_iter().collect();
        self.sync_inner(plan, Some(&changed))
    }

    fn sync_inner(
        &mut self,
        plan: &Plan,
        hint: Option<&[&ServiceName]>,
    ) -> Result<SyncStats, Error> {
        let started = Instant::now();
        self.kernel_time = Duration::ZERO;
        let result = if self.state.is_some() {
            self.sync_incremental(plan, hint)
        } else {
            self.sync_full(plan)
        };
        match result {
            Ok((mut stats, udp_changed)) => {
                if udp_changed {
                    match self.cleanup_conntrack(plan) {
                        Ok(n) => stats.conntrack_deleted = n,
                        Err(e) => tracing::warn!(error = %e, "UDP conntrack cleanup failed"),
                    }
                }
                stats.duration = started.elapsed();
                stats.kernel = self.kernel_time;
                Ok(stats)
            }
            Err(e) => {
                // The kernel may hold part of a full sync; rebuild next time.
                self.state = None;
                Err(e)
            }
        }
    }

    fn commit(&mut self, txs: &[Transaction]) -> Result<(), Error> {
        let mut batch = Batch::new(self.sock.take_seqs(0));
        let mut set_id = 0;
        for tx in txs {
            tx.encode(&mut batch, &mut set_id);
        }
        if batch.message_count() == 0 {
            return Ok(());
        }
        self.sock.take_seqs(batch.message_count() as u32 + 2);
        let (bytes, described) = batch.finish_bytes();
        let start = Instant::now();
        let result = self.sock.commit(&bytes, &described);
        self.kernel_time += start.elapsed();
        result
    }

    fn sync_full(&mut self, plan: &Plan) -> Result<(SyncStats, bool), Error> {
        let families = families_of(&self.config);
        let mut state = State::new(&families);
        let mut stats = SyncStats {
            full: true,
            ..Default::default()
        };
        let names: Vec<&ServicePortName> = plan.services.keys().collect();
        let batch = self.config.batch_services.max(1);
        let mut first = true;
        let mut chunks: Vec<&[&ServicePortName]> = names.chunks(batch).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let mut touched: Vec<Touched> = families.iter().map(|_| Touched::default()).collect();
            for name in chunk {
                state.apply(name, plan.services.get(*name), &mut touched)?;
            }
            let mut txs = state.finish(touched, &self.config.table);
            if first {
                for (tx, family) in txs.iter_mut().zip(&families) {
                    let mut ops = skeleton(&self.config, *family).ops;
                    ops.append(&mut tx.ops);
                    tx.ops = ops;
                }
                first = false;
            }
            for tx in &txs {
                let (a, d) = tx.element_count();
                stats.elements_added += a;
                stats.elements_deleted += d;
            }
            self.commit(&txs)?;
            stats.transactions += 1;
        }
        stats.services_changed = plan.services.len();
        let udp = plan.services.keys().any(|n| n.protocol == Protocol::Udp);
        self.state = Some(state);
        Ok((stats, udp))
    }

    fn sync_incremental(
        &mut self,
        plan: &Plan,
        hint: Option<&[&ServiceName]>,
    ) -> Result<(SyncStats, bool), Error> {
        let Some(state) = self.state.as_mut() else {
            return Err(Error::Config("no committed state".into()));
        };
        let mut changed: Vec<&ServicePortName> = Vec::new();
        let mut removed: Vec<ServicePortName> = Vec::new();
        match hint {
            // Only the named Services: O(changes), as the proxy's change trackers know them.
            Some(names) => {
                for service in names {
                    let start = ServicePortName {
                        namespace: service.namespace.clone(),
                        name: service.name.clone(),
                        port: String::new(),
                        protocol: Protocol::Tcp,
                    };
                    for (name, _) in state.services.range(start..).take_while(|(k, _)| {
                        k.namespace == service.namespace && k.name == service.name
                    }) {
                        if !plan.services.contains_key(name) {
                            removed.push(name.clone());
                        }
                    }
                    for (name, sp) in plan.service_ports(service) {
                        if state
                            .services
                            .get(name)
                            .is_none_or(|s| s.fingerprint != fingerprint(sp))
                        {
                            changed.push(name);
                        }
                    }
                }
            }
            // Everything: one merge walk over the two sorted maps.
            None => {
                let mut old = state.services.iter().peekable();
                for (name, sp) in &plan.services {
                    while let Some((k, _)) = old.peek() {
                        if *k < name {
                            removed.push((*k).clone());
                            old.next();
                        } else {
                            break;
                        }
                    }
                    match old.peek() {
                        Some((k, s)) if *k == name => {
                            if s.fingerprint != fingerprint(sp) {
                                changed.push(name);
                            }
                            old.next();
                        }
                        _ => changed.push(name),
                    }
                }
                removed.extend(old.map(|(k, _)| k.clone()));
            }
        }
        let mut stats = SyncStats {
            services_changed: changed.len() + removed.len(),
            ..Default::default()
        };
        if changed.is_empty() && removed.is_empty() {
            return Ok((stats, false));
        }
        let udp = changed.iter().any(|n| n.protocol == Protocol::Udp)
            || removed.iter().any(|n| n.protocol == Protocol::Udp);
        let mut touched: Vec<Touched> = state.families.iter().map(|_| Touched::default()).collect();
        for name in &removed {
            state.apply(name, None, &mut touched)?;
        }
        for name in changed {
            state.apply(name, plan.services.get(name), &mut touched)?;
        }
        let txs = state.finish(touched, &self.config.table);
        for tx in &txs {
            let (a, d) = tx.element_count();
            stats.elements_added += a;
            stats.elements_deleted += d;
        }
        self.commit(&txs)?;
        stats.transactions = 1;
        Ok((stats, udp))
    }

    /// Deletes stale UDP flows (see [`crate::conntrack`]); returns how many.
    pub fn cleanup_conntrack(&mut self, plan: &Plan) -> Result<usize, Error> {
        let families = families_of(&self.config);
        let Some(ct) = self.conntrack.as_mut() else {
            return Ok(0);
        };
        let mut deleted = 0;
        for family in families {
            let flows = ct.list_udp(family)?;
            let stale: Vec<_> = stale_flows(plan, &flows).into_iter().cloned().collect();
            for flow in &stale {
                ct.delete(family, flow)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Removes the tables this backend creates (`--cleanup`). Absent tables are fine.
    pub fn cleanup(&mut self) -> Result<(), Error> {
        for family in [Family::Ipv4, Family::Ipv6] {
            let mut tx = Transaction::new(family, &self.config.table);
            tx.ops.push(Op::AddTable);
            tx.ops.push(Op::DeleteTable);
            self.commit(&[tx])?;
        }
        self.state = None;
        Ok(())
    }

    /// The full-sync transactions for `plan` without touching the kernel (for golden tests
    /// and `nft --check`): one transaction per family, skeleton included.
    pub fn render_full(config: &NftConfig, plan: &Plan) -> Result<Vec<Transaction>, Error> {
        let families = families_of(config);
        let mut state = State::new(&families);
        let mut touched: Vec<Touched> = families.iter().map(|_| Touched::default()).collect();
        for (name, sp) in &plan.services {
            state.apply(name, Some(sp), &mut touched)?;
        }
        let mut txs = state.finish(touched, &config.table);
        for (tx, family) in txs.iter_mut().zip(&families) {
            let mut ops = skeleton(config, *family).ops;
            ops.append(&mut tx.ops);
            tx.ops = ops;
        }
        Ok(txs)
    }

    /// The incremental transactions that would take the table from `old` to `new`.
    pub fn render_change(
        config: &NftConfig,
        old: &Plan,
        new: &Plan,
    ) -> Result<Vec<Transaction>, Error> {
        let families = families_of(config);
        let mut state = State::new(&families);
        let mut touched: Vec<Touched> = families.iter().map(|_| Touched::default()).collect();
        for (name, sp) in &old.services {
            state.apply(name, Some(sp), &mut touched)?;
        }
        state.finish(touched, &config.table);
        let mut touched: Vec<Touched> = families.iter().map(|_| Touched::default()).collect();
        for name in old
            .services
            .keys()
            .filter(|n| !new.services.contains_key(*n))
        {
            state.apply(name, None, &mut touched)?;
        }
        for (name, sp) in &new.services {
            if old.services.get(name) != Some(sp) {
                state.apply(name, Some(sp), &mut touched)?;
            }
        }
        Ok(state.finish(touched, &config.table))
    }
}

// The proxy runtime moves the backend into its sync task.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<NftBackend>();
};
