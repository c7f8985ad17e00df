//! nf_tables messages (tables, chains, sets, elements, rules) packed into one
//! `NFNL_MSG_BATCH_BEGIN … END` transaction: the kernel applies all of it or none of it.

use super::attr::AttrWriter;
use super::expr::{Expr, Verdict, encode_value, encode_verdict_data};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

/// Set flags (`enum nft_set_flags`).
pub const NFT_SET_INTERVAL: u32 = 0x4;
pub const NFT_SET_MAP: u32 = 0x8;
pub const NFT_SET_TIMEOUT: u32 = 0x10;
pub const NFT_SET_EVAL: u32 = 0x20;
pub const NFT_SET_CONCAT: u32 = 0x80;
/// `NFT_DATA_VERDICT`: the data type of verdict maps.
pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// Largest element list attribute we build (netlink attribute lengths are 16 bits).
const MAX_ELEMENT_LIST_BYTES: usize = 60_000;

/// Address family of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// NFPROTO_IPV4 / NFPROTO_IPV6.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Ipv4 => 2,
            Family::Ipv6 => 10,
        }
    }

    /// `ip` / `ip6` as nft spells it.
    pub fn nft_name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    pub fn addr_len(self) -> usize {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }
}

/// A base chain's hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// "nat" or "filter".
    pub chain_type: &'static str,
    /// NF_INET_PRE_ROUTING = 0, LOCAL_IN = 1, FORWARD = 2, LOCAL_OUT = 3, POST_ROUTING = 4.
    pub hooknum: u32,
    pub priority: i32,
}

/// A set or map declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// Lengths of the concatenated key fields (empty for a single field).
    pub concat: Vec<u32>,
    /// For maps: the data type and its length (verdict maps: `NFT_DATA_VERDICT`, 0).
    pub data: Option<(u32, u32)>,
    pub timeout_ms: Option<u64>,
    pub size: Option<u32>,
    /// `NFTA_SET_USERDATA` (libnftnl TLVs; only read back by the `nft` tool for display).
    pub userdata: Vec<u8>,
}

/// Data of one element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElemData {
    None,
    Value(Vec<u8>),
    Verdict(Verdict),
}

/// One set element: key, optional interval end, data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    /// `NFT_SET_ELEM_INTERVAL_END` (1) on the element that closes an rbtree interval.
    pub flags: u32,
    pub data: ElemData,
}

impl Element {
    fn encoded_len_estimate(&self) -> usize {
        let data = match &self.data {
            ElemData::None => 0,
            ElemData::Value(v) => v.len() + 12,
            ElemData::Verdict(_) => 64,
        };
        16 + self.key.len() + self.key_end.as_ref().map_or(0, |k| k.len() + 12) + data
    }

    fn encode(&self, w: &mut AttrWriter) {
        // NFTA_LIST_ELEM { KEY = 1, DATA = 2, KEY_END = 10 }
        w.nested(1, |w| {
            encode_value(w, 1, &self.key);
            if let Some(end) = &self.key_end {
                encode_value(w, 10, end);
            }
            if self.flags != 0 {
                w.be32(3, self.flags);
            }
            match &self.data {
                ElemData::None => {}
                ElemData::Value(v) => encode_value(w, 2, v),
                ElemData::Verdict(v) => encode_verdict_data(w, 2, v),
            }
        });
    }
}

/// A batch of nf_tables messages with a human description per sequence number, used to turn a
/// kernel error into a message that names the object.
#[derive(Debug, Default)]
pub struct Batch {
    w: AttrWriter,
    seq_base: u32,
    next_seq: u32,
    /// `(seq, description)` of every message that asked for an ACK.
    pub described: Vec<(u32, String)>,
}

impl Batch {
    pub fn new(seq_base: u32) -> Self {
        let mut batch = Batch {
            w: AttrWriter::new(),
            seq_base,
            next_seq: seq_base,
            described: Vec::new(),
        };
        batch.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        batch
    }

    /// Number of nf_tables messages in the batch (without BEGIN/END).
    pub fn message_count(&self) -> usize {
        self.described.len()
    }

    pub fn first_seq(&self) -> u32 {
        self.seq_base
    }

    fn header(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> (usize, u32) {
        let start = self.w.buf.len();
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        // struct nlmsghdr
        self.w.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.w.buf.extend_from_slice(&kind.to_ne_bytes());
        self.w.buf.extend_from_slice(&flags.to_ne_bytes());
        self.w.buf.extend_from_slice(&seq.to_ne_bytes());
        self.w.buf.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg
        self.w.buf.push(family);
        self.w.buf.push(0);
        self.w.buf.extend_from_slice(&res_id.to_be_bytes());
        if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
            self.finish(start);
        }
        (start, seq)
    }

    fn finish(&mut self, start: usize) {
        let len = (self.w.buf.len() - start) as u32;
        self.w.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn message(
        &mut self,
        msg: u16,
        family: Family,
        extra_flags: u16,
        what: String,
        body: impl FnOnce(&mut AttrWriter),
    ) {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let (start, seq) = self.header(
            kind,
            NLM_F_REQUEST | NLM_F_ACK | extra_flags,
            family.nfproto(),
            0,
        );
        body(&mut self.w);
        self.finish(start);
        self.described.push((seq, what));
    }

    pub fn add_table(&mut self, family: Family, table: &str) {
        self.message(
            NFT_MSG_NEWTABLE,
            family,
            NLM_F_CREATE,
            format!("add table {} {table}", family.nft_name()),
            |w| {
                w.str(1, table);
            },
        );
    }

    pub fn delete_table(&mut self, family: Family, table: &str) {
        self.message(
            NFT_MSG_DELTABLE,
            family,
            0,
            format!("delete table {} {table}", family.nft_name()),
            |w| {
                w.str(1, table);
            },
        );
    }

    pub fn add_chain(&mut self, family: Family, table: &str, chain: &str, hook: Option<&Hook>) {
        self.message(
            NFT_MSG_NEWCHAIN,
            family,
            NLM_F_CREATE,
            format!("add chain {table} {chain}"),
            |w| {
                w.str(1, table);
                w.str(3, chain);
                if let Some(hook) = hook {
                    w.nested(4, |w| {
                        w.be32(1, hook.hooknum);
                        w.be32(2, hook.priority as u32);
                    });
                    w.be32(5, 1); // policy accept
                    w.str(7, hook.chain_type);
                }
            },
        );
    }

    /// Appends a rule (`NFTA_RULE_TABLE = 1, CHAIN = 2, EXPRESSIONS = 4`).
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        exprs: &[Expr],
        text: &str,
    ) {
        self.message(
            NFT_MSG_NEWRULE,
            family,
            NLM_F_CREATE | 0x800, /* NLM_F_APPEND */
            format!("add rule {chain}: {text}"),
            |w| {
                w.str(1, table);
                w.str(2, chain);
                w.nested(4, |w| {
                    for expr in exprs {
                        expr.encode(w);
                    }
                });
            },
        );
    }

    /// Deletes every rule of a chain (DELRULE without a handle).
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.message(
            NFT_MSG_DELRULE,
            family,
            0,
            format!("flush chain {chain}"),
            |w| {
                w.str(1, table);
                w.str(2, chain);
            },
        );
    }

    pub fn add_set(&mut self, family: Family, table: &str, set: &SetSpec, id: u32) {
        self.message(
            NFT_MSG_NEWSET,
            family,
            NLM_F_CREATE,
            format!("add set {}", set.name),
            |w| {
                w.str(1, table);
                w.str(2, &set.name);
                // Like nft: the field lengths (and the CONCAT flag) only for interval sets, which the
                // kernel stores in pipapo; plain concatenations live in a hash.
                let interval_concat = set.flags & NFT_SET_INTERVAL != 0 && !set.concat.is_empty();
                let mut flags = set.flags;
                if interval_concat {
                    flags |= NFT_SET_CONCAT;
                }
                if set.data.is_some() {
                    flags |= NFT_SET_MAP;
                }
                w.be32(3, flags);
                w.be32(4, set.key_type);
                w.be32(5, set.key_len);
                if let Some((data_type, data_len)) = set.data {
                    w.be32(6, data_type);
                    if data_type != NFT_DATA_VERDICT {
                        w.be32(7, data_len);
                    }
                }
                if set.size.is_some() || interval_concat {
                    w.nested(9, |w| {
                        if let Some(size) = set.size {
                            w.be32(1, size);
                        }
                        if interval_concat {
                            w.nested(2, |w| {
                                for len in &set.concat {
                                    w.nested(1, |w| w.be32(1, *len));
                                }
                            });
                        }
                    });
                }
                w.be32(10, id);
                if let Some(timeout) = set.timeout_ms {
                    w.be64(11, timeout);
                }
                if !set.userdata.is_empty() {
                    w.bytes(13, &set.userdata);
                }
            },
        );
    }

    /// Adds elements, split into messages whose element list stays under 64 KiB.
    pub fn add_elements(&mut self, family: Family, table: &str, set: &str, elements: &[Element]) {
        self.elements(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            family,
            table,
            set,
            elements,
        );
    }

    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: &[Element],
    ) {
        self.elements(NFT_MSG_DELSETELEM, 0, family, table, set, elements);
    }

    fn elements(
        &mut self,
        msg: u16,
        flags: u16,
        family: Family,
        table: &str,
        set: &str,
        elements: &[Element],
    ) {
        let verb = if msg == NFT_MSG_NEWSETELEM {
            "add"
        } else {
            "delete"
        };
        let mut start = 0;
        while start < elements.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < elements.len()
                && (end == start
                    || bytes + elements[end].encoded_len_estimate() < MAX_ELEMENT_LIST_BYTES)
            {
                bytes += elements[end].encoded_len_estimate();
                end += 1;
            }
            let chunk = &elements[start..end];
            self.message(
                msg,
                family,
                flags,
                format!("{verb} {} element(s) of {set}", chunk.len()),
                |w| {
                    w.str(1, table);
                    w.str(2, set);
                    w.nested(3, |w| {
                        for element in chunk {
                            element.encode(w);
                        }
                    });
                },
            );
            start = end;
        }
    }

    /// Closes the batch and returns the bytes to send in one `sendmsg`.
    pub fn finish_bytes(mut self) -> (Vec<u8>, Vec<(u32, String)>) {
        self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        (self.w.buf, self.described)
    }
}
