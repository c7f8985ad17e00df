//! nf_tables / ctnetlink over a raw `NETLINK_NETFILTER` socket, encoded in-house (no libnftnl).

pub mod attr;
pub mod expr;
pub mod msg;
pub mod socket;
