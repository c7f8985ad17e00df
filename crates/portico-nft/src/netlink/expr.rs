//! nf_tables expressions and their netlink encoding (attribute numbers from the Linux uapi
//! header `linux/netfilter/nf_tables.h`). Only the expressions the portico ruleset uses.

use super::attr::AttrWriter;

/// The verdict register.
pub const REG_VERDICT: u32 = 0;

/// 32-bit data register `n` (NFT_REG32_00 + n).
pub const fn reg32(n: u32) -> u32 {
    8 + n
}

// Verdict codes.
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_RETURN: i32 = -5;
pub const NFT_GOTO: i32 = -4;
pub const NFT_JUMP: i32 = -3;

/// A verdict (immediate or map data).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    pub fn encode(&self, w: &mut AttrWriter) {
        // nft_verdict_attributes: CODE = 1, CHAIN = 2.
        let (code, chain) = match self {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Jump(c) => (NFT_JUMP, Some(c)),
            Verdict::Goto(c) => (NFT_GOTO, Some(c)),
        };
        w.be32(1, code as u32);
        if let Some(chain) = chain {
            w.str(2, chain);
        }
    }

    pub fn text(&self) -> String {
        match self {
            Verdict::Accept => "accept".into(),
            Verdict::Drop => "drop".into(),
            Verdict::Return => "return".into(),
            Verdict::Jump(c) => format!("jump {c}"),
            Verdict::Goto(c) => format!("goto {c}"),
        }
    }
}

/// `nft_data`: a value or a verdict.
pub fn encode_value(w: &mut AttrWriter, kind: u16, value: &[u8]) {
    // NFTA_DATA_VALUE = 1
    w.nested(kind, |w| w.bytes(1, value));
}

pub fn encode_verdict_data(w: &mut AttrWriter, kind: u16, verdict: &Verdict) {
    // NFTA_DATA_VERDICT = 2
    w.nested(kind, |w| w.nested(2, |w| verdict.encode(w)));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadBase {
    Network = 1,
    Transport = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    Mark = 3,
    L4Proto = 16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtKey {
    State = 0,
    Status = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatType {
    Snat = 0,
    Dnat = 1,
}

/// One expression of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Payload {
        dreg: u32,
        base: PayloadBase,
        offset: u32,
        len: u32,
    },
    Meta {
        dreg: u32,
        key: MetaKey,
    },
    MetaSet {
        sreg: u32,
        key: MetaKey,
    },
    Ct {
        dreg: u32,
        key: CtKey,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Byteorder {
        sreg: u32,
        dreg: u32,
        hton: bool,
        len: u32,
        size: u32,
    },
    Lookup {
        sreg: u32,
        set: String,
        dreg: Option<u32>,
        invert: bool,
    },
    Dynset {
        set: String,
        update: bool,
        sreg_key: u32,
        sreg_data: Option<u32>,
        timeout_ms: u64,
    },
    Numgen {
        dreg: u32,
        modulus: u32,
    },
    /// `fib daddr type` (flags DADDR, result ADDRTYPE) or the saddr variant.
    FibAddrType {
        dreg: u32,
        saddr: bool,
    },
    Immediate {
        verdict: Verdict,
    },
    Nat {
        kind: NatType,
        family: u32,
        reg_addr: u32,
        reg_proto: Option<u32>,
    },
    Masq,
    /// `reject`: ICMP(v6) port unreachable (type 0 = NFT_REJECT_ICMP_UNREACH).
    Reject {
        icmp_code: u8,
    },
    /// `reject with tcp reset` (type 1 = NFT_REJECT_TCP_RST).
    RejectTcpReset,
    Counter,
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Byteorder { .. } => "byteorder",
            Expr::Lookup { .. } => "lookup",
            Expr::Dynset { .. } => "dynset",
            Expr::Numgen { .. } => "numgen",
            Expr::FibAddrType { .. } => "fib",
            Expr::Immediate { .. } => "immediate",
            Expr::Nat { .. } => "nat",
            Expr::Masq => "masq",
            Expr::Reject { .. } | Expr::RejectTcpReset => "reject",
            Expr::Counter => "counter",
        }
    }

    /// Encodes as one `NFTA_LIST_ELEM` of `NFTA_RULE_EXPRESSIONS`.
    pub fn encode(&self, w: &mut AttrWriter) {
        // NFTA_LIST_ELEM = 1 { NFTA_EXPR_NAME = 1, NFTA_EXPR_DATA = 2 }
        w.nested(1, |w| {
            w.str(1, self.name());
            w.nested(2, |w| self.encode_data(w));
        });
    }

    fn encode_data(&self, w: &mut AttrWriter) {
        match self {
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                w.be32(1, *dreg);
                w.be32(2, *base as u32);
                w.be32(3, *offset);
                w.be32(4, *len);
            }
            Expr::Meta { dreg, key } => {
                w.be32(2, *key as u32);
                w.be32(1, *dreg);
            }
            Expr::MetaSet { sreg, key } => {
                w.be32(2, *key as u32);
                w.be32(3, *sreg);
            }
            Expr::Ct { dreg, key } => {
                w.be32(1, *dreg);
                w.be32(2, *key as u32);
            }
            Expr::Cmp { sreg, op, data } => {
                w.be32(1, *sreg);
                w.be32(2, *op as u32);
                encode_value(w, 3, data);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                w.be32(1, *sreg);
                w.be32(2, *dreg);
                w.be32(3, mask.len() as u32);
                encode_value(w, 4, mask);
                encode_value(w, 5, xor);
            }
            Expr::Byteorder {
                sreg,
                dreg,
                hton,
                len,
                size,
            } => {
                w.be32(1, *sreg);
                w.be32(2, *dreg);
                w.be32(3, u32::from(*hton));
                w.be32(4, *len);
                w.be32(5, *size);
            }
            Expr::Lookup {
                sreg,
                set,
                dreg,
                invert,
            } => {
                w.str(1, set);
                w.be32(2, *sreg);
                if let Some(dreg) = dreg {
                    w.be32(3, *dreg);
                }
                if *invert {
                    w.be32(5, 1);
                }
            }
            Expr::Dynset {
                set,
                update,
                sreg_key,
                sreg_data,
                timeout_ms,
            } => {
                w.str(1, set);
                w.be32(3, u32::from(*update));
                w.be32(4, *sreg_key);
                if let Some(data) = sreg_data {
                    w.be32(5, *data);
                }
                if *timeout_ms > 0 {
                    w.be64(6, *timeout_ms);
                }
            }
            Expr::Numgen { dreg, modulus } => {
                w.be32(1, *dreg);
                w.be32(2, *modulus);
                w.be32(3, 1); // NFT_NG_RANDOM
            }
            Expr::FibAddrType { dreg, saddr } => {
                w.be32(1, *dreg);
                w.be32(2, 3); // NFT_FIB_RESULT_ADDRTYPE
                w.be32(3, if *saddr { 1 } else { 2 }); // NFTA_FIB_F_SADDR / _DADDR
            }
            Expr::Immediate { verdict } => {
                w.be32(1, REG_VERDICT);
                encode_verdict_data(w, 2, verdict);
            }
            Expr::Nat {
                kind,
                family,
                reg_addr,
                reg_proto,
            } => {
                w.be32(1, *kind as u32);
                w.be32(2, *family);
                w.be32(3, *reg_addr);
                if let Some(proto) = reg_proto {
                    w.be32(5, *proto);
                }
            }
            Expr::Masq => {}
            Expr::Reject { icmp_code } => {
                w.be32(1, 0);
                w.u8(2, *icmp_code);
            }
            Expr::RejectTcpReset => {
                w.be32(1, 1);
                w.u8(2, 0);
            }
            Expr::Counter => {}
        }
    }
}
