//! A tiny netlink attribute writer: TLVs aligned to 4 bytes, nested attributes patched in
//! place. nf_tables wants every integer attribute in network byte order.

/// `NLA_F_NESTED`: set on nested attributes, as libnftnl does.
pub const NLA_F_NESTED: u16 = 0x8000;

/// A growing buffer of netlink attributes (and message headers around them).
#[derive(Default, Debug, Clone)]
pub struct AttrWriter {
    pub buf: Vec<u8>,
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

impl AttrWriter {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(256),
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn pad(&mut self) {
        let padded = align4(self.buf.len());
        self.buf.resize(padded, 0);
    }

    /// One attribute with raw bytes.
    pub fn bytes(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub fn str(&mut self, kind: u16, value: &str) {
        let mut data = Vec::with_capacity(value.len() + 1);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
        self.bytes(kind, &data);
    }

    pub fn be32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    pub fn be64(&mut self, kind: u16, value: u64) {
        self.bytes(kind, &value.to_be_bytes());
    }

    pub fn u8(&mut self, kind: u16, value: u8) {
        self.bytes(kind, &[value]);
    }

    /// Starts a nested attribute; finish it with [`AttrWriter::end_nested`].
    pub fn begin_nested(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Patches the length of a nested attribute. Netlink attribute lengths are 16 bits, so a
    /// nest larger than 64 KiB is a caller bug (element lists are split before that).
    pub fn end_nested(&mut self, start: usize) {
        let len = self.buf.len() - start;
        debug_assert!(len <= u16::MAX as usize, "nested attribute over 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    /// A nested attribute built by `f`.
    pub fn nested(&mut self, kind: u16, f: impl FnOnce(&mut AttrWriter)) {
        let start = self.begin_nested(kind);
        f(self);
        self.end_nested(start);
    }
}

/// Iterates over the attributes of a buffer: `(kind without flags, payload)`.
pub fn parse_attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        let next = align4(len).min(data.len());
        data = &data[next..];
        Some((kind, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_padding() {
        let mut w = AttrWriter::new();
        w.str(1, "ab");
        w.nested(2, |w| w.be32(1, 7));
        assert_eq!(w.buf.len(), 8 + 12);
        let attrs: Vec<_> = parse_attrs(&w.buf).collect();
        assert_eq!(attrs[0], (1, &b"ab\0"[..]));
        assert_eq!(attrs[1].0, 2);
        let inner: Vec<_> = parse_attrs(attrs[1].1).collect();
        assert_eq!(inner, vec![(1, &[0u8, 0, 0, 7][..])]);
    }
}
