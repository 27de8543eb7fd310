//! Key and value codecs.
//!
//! Keys are byte strings that sort like the values they encode: strings are their UTF-8 bytes
//! followed by a `0xFF` terminator (a byte UTF-8 never contains, so `"ab"` sorts before `"abc"`
//! and a prefix scan on a whole string never matches a longer one), integers are big-endian
//! fixed width, tuples are the concatenation of their parts. Decoding is type-directed, so a
//! `u64` part may contain `0xFF` bytes.
//!
//! Values are postcard-encoded records ([`Record`]) or raw bytes (`Vec<u8>`, e.g. canonical JSON).

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

impl KeyCodec for String {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
        out.push(0xFF);
    }
    fn decode_from(input: &mut &[u8]) -> Option<Self> {
        let end = input.iter().position(|&b| b == 0xFF)?;
        let s = std::str::from_utf8(&input[..end]).ok()?.to_owned();
        *input = &input[end + 1..];
        Some(s)
    }
}

impl KeyCodec for &str {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
        out.push(0xFF);
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
