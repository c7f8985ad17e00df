//! The fixed shape of the `portico` table: its sets, maps, chains and rules. Nothing here
//! depends on Services; Services and endpoints are only ever ELEMENTS of these maps and sets,
//! so a steady-state change adds no chain, rule, jump, goto or verdict-map element (each of
//! those makes the kernel re-validate the whole table).
//!
//! Packet path of the first packet of a connection (NAT chains see no others):
//! 1. `services` looks the destination up in `service-ips` (`addr . proto . port`) or, for a
//!    node address, in `service-nodeports` (`proto . port`). The value is a packet mark that
//!    names a *slot* (one endpoint list) plus flags; it is written to the packet mark and the
//!    rule goes to `dispatch`. In-cluster sources use the `…-internal` maps first, which
//!    short-circuit externalTrafficPolicy Local addresses to the cluster-wide endpoints.
//! 2. `dispatch` DNATs to the remembered endpoint when the slot has ClientIP affinity and the
//!    client has an `affinity` entry, else jumps by the mark's bucket count through the fixed
//!    verdict map `bucket-dispatch` to `endpoints-N`, whose one rule per protocol is
//!    `dnat to (mark & slot) . numgen random mod N map @service-endpoints`.
//! 3. `nat-postrouting` records affinity (`update @affinity` with the slot's timeout), then
//!    masquerades by the mark's flags (external traffic of policy Cluster; off-cluster sources
//!    to cluster IPs) and hairpin traffic (`saddr . daddr` in `hairpin`).
//!
//! Filter chains reject (`no-endpoint-services`, `no-endpoint-nodeports`, undefined ports of a
//! cluster IP in `cluster-ips`) or drop (the `-drop` sets; unallocated addresses of the
//! service CIDRs) and enforce loadBalancerSourceRanges (`firewall-ips` / `firewall-allow`).

use crate::model::{Data, Elem, FieldKind, Rule, SetData, SetDef, Val};
use crate::netlink::expr::{CmpOp, CtKey, Expr, MetaKey, NatType, PayloadBase, Verdict, reg32};
use crate::netlink::msg::{Family, Hook};

/// Packet-mark layout of a frontend's value.
pub mod mark {
    /// Number of random buckets of the slot (1..=MAX_BUCKETS).
    pub const COUNT_MASK: u32 = 0x0000_01ff;
    /// Masquerade always (external traffic with externalTrafficPolicy Cluster; node-local
    /// sources short-circuited to the cluster endpoints).
    pub const MASQ_ALWAYS: u32 = 0x0000_0200;
    /// Masquerade when the source is outside `--cluster-cidr` (traffic to a cluster IP).
    pub const MASQ_OFF_CLUSTER: u32 = 0x0000_0400;
    /// ClientIP affinity timeout class (0 = no affinity).
    pub const AFFINITY_MASK: u32 = 0x0000_7800;
    pub const AFFINITY_SHIFT: u32 = 11;
    pub const AFFINITY_CLASSES: u32 = 15;
    /// The slot id.
    pub const SLOT_MASK: u32 = 0xffff_8000;
    pub const SLOT_SHIFT: u32 = 15;
    pub const MAX_SLOTS: u32 = (1 << 17) - 1;
}

/// Buckets of the random pick: a slot with n endpoints uses min(n, MAX_BUCKETS) buckets,
/// endpoints spread over them round-robin (exact for up to 256 endpoints).
pub const MAX_BUCKETS: u32 = 256;

/// Every set and map of the table.
pub mod sets {
    use super::*;
    use FieldKind::*;

    const fn def(
        name: &'static str,
        key: Vec<FieldKind>,
        data: SetData,
        comment: &'static str,
    ) -> SetDef {
        SetDef {
            name,
            key,
            data,
            interval: false,
            dynamic_timeout_ms: None,
            typeof_text: None,
            comment,
        }
    }

    pub fn cluster_ips() -> SetDef {
        def(
            "cluster-ips",
            vec![Addr],
            SetData::None,
            "Active ClusterIPs",
        )
    }
    pub fn service_ips() -> SetDef {
        def(
            "service-ips",
            vec![Addr, Proto, Port],
            SetData::Fields(vec![Mark]),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        )
    }
    pub fn service_ips_internal() -> SetDef {
        def(
            "service-ips-internal",
            vec![Addr, Proto, Port],
            SetData::Fields(vec![Mark]),
            "in-cluster traffic to external addresses of policy Local",
        )
    }
    pub fn service_nodeports() -> SetDef {
        def(
            "service-nodeports",
            vec![Proto, Port],
            SetData::Fields(vec![Mark]),
            "NodePort traffic",
        )
    }
    pub fn service_nodeports_internal() -> SetDef {
        def(
            "service-nodeports-internal",
            vec![Proto, Port],
            SetData::Fields(vec![Mark]),
            "in-cluster NodePort traffic of policy Local",
        )
    }
    pub fn service_endpoints(family: Family) -> SetDef {
        let mut d = def(
            "service-endpoints",
            vec![Mark, Index],
            SetData::Fields(vec![Addr, Port]),
            "slot . bucket to endpoint",
        );
        d.typeof_text = Some(match family {
            Family::Ipv4 => "meta mark . numgen random mod 1 : ip daddr . tcp dport",
            Family::Ipv6 => "meta mark . numgen random mod 1 : ip6 daddr . tcp dport",
        });
        d
    }
    pub fn bucket_dispatch() -> SetDef {
        def("bucket-dispatch", vec![Mark], SetData::Verdict, "")
    }
    pub fn affinity() -> SetDef {
        let mut d = def(
            "affinity",
            vec![Addr, Mark],
            SetData::Fields(vec![Addr, Port]),
            "",
        );
        d.dynamic_timeout_ms = Some(10_800_000);
        d
    }
    pub fn no_endpoint_services() -> SetDef {
        def(
            "no-endpoint-services",
            vec![Addr, Proto, Port],
            SetData::None,
            "rejected: no endpoints",
        )
    }
    pub fn no_endpoint_services_drop() -> SetDef {
        def(
            "no-endpoint-services-drop",
            vec![Addr, Proto, Port],
            SetData::None,
            "dropped: no local endpoints",
        )
    }
    pub fn no_endpoint_nodeports() -> SetDef {
        def(
            "no-endpoint-nodeports",
            vec![Proto, Port],
            SetData::None,
            "rejected: no endpoints",
        )
    }
    pub fn no_endpoint_nodeports_drop() -> SetDef {
        def(
            "no-endpoint-nodeports-drop",
            vec![Proto, Port],
            SetData::None,
            "dropped: no local endpoints",
        )
    }
    pub fn hairpin() -> SetDef {
        def(
            "hairpin",
            vec![Addr, Addr],
            SetData::None,
            "endpoint . endpoint",
        )
    }
    pub fn firewall_ips() -> SetDef {
        def(
            "firewall-ips",
            vec![Addr, Proto, Port],
            SetData::None,
            "LoadBalancer IPs with source ranges",
        )
    }
    pub fn firewall_allow() -> SetDef {
        let mut d = def(
            "firewall-allow",
            vec![Addr, Proto, Port, Addr],
            SetData::None,
            "allowed sources",
        );
        d.interval = true;
        d
    }
    fn cidr_set(name: &'static str, comment: &'static str) -> SetDef {
        let mut d = def(name, vec![Addr], SetData::None, comment);
        d.interval = true;
        d
    }
    pub fn cluster_cidrs() -> SetDef {
        cidr_set("cluster-cidrs", "--cluster-cidr")
    }
    pub fn service_cidrs() -> SetDef {
        cidr_set("service-cidrs", "service IP ranges")
    }
    pub fn nodeport_addresses() -> SetDef {
        cidr_set("nodeport-addresses", "--nodeport-addresses")
    }

    pub fn all(family: Family) -> Vec<SetDef> {
        vec![
            cluster_ips(),
            service_ips(),
            service_ips_internal(),
            service_nodeports(),
            service_nodeports_internal(),
            service_endpoints(family),
            bucket_dispatch(),
            affinity(),
            no_endpoint_services(),
            no_endpoint_services_drop(),
            no_endpoint_nodeports(),
            no_endpoint_nodeports_drop(),
            hairpin(),
            firewall_ips(),
            firewall_allow(),
            cluster_cidrs(),
            service_cidrs(),
            nodeport_addresses(),
        ]
    }
}

/// What of the configuration shapes the fixed rules.
#[derive(Clone, Debug, Default)]
pub struct Shape {
    /// `--cluster-cidr` has a range of this family (enables the off-cluster masquerade and the
    /// in-cluster short-circuit by source range).
    pub has_cluster_cidrs: bool,
    /// `--nodeport-addresses` has a range of this family (else: every local address).
    pub has_nodeport_addresses: bool,
    /// Service CIDRs are known for this family (enables the drop of unallocated addresses).
    pub has_service_cidrs: bool,
}

/// Builds a rule's expressions and its nft text side by side.
struct RuleBuilder {
    family: Family,
    text: Vec<String>,
    exprs: Vec<Expr>,
}

const PROTOS: [(u8, &str); 3] = [(6, "tcp"), (17, "udp"), (132, "sctp")];

impl RuleBuilder {
    fn new(family: Family) -> Self {
        RuleBuilder {
            family,
            text: Vec::new(),
            exprs: Vec::new(),
        }
    }

    fn ipf(&self) -> &'static str {
        self.family.nft_name()
    }

    fn addr_regs(&self) -> u32 {
        self.family.addr_len() as u32 / 4
    }

    fn text(mut self, t: impl Into<String>) -> Self {
        self.text.push(t.into());
        self
    }

    fn push(&mut self, e: Expr) {
        self.exprs.push(e);
    }

    fn load_addr(&mut self, reg: u32, source: bool) -> u32 {
        let (offset, len) = match (self.family, source) {
            (Family::Ipv4, true) => (12, 4),
            (Family::Ipv4, false) => (16, 4),
            (Family::Ipv6, true) => (8, 16),
            (Family::Ipv6, false) => (24, 16),
        };
        self.push(Expr::Payload {
            dreg: reg32(reg),
            base: PayloadBase::Network,
            offset,
            len,
        });
        reg + self.addr_regs()
    }

    fn load_l4proto(&mut self, reg: u32) -> u32 {
        self.push(Expr::Meta {
            dreg: reg32(reg),
            key: MetaKey::L4Proto,
        });
        reg + 1
    }

    fn load_dport(&mut self, reg: u32) -> u32 {
        self.push(Expr::Payload {
            dreg: reg32(reg),
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
        });
        reg + 1
    }

    fn load_mark_masked(&mut self, reg: u32, mask: u32) -> u32 {
        self.push(Expr::Meta {
            dreg: reg32(reg),
            key: MetaKey::Mark,
        });
        self.push(Expr::Bitwise {
            sreg: reg32(reg),
            dreg: reg32(reg),
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        });
        reg + 1
    }

    /// `meta mark & MASK != 0` or `== VALUE`.
    fn mark_test(mut self, mask: u32, value: Option<u32>) -> Self {
        self.load_mark_masked(0, mask);
        match value {
            None => {
                self.push(Expr::Cmp {
                    sreg: reg32(0),
                    op: CmpOp::Neq,
                    data: 0u32.to_ne_bytes().to_vec(),
                });
                self.text(format!("meta mark & 0x{mask:08x} != 0x00000000"))
            }
            Some(v) => {
                self.push(Expr::Cmp {
                    sreg: reg32(0),
                    op: CmpOp::Eq,
                    data: v.to_ne_bytes().to_vec(),
                });
                self.text(format!("meta mark & 0x{mask:08x} == 0x{v:08x}"))
            }
        }
    }

    fn l4proto_is(mut self, proto: u8, name: &str) -> Self {
        self.load_l4proto(0);
        self.push(Expr::Cmp {
            sreg: reg32(0),
            op: CmpOp::Eq,
            data: vec![proto],
        });
        self.text(format!("meta l4proto {name}"))
    }

    fn ct_bit(mut self, key: CtKey, bit: u32, text: &str) -> Self {
        self.push(Expr::Ct {
            dreg: reg32(0),
            key,
        });
        self.push(Expr::Bitwise {
            sreg: reg32(0),
            dreg: reg32(0),
            mask: bit.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        });
        self.push(Expr::Cmp {
            sreg: reg32(0),
            op: CmpOp::Neq,
            data: 0u32.to_ne_bytes().to_vec(),
        });
        self.text(text)
    }

    fn fib_local(mut self, saddr: bool) -> Self {
        self.push(Expr::FibAddrType {
            dreg: reg32(0),
            saddr,
        });
        // RTN_LOCAL = 2
        self.push(Expr::Cmp {
            sreg: reg32(0),
            op: CmpOp::Eq,
            data: 2u32.to_ne_bytes().to_vec(),
        });
        self.text(if saddr {
            "fib saddr type local"
        } else {
            "fib daddr type local"
        })
    }

    /// `ip saddr @set` / `ip daddr != @set`.
    fn addr_in(mut self, source: bool, set: &str, invert: bool) -> Self {
        self.load_addr(0, source);
        self.push(Expr::Lookup {
            sreg: reg32(0),
            set: set.into(),
            dreg: None,
            invert,
        });
        let dir = if source { "saddr" } else { "daddr" };
        let op = if invert { "!= " } else { "" };
        let ipf = self.ipf();
        self.text(format!("{ipf} {dir} {op}@{set}"))
    }

    /// Not a loopback destination (node ports are not served on loopback, as upstream).
    fn not_loopback(mut self) -> Self {
        match self.family {
            Family::Ipv4 => {
                self.push(Expr::Payload {
                    dreg: reg32(0),
                    base: PayloadBase::Network,
                    offset: 16,
                    len: 1,
                });
                self.push(Expr::Cmp {
                    sreg: reg32(0),
                    op: CmpOp::Neq,
                    data: vec![127],
                });
                self.text("ip daddr != 127.0.0.0/8")
            }
            Family::Ipv6 => {
                self.push(Expr::Payload {
                    dreg: reg32(0),
                    base: PayloadBase::Network,
                    offset: 24,
                    len: 16,
                });
                self.push(Expr::Cmp {
                    sreg: reg32(0),
                    op: CmpOp::Neq,
                    data: std::net::Ipv6Addr::LOCALHOST.octets().to_vec(),
                });
                self.text("ip6 daddr != ::1")
            }
        }
    }

    /// The node-port destination test.
    fn nodeport_match(self, shape: &Shape) -> Self {
        if shape.has_nodeport_addresses {
            self.addr_in(false, "nodeport-addresses", false)
        } else {
            self.fib_local(false).not_loopback()
        }
    }

    /// `ip daddr . meta l4proto . th dport` into registers from 0.
    fn frontend_key(&mut self) -> String {
        let r = self.load_addr(0, false);
        let r = self.load_l4proto(r);
        self.load_dport(r);
        format!("{} daddr . meta l4proto . th dport", self.ipf())
    }

    /// `meta mark set KEY map @set` (+ `| 0x200` when `masquerade`) `goto dispatch`.
    fn set_mark_from(mut self, nodeport: bool, set: &str, masquerade: bool) -> Self {
        let key = if nodeport {
            let r = self.load_l4proto(0);
            self.load_dport(r);
            "meta l4proto . th dport".to_string()
        } else {
            self.frontend_key()
        };
        self.push(Expr::Lookup {
            sreg: reg32(0),
            set: set.into(),
            dreg: Some(reg32(0)),
            invert: false,
        });
        self.push(Expr::MetaSet {
            sreg: reg32(0),
            key: MetaKey::Mark,
        });
        let mut s = self.text(format!("meta mark set {key} map @{set}"));
        if masquerade {
            s.push(Expr::Meta {
                dreg: reg32(0),
                key: MetaKey::Mark,
            });
            let bit = mark::MASQ_ALWAYS;
            s.push(Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: (!bit).to_ne_bytes().to_vec(),
                xor: bit.to_ne_bytes().to_vec(),
            });
            s.push(Expr::MetaSet {
                sreg: reg32(0),
                key: MetaKey::Mark,
            });
            s = s.text(format!("meta mark set meta mark | 0x{bit:08x}"));
        }
        s.verdict(Verdict::Goto("dispatch".into()))
    }

    fn lookup_key(mut self, nodeport: bool, set: &str) -> Self {
        let key = if nodeport {
            let r = self.load_l4proto(0);
            self.load_dport(r);
            "meta l4proto . th dport".to_string()
        } else {
            self.frontend_key()
        };
        self.push(Expr::Lookup {
            sreg: reg32(0),
            set: set.into(),
            dreg: None,
            invert: false,
        });
        self.text(format!("{key} @{set}"))
    }

    fn verdict(mut self, v: Verdict) -> Self {
        let t = v.text();
        self.push(Expr::Immediate { verdict: v });
        self.text(t)
    }

    fn reject(mut self) -> Self {
        // ICMP port unreachable (3) / ICMPv6 port unreachable (4), as nft's plain `reject`.
        let code = if self.family == Family::Ipv4 { 3 } else { 4 };
        self.push(Expr::Reject { icmp_code: code });
        self.text("reject")
    }

    fn reject_tcp_reset(mut self) -> Self {
        self = self.l4proto_is(6, "tcp");
        self.push(Expr::RejectTcpReset);
        self.text("reject with tcp reset")
    }

    fn masquerade(mut self) -> Self {
        self.push(Expr::Masq);
        self.text("masquerade")
    }

    fn build(self) -> Rule {
        Rule {
            text: self.text.join(" "),
            exprs: self.exprs,
        }
    }
}

/// Reject rules from their matches, then `rest`. IPv6 TCP gets `reject with tcp reset` first:
/// an ICMPv6 port unreachable reaches a connecting TCP socket only with the SYN retransmission
/// (~1 s, measured here), while IPv4 keeps upstream's ICMP port unreachable, which is immediate.
fn with_tcp_reset(family: Family, matches: Vec<RuleBuilder>, rest: Vec<Rule>) -> Vec<Rule> {
    let mut out = Vec::new();
    for m in matches {
        if family == Family::Ipv6 {
            let twin = RuleBuilder {
                family: m.family,
                text: m.text.clone(),
                exprs: m.exprs.clone(),
            };
            out.push(twin.reject_tcp_reset().build());
        }
        out.push(m.reject().build());
    }
    out.extend(rest);
    out
}

/// A chain of the fixed skeleton.
pub struct ChainDef {
    pub name: String,
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

fn base(chain_type: &'static str, hooknum: u32, priority: i32) -> Option<Hook> {
    Some(Hook {
        chain_type,
        hooknum,
        priority,
    })
}

/// The `endpoints-N` chain name.
pub fn endpoints_chain(n: u32) -> String {
    format!("endpoints-{n}")
}

/// The rule of `affinity-update` for one timeout class.
pub fn affinity_update_rule(family: Family, class: u32, timeout_seconds: u32) -> Rule {
    let value = class << mark::AFFINITY_SHIFT;
    let mut b = RuleBuilder::new(family).mark_test(mark::AFFINITY_MASK, Some(value));
    let ipf = b.ipf();
    let r = b.load_addr(0, true);
    b.load_mark_masked(r, mark::SLOT_MASK);
    let data = r + 1;
    let r2 = b.load_addr(data, false);
    b.load_dport(r2);
    b.push(Expr::Dynset {
        set: "affinity".into(),
        update: true,
        sreg_key: reg32(0),
        sreg_data: Some(reg32(data)),
        timeout_ms: u64::from(timeout_seconds) * 1000,
    });
    b.text(format!(
        "update @affinity {{ {ipf} saddr . (meta mark & 0x{:08x}) timeout {timeout_seconds}s : {ipf} daddr . th dport }}",
        mark::SLOT_MASK
    ))
    .build()
}

/// All chains and rules of the skeleton (without the affinity-update rules, which follow the
/// timeouts in use).
pub fn chains(family: Family, shape: &Shape) -> Vec<ChainDef> {
    let rb = || RuleBuilder::new(family);
    let ipf = family.nft_name();
    let mut out = Vec::new();

    // services
    let mut services = Vec::new();
    if shape.has_cluster_cidrs {
        services.push(
            rb().addr_in(true, "cluster-cidrs", false)
                .set_mark_from(false, "service-ips-internal", false)
                .build(),
        );
    }
    services.push(
        rb().fib_local(true)
            .set_mark_from(false, "service-ips-internal", true)
            .build(),
    );
    services.push(rb().set_mark_from(false, "service-ips", false).build());
    if shape.has_cluster_cidrs {
        services.push(
            rb().nodeport_match(shape)
                .addr_in(true, "cluster-cidrs", false)
                .set_mark_from(true, "service-nodeports-internal", false)
                .build(),
        );
    }
    services.push(
        rb().nodeport_match(shape)
            .fib_local(true)
            .set_mark_from(true, "service-nodeports-internal", true)
            .build(),
    );
    services.push(
        rb().nodeport_match(shape)
            .set_mark_from(true, "service-nodeports", false)
            .build(),
    );
    out.push(ChainDef {
        name: "services".into(),
        hook: None,
        rules: services,
    });

    // dispatch
    let mut dispatch = Vec::new();
    for (proto, name) in PROTOS {
        let mut b = rb()
            .mark_test(mark::AFFINITY_MASK, None)
            .l4proto_is(proto, name);
        let r = b.load_addr(0, true);
        b.load_mark_masked(r, mark::SLOT_MASK);
        b.push(Expr::Lookup {
            sreg: reg32(0),
            set: "affinity".into(),
            dreg: Some(reg32(0)),
            invert: false,
        });
        let addr_regs = b.addr_regs();
        b.push(Expr::Nat {
            kind: NatType::Dnat,
            family: u32::from(family.nfproto()),
            reg_addr: reg32(0),
            reg_proto: Some(reg32(addr_regs)),
        });
        dispatch.push(
            b.text(format!(
                "dnat {ipf} to {ipf} saddr . (meta mark & 0x{:08x}) map @affinity",
                mark::SLOT_MASK
            ))
            .build(),
        );
    }
    {
        let mut b = rb();
        b.load_mark_masked(0, mark::COUNT_MASK);
        b.push(Expr::Lookup {
            sreg: reg32(0),
            set: "bucket-dispatch".into(),
            dreg: Some(0),
            invert: false,
        });
        dispatch.push(
            b.text(format!(
                "meta mark & 0x{:08x} vmap @bucket-dispatch",
                mark::COUNT_MASK
            ))
            .build(),
        );
    }
    out.push(ChainDef {
        name: "dispatch".into(),
        hook: None,
        rules: dispatch,
    });

    // endpoints-N
    for n in 1..=MAX_BUCKETS {
        let mut rules = Vec::new();
        for (proto, name) in PROTOS {
            let mut b = rb().l4proto_is(proto, name);
            let r = b.load_mark_masked(0, mark::SLOT_MASK);
            b.push(Expr::Numgen {
                dreg: reg32(r),
                modulus: n,
            });
            b.push(Expr::Lookup {
                sreg: reg32(0),
                set: "service-endpoints".into(),
                dreg: Some(reg32(0)),
                invert: false,
            });
            let addr_regs = b.addr_regs();
            b.push(Expr::Nat {
                kind: NatType::Dnat,
                family: u32::from(family.nfproto()),
                reg_addr: reg32(0),
                reg_proto: Some(reg32(addr_regs)),
            });
            rules.push(
                b.text(format!("dnat {ipf} to (meta mark & 0x{:08x}) . numgen random mod {n} map @service-endpoints", mark::SLOT_MASK))
                    .build(),
            );
        }
        out.push(ChainDef {
            name: endpoints_chain(n),
            hook: None,
            rules,
        });
    }

    out.push(ChainDef {
        name: "affinity-update".into(),
        hook: None,
        rules: Vec::new(),
    });

    // NAT base chains.
    out.push(ChainDef {
        name: "nat-prerouting".into(),
        hook: base("nat", 0, -100),
        rules: vec![rb().verdict(Verdict::Jump("services".into())).build()],
    });
    out.push(ChainDef {
        name: "nat-output".into(),
        hook: base("nat", 3, -100),
        rules: vec![rb().verdict(Verdict::Jump("services".into())).build()],
    });
    let mut post = vec![
        rb().verdict(Verdict::Jump("affinity-update".into()))
            .build(),
    ];
    post.push(
        rb().ct_bit(CtKey::Status, 0x20, "ct status dnat")
            .mark_test(mark::MASQ_ALWAYS, None)
            .masquerade()
            .build(),
    );
    if shape.has_cluster_cidrs {
        post.push(
            rb().ct_bit(CtKey::Status, 0x20, "ct status dnat")
                .mark_test(mark::MASQ_OFF_CLUSTER, None)
                .addr_in(true, "cluster-cidrs", true)
                .masquerade()
                .build(),
        );
    }
    {
        let mut b = rb().ct_bit(CtKey::Status, 0x20, "ct status dnat");
        let r = b.load_addr(0, true);
        b.load_addr(r, false);
        b.push(Expr::Lookup {
            sreg: reg32(0),
            set: "hairpin".into(),
            dreg: None,
            invert: false,
        });
        post.push(
            b.text(format!("{ipf} saddr . {ipf} daddr @hairpin"))
                .masquerade()
                .build(),
        );
    }
    out.push(ChainDef {
        name: "nat-postrouting".into(),
        hook: base("nat", 4, 100),
        rules: post,
    });

    // Filter chains.
    let ct_new = || rb().ct_bit(CtKey::State, 0x08, "ct state new");
    out.push(ChainDef {
        name: "firewall-check".into(),
        hook: None,
        rules: vec![{
            let mut b = rb().lookup_key(false, "firewall-ips");
            let r = b.load_addr(0, false);
            let r = b.load_l4proto(r);
            b.push(Expr::Byteorder {
                sreg: reg32(r - 1),
                dreg: reg32(r - 1),
                hton: true,
                len: 1,
                size: 2,
            });
            let r = b.load_dport(r);
            b.load_addr(r, true);
            b.push(Expr::Lookup {
                sreg: reg32(0),
                set: "firewall-allow".into(),
                dreg: None,
                invert: true,
            });
            b.text(format!(
                "{ipf} daddr . meta l4proto . th dport . {ipf} saddr != @firewall-allow"
            ))
            .verdict(Verdict::Drop)
            .build()
        }],
    });
    out.push(ChainDef {
        name: "service-endpoints-check".into(),
        hook: None,
        rules: with_tcp_reset(
            family,
            vec![rb().lookup_key(false, "no-endpoint-services")],
            vec![
                rb().lookup_key(false, "no-endpoint-services-drop")
                    .verdict(Verdict::Drop)
                    .build(),
            ],
        ),
    });
    out.push(ChainDef {
        name: "nodeport-endpoints-check".into(),
        hook: None,
        rules: with_tcp_reset(
            family,
            vec![
                rb().nodeport_match(shape)
                    .lookup_key(true, "no-endpoint-nodeports"),
            ],
            vec![
                rb().nodeport_match(shape)
                    .lookup_key(true, "no-endpoint-nodeports-drop")
                    .verdict(Verdict::Drop)
                    .build(),
            ],
        ),
    });
    let mut cluster_ips_check = with_tcp_reset(
        family,
        vec![rb().addr_in(false, "cluster-ips", false)],
        Vec::new(),
    );
    if shape.has_service_cidrs {
        cluster_ips_check.push(
            rb().addr_in(false, "service-cidrs", false)
                .verdict(Verdict::Drop)
                .build(),
        );
    }
    out.push(ChainDef {
        name: "cluster-ips-check".into(),
        hook: None,
        rules: cluster_ips_check,
    });

    let jump = |chain: &str| ct_new().verdict(Verdict::Jump(chain.into())).build();
    out.push(ChainDef {
        name: "filter-prerouting".into(),
        hook: base("filter", 0, -110),
        rules: vec![jump("firewall-check")],
    });
    out.push(ChainDef {
        name: "filter-output-pre-dnat".into(),
        hook: base("filter", 3, -110),
        rules: vec![jump("firewall-check")],
    });
    out.push(ChainDef {
        name: "filter-input".into(),
        hook: base("filter", 1, -10),
        rules: vec![
            jump("nodeport-endpoints-check"),
            jump("service-endpoints-check"),
        ],
    });
    out.push(ChainDef {
        name: "filter-forward".into(),
        hook: base("filter", 2, -10),
        rules: vec![jump("service-endpoints-check"), jump("cluster-ips-check")],
    });
    out.push(ChainDef {
        name: "filter-output".into(),
        hook: base("filter", 3, -10),
        rules: vec![jump("service-endpoints-check"), jump("cluster-ips-check")],
    });
    out
}

/// The constant elements of `bucket-dispatch`.
pub fn bucket_dispatch_elements() -> Vec<Elem> {
    (1..=MAX_BUCKETS)
        .map(|n| Elem {
            key: vec![Val::Mark(n)],
            data: Data::Verdict(Verdict::Goto(endpoints_chain(n))),
        })
        .collect()
}
