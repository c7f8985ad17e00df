//! Typed nf_tables objects and the transaction that carries them. One [`Transaction`] encodes
//! both to a netlink batch (what the kernel gets) and to `nft -f` text (golden tests,
//! `nft --check`, debugging), from the same values.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::netlink::expr::{Expr, Verdict};
use crate::netlink::msg::{Batch, ElemData, Element, Family, Hook, SetSpec};

/// nft datatype ids (as the `nft` tool numbers them) for key/data type attributes, so that
/// `nft list` prints our sets readably.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_MARK: u32 = 19;

/// The kind of one field of a set key or map value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Addr,
    Proto,
    Port,
    Mark,
    /// A `numgen` result (stored as a mark-typed 32-bit value).
    Index,
}

impl FieldKind {
    fn type_id(self, family: Family) -> u32 {
        match self {
            FieldKind::Addr => match family {
                Family::Ipv4 => TYPE_IPADDR,
                Family::Ipv6 => TYPE_IP6ADDR,
            },
            FieldKind::Proto => TYPE_INET_PROTOCOL,
            FieldKind::Port => TYPE_INET_SERVICE,
            FieldKind::Mark | FieldKind::Index => TYPE_MARK,
        }
    }

    /// Length of the field itself (not padded).
    fn len(self, family: Family) -> u32 {
        match self {
            FieldKind::Addr => family.addr_len() as u32,
            FieldKind::Proto => 1,
            FieldKind::Port => 2,
            FieldKind::Mark | FieldKind::Index => 4,
        }
    }

    fn type_name(self, family: Family) -> &'static str {
        match self {
            FieldKind::Addr => match family {
                Family::Ipv4 => "ipv4_addr",
                Family::Ipv6 => "ipv6_addr",
            },
            FieldKind::Proto => "inet_proto",
            FieldKind::Port => "inet_service",
            FieldKind::Mark | FieldKind::Index => "mark",
        }
    }
}

fn padded(len: u32) -> u32 {
    len.div_ceil(4) * 4
}

/// One value of a key or data field.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Val {
    Addr(IpAddr),
    /// A prefix, only as the last field of an interval set.
    Prefix(IpNet),
    Proto(u8),
    Port(u16),
    Mark(u32),
    Index(u32),
}

impl Val {
    fn push_bytes(&self, out: &mut Vec<u8>, end: bool) {
        let start = out.len();
        match self {
            Val::Addr(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
            Val::Addr(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
            Val::Prefix(net) => {
                let addr = if end { net.broadcast() } else { net.network() };
                match addr {
                    IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                }
            }
            Val::Proto(p) => out.push(*p),
            Val::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
            // Registers hold marks and numgen results in host byte order.
            Val::Mark(m) | Val::Index(m) => out.extend_from_slice(&m.to_ne_bytes()),
        }
        let len = out.len() - start;
        out.resize(start + padded(len as u32) as usize, 0);
    }

    fn text(&self) -> String {
        match self {
            Val::Addr(a) => a.to_string(),
            Val::Prefix(n) => n.to_string(),
            Val::Proto(6) => "tcp".into(),
            Val::Proto(17) => "udp".into(),
            Val::Proto(132) => "sctp".into(),
            Val::Proto(p) => p.to_string(),
            Val::Port(p) => p.to_string(),
            Val::Mark(m) => format!("0x{m:08x}"),
            Val::Index(i) => i.to_string(),
        }
    }
}

/// Concatenated key bytes (each field padded to 32 bits, as in registers).
pub fn key_bytes(vals: &[Val], end: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * 8);
    for v in vals {
        v.push_bytes(&mut out, end);
    }
    out
}

fn concat_text(vals: &[Val]) -> String {
    vals.iter().map(Val::text).collect::<Vec<_>>().join(" . ")
}

/// Data of a map element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Data {
    None,
    Vals(Vec<Val>),
    Verdict(Verdict),
}

/// A typed set element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Elem {
    pub key: Vec<Val>,
    pub data: Data,
}

impl Elem {
    pub fn key(key: Vec<Val>) -> Elem {
        Elem {
            key,
            data: Data::None,
        }
    }

    pub fn map(key: Vec<Val>, data: Vec<Val>) -> Elem {
        Elem {
            key,
            data: Data::Vals(data),
        }
    }

    /// Netlink elements: one, or for a prefix in a single-field interval set (an rbtree) a
    /// start element and an end element (first address after the prefix, flagged), as nft does.
    fn to_netlink(&self, interval: bool, out: &mut Vec<Element>) {
        let data = match &self.data {
            Data::None => ElemData::None,
            Data::Vals(v) => ElemData::Value(key_bytes(v, false)),
            Data::Verdict(v) => ElemData::Verdict(v.clone()),
        };
        if let ([Val::Prefix(net)], true) = (self.key.as_slice(), interval) {
            out.push(Element {
                key: key_bytes(&self.key, false),
                key_end: None,
                flags: 0,
                data,
            });
            let after: Option<Vec<u8>> = match net.broadcast() {
                std::net::IpAddr::V4(a) => u32::from(a)
                    .checked_add(1)
                    .map(|n| n.to_be_bytes().to_vec()),
                std::net::IpAddr::V6(a) => u128::from(a)
                    .checked_add(1)
                    .map(|n| n.to_be_bytes().to_vec()),
            };
            if let Some(key) = after {
                out.push(Element {
                    key,
                    key_end: None,
                    flags: 1,
                    data: ElemData::None,
                });
            }
            return;
        }
        let has_prefix = self.key.iter().any(|v| matches!(v, Val::Prefix(_)));
        out.push(Element {
            key: key_bytes(&self.key, false),
            key_end: (interval && has_prefix).then(|| key_bytes(&self.key, true)),
            flags: 0,
            data,
        });
    }

    fn text(&self) -> String {
        match &self.data {
            Data::None => concat_text(&self.key),
            Data::Vals(v) => format!("{} : {}", concat_text(&self.key), concat_text(v)),
            Data::Verdict(v) => format!("{} : {}", concat_text(&self.key), v.text()),
        }
    }
}

/// What a set's data is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetData {
    None,
    Fields(Vec<FieldKind>),
    Verdict,
}

/// A named set or map of the portico table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDef {
    pub name: &'static str,
    pub key: Vec<FieldKind>,
    pub data: SetData,
    pub interval: bool,
    /// Elements added from the packet path (`update @set`), with this default timeout.
    pub dynamic_timeout_ms: Option<u64>,
    /// `typeof` text for the declaration instead of `type` (when nft cannot name the types).
    pub typeof_text: Option<&'static str>,
    pub comment: &'static str,
}

impl SetDef {
    fn spec(&self, family: Family) -> SetSpec {
        let key_len: u32 = self.key.iter().map(|f| padded(f.len(family))).sum();
        let key_type = self
            .key
            .iter()
            .fold(0u32, |acc, f| (acc << 6) | f.type_id(family));
        let data = match &self.data {
            SetData::None => None,
            SetData::Verdict => Some((crate::netlink::msg::NFT_DATA_VERDICT, 0)),
            SetData::Fields(fields) => {
                let len = fields.iter().map(|f| padded(f.len(family))).sum();
                let ty = fields
                    .iter()
                    .fold(0u32, |acc, f| (acc << 6) | f.type_id(family));
                Some((ty, len))
            }
        };
        let mut flags = 0;
        if self.interval {
            flags |= crate::netlink::msg::NFT_SET_INTERVAL;
        }
        if self.dynamic_timeout_ms.is_some() {
            flags |= crate::netlink::msg::NFT_SET_TIMEOUT | crate::netlink::msg::NFT_SET_EVAL;
        }
        SetSpec {
            name: self.name.to_string(),
            flags,
            key_type,
            key_len,
            concat: if self.key.len() > 1 {
                self.key.iter().map(|f| f.len(family)).collect()
            } else {
                Vec::new()
            },
            data,
            timeout_ms: self.dynamic_timeout_ms,
            size: self.dynamic_timeout_ms.map(|_| 65535),
            userdata: self.userdata(),
        }
    }

    /// libnftnl userdata TLVs telling the `nft` tool that marks are in host byte order
    /// (KEYBYTEORDER = 0, DATABYTEORDER = 1; BYTEORDER_HOST_ENDIAN = 1). Display only: the
    /// kernel ignores it, and without it `nft list` prints our marks byte-swapped.
    fn userdata(&self) -> Vec<u8> {
        let mut u = Vec::new();
        let mut host = |kind: u8| {
            u.extend_from_slice(&[kind, 4]);
            u.extend_from_slice(&1u32.to_ne_bytes());
        };
        if self.key == [FieldKind::Mark] {
            host(0);
        }
        if self.data == SetData::Fields(vec![FieldKind::Mark]) {
            host(1);
        }
        u
    }

    fn decl_text(&self, family: Family, table: &str) -> String {
        let names = |fields: &[FieldKind]| {
            fields
                .iter()
                .map(|f| f.type_name(family))
                .collect::<Vec<_>>()
                .join(" . ")
        };
        let kind = if matches!(self.data, SetData::None) {
            "set"
        } else {
            "map"
        };
        let ipf = family.nft_name();
        let typeof_field = |f: &FieldKind| match f {
            FieldKind::Addr => format!("{ipf} daddr"),
            FieldKind::Proto => "meta l4proto".to_string(),
            FieldKind::Port => "th dport".to_string(),
            FieldKind::Mark | FieldKind::Index => "meta mark".to_string(),
        };
        let mut body = match (self.typeof_text, &self.data) {
            (Some(t), _) => format!("typeof {t}; "),
            // `type … : mark` would make nft store the data big-endian; typeof keeps host order.
            (None, SetData::Fields(d)) if *d == vec![FieldKind::Mark] => {
                let key: Vec<String> = self.key.iter().map(typeof_field).collect();
                format!("typeof {} : meta mark; ", key.join(" . "))
            }
            (None, SetData::None) => format!("type {}; ", names(&self.key)),
            (None, SetData::Verdict) => format!("type {} : verdict; ", names(&self.key)),
            (None, SetData::Fields(d)) => format!("type {} : {}; ", names(&self.key), names(d)),
        };
        let mut flags = Vec::new();
        if self.interval {
            flags.push("interval");
        }
        if self.dynamic_timeout_ms.is_some() {
            flags.push("dynamic");
            flags.push("timeout");
        }
        if !flags.is_empty() {
            let _ = write!(body, "flags {}; ", flags.join(","));
        }
        if let Some(ms) = self.dynamic_timeout_ms {
            let _ = write!(body, "timeout {}s; size 65535; ", ms / 1000);
        }
        format!(
            "add {kind} {} {table} {} {{ {body}}}",
            family.nft_name(),
            self.name
        )
    }
}

/// A rule: its expressions and the nft text that means the same thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub text: String,
    pub exprs: Vec<Expr>,
}

/// One step of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    AddTable,
    DeleteTable,
    AddChain { name: String, hook: Option<Hook> },
    AddSet(SetDef),
    AddRule { chain: String, rule: Rule },
    FlushChain { chain: String },
    AddElements { set: SetDef, elems: Vec<Elem> },
    DeleteElements { set: SetDef, elems: Vec<Elem> },
}

/// An atomic change to one table.
#[derive(Clone, Debug)]
pub struct Transaction {
    pub family: Family,
    pub table: String,
    pub ops: Vec<Op>,
}

fn hook_text(hook: &Hook) -> String {
    let name = match hook.hooknum {
        0 => "prerouting",
        1 => "input",
        2 => "forward",
        3 => "output",
        _ => "postrouting",
    };
    format!(
        "type {} hook {name} priority {}; policy accept;",
        hook.chain_type, hook.priority
    )
}

impl Transaction {
    pub fn new(family: Family, table: &str) -> Transaction {
        Transaction {
            family,
            table: table.to_string(),
            ops: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of elements added and deleted.
    pub fn element_count(&self) -> (usize, usize) {
        let mut added = 0;
        let mut deleted = 0;
        for op in &self.ops {
            match op {
                Op::AddElements { elems, .. } => added += elems.len(),
                Op::DeleteElements { elems, .. } => deleted += elems.len(),
                _ => {}
            }
        }
        (added, deleted)
    }

    /// Appends this transaction's messages to a netlink batch.
    pub fn encode(&self, batch: &mut Batch, next_set_id: &mut u32) {
        let f = self.family;
        let t = self.table.as_str();
        for op in &self.ops {
            match op {
                Op::AddTable => batch.add_table(f, t),
                Op::DeleteTable => batch.delete_table(f, t),
                Op::AddChain { name, hook } => batch.add_chain(f, t, name, hook.as_ref()),
                Op::AddSet(set) => {
                    *next_set_id += 1;
                    batch.add_set(f, t, &set.spec(f), *next_set_id);
                }
                Op::AddRule { chain, rule } => batch.add_rule(f, t, chain, &rule.exprs, &rule.text),
                Op::FlushChain { chain } => batch.flush_chain(f, t, chain),
                Op::AddElements { set, elems } => {
                    let mut encoded = Vec::with_capacity(elems.len());
                    elems
                        .iter()
                        .for_each(|e| e.to_netlink(set.interval, &mut encoded));
                    batch.add_elements(f, t, set.name, &encoded);
                }
                Op::DeleteElements { set, elems } => {
                    let mut encoded = Vec::with_capacity(elems.len());
                    elems
                        .iter()
                        .for_each(|e| e.to_netlink(set.interval, &mut encoded));
                    batch.delete_elements(f, t, set.name, &encoded);
                }
            }
        }
    }

    /// The same transaction as `nft -f` input.
    pub fn to_nft_text(&self) -> String {
        let fam = self.family.nft_name();
        let t = &self.table;
        let mut out = String::new();
        for op in &self.ops {
            let _ = match op {
                Op::AddTable => writeln!(out, "add table {fam} {t}"),
                Op::DeleteTable => writeln!(out, "delete table {fam} {t}"),
                Op::AddChain { name, hook: None } => writeln!(out, "add chain {fam} {t} {name}"),
                Op::AddChain {
                    name,
                    hook: Some(h),
                } => writeln!(out, "add chain {fam} {t} {name} {{ {} }}", hook_text(h)),
                Op::AddSet(set) => writeln!(out, "{}", set.decl_text(self.family, t)),
                Op::AddRule { chain, rule } => {
                    writeln!(out, "add rule {fam} {t} {chain} {}", rule.text)
                }
                Op::FlushChain { chain } => writeln!(out, "flush chain {fam} {t} {chain}"),
                Op::AddElements { set, elems } if !elems.is_empty() => {
                    let items: Vec<String> = elems.iter().map(Elem::text).collect();
                    writeln!(
                        out,
                        "add element {fam} {t} {} {{ {} }}",
                        set.name,
                        items.join(", ")
                    )
                }
                Op::DeleteElements { set, elems } if !elems.is_empty() => {
                    // Deleting a map element names only its key.
                    let items: Vec<String> = elems.iter().map(|e| concat_text(&e.key)).collect();
                    writeln!(
                        out,
                        "delete element {fam} {t} {} {{ {} }}",
                        set.name,
                        items.join(", ")
                    )
                }
                Op::AddElements { .. } | Op::DeleteElements { .. } => Ok(()),
            };
        }
        out
    }
}
