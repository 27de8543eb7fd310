//! Key and value codecs.
//!
//! Keys are byte strings that sort like the values they encode, so engine order is value order:
//! - strings are their UTF-8 bytes with each `0x00` escaped as `0x00 0x01`, then the terminator
//!   `0x00 0x00`. The terminator is lower than any byte of content, so `"ab"` sorts before
//!   `"abc"` and `"a"` before `"a\0"`, and a prefix scan on a whole string never matches a
//!   longer one (its terminator is part of the prefix);
//! - integers are big-endian fixed width;
//! - tuples are the concatenation of their parts, so they sort part by part.
//!
//! Decoding is type-directed, so a `u64` part may contain any bytes.
//!
//! Values are postcard-encoded records ([`Record`]) or raw bytes ([`Raw`], e.g. canonical JSON).

use super::StoreError;

pub trait KeyCodec: Sized {
    fn encode_into(&self, out: &mut Vec<u8>);
    /// Decodes one value from the front of `input`, advancing it.
    fn decode_from(input: &mut &[u8]) -> Option<Self>;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
    /// Decodes a whole key; trailing bytes are an error.
    fn decode(mut input: &[u8]) -> Option<Self> {
        let value = Self::decode_from(&mut input)?;
        input.is_empty().then_some(value)
    }
}

fn encode_str(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == 0x00 {
            out.push(0x01);
        }
    }
    out.extend_from_slice(&[0x00, 0x00]);
}

impl KeyCodec for String {
    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_str(self, out);
    }
    fn decode_from(input: &mut &[u8]) -> Option<Self> {
        let mut bytes = Vec::new();
        let mut rest = *input;
        loop {
            let (&b, tail) = rest.split_first()?;
            rest = tail;
            if b != 0x00 {
                bytes.push(b);
                continue;
            }
            let (&escaped, tail) = rest.split_first()?;
            rest = tail;
            match escaped {
                0x00 => break,
                0x01 => bytes.push(0x00),
                _ => return None,
            }
        }
        let s = String::from_utf8(bytes).ok()?;
        *input = rest;
        Some(s)
    }
}

impl KeyCodec for &str {
    fn encode_into(&self, out: &mut Vec<u8>) {
        encode_str(self, out);
    }
    fn decode_from(_input: &mut &[u8]) -> Option<Self> {
        // Borrowed strings are for encoding prefixes only.
        None
    }
}

impl KeyCodec for u64 {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn decode_from(input: &mut &[u8]) -> Option<Self> {
        let (head, rest) = input.split_first_chunk::<8>()?;
        *input = rest;
        Some(u64::from_be_bytes(*head))
    }
}

impl KeyCodec for () {
    fn encode_into(&self, _out: &mut Vec<u8>) {}
    fn decode_from(_input: &mut &[u8]) -> Option<Self> {
        Some(())
    }
}

macro_rules! tuple_key {
    ($($t:ident),+) => {
        impl<$($t: KeyCodec),+> KeyCodec for ($($t,)+) {
            #[allow(non_snake_case)]
            fn encode_into(&self, out: &mut Vec<u8>) {
                let ($($t,)+) = self;
                $($t.encode_into(out);)+
            }
            fn decode_from(input: &mut &[u8]) -> Option<Self> {
                Some(($($t::decode_from(input)?,)+))
            }
        }
    };
}
tuple_key!(A);
tuple_key!(A, B);
tuple_key!(A, B, C);
tuple_key!(A, B, C, D);

pub trait ValueCodec: Sized {
    fn encode_value(&self) -> Vec<u8>;
    fn decode_value(table: &'static str, bytes: &[u8]) -> Result<Self, StoreError>;
}

/// A serde struct stored postcard-encoded. Postcard is not self-describing: changing a record's
/// fields is a layout change (bump `SCHEMA_VERSION`, migrate).
pub trait Record: serde::Serialize + serde::de::DeserializeOwned {}

impl<T: Record> ValueCodec for T {
    fn encode_value(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("postcard encoding into a Vec cannot fail")
    }
    fn decode_value(table: &'static str, bytes: &[u8]) -> Result<Self, StoreError> {
        postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
            table,
            detail: e.to_string(),
        })
    }
}

impl Record for u64 {}
impl Record for String {}
impl Record for bool {}
impl Record for (String, String) {}

/// Raw bytes (canonical JSON, opaque blobs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub Vec<u8>);

impl ValueCodec for Raw {
    fn encode_value(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn decode_value(_table: &'static str, bytes: &[u8]) -> Result<Self, StoreError> {
        Ok(Raw(bytes.to_vec()))
    }
}
