//! The strict decoder of control-message bodies (`PROTOCOL.md` section 2.3).
//!
//! What it decides: whether a body is a control message in exactly the documented encoding, and
//! if so which. rmp-serde's own `Deserializer` is lenient where the protocol is not: it takes a
//! positional array for a struct, a bin for a string, a str or an array of integers for a byte
//! field, and an integer for a field name or an enum variant. A client written against that
//! leniency would work with shoal and with no other implementation, so control messages are
//! decoded here instead. The serde data model is mapped to MessagePack like this, and anything
//! else is a [`DecodeError`] (the reader closes with `MALFORMED_FRAME`):
//!
//! | target | accepted MessagePack |
//! |---|---|
//! | struct | map whose keys are str field names; the value of an unknown key is skipped, whatever it is |
//! | enum | str (a unit variant, e.g. `role`), or a map of one entry from the str variant name to the value (every other variant, e.g. a `Message`) |
//! | string, field name, variant name | str, valid UTF-8 |
//! | byte field (`serde_bytes`) | bin |
//! | integer | any integer form; the target type checks the range |
//! | bool | bool |
//! | float | float |
//! | `Option` | nil for `None`, else what the inner type accepts |
//! | sequence | array |
//!
//! A repeated field is refused (by serde's derive), bytes after the first value are ignored.
//!
//! Bounds: decoding borrows from the input and allocates only what the message owns (its
//! strings and byte vectors); a sequence's size hint never exceeds the bytes left, so a forged
//! length cannot make a visitor preallocate. Nesting follows the target types, which are
//! shallow; a skipped value is walked iteratively, so deep nesting in an unknown field cannot
//! exhaust the stack. `deserialize_any` is refused: every target must say what it expects.

use serde::de::{self, DeserializeSeed, Visitor};

#[cfg(test)]
mod tests;

/// Why a control-message body does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("the body ends inside a value")]
    Eof,
    #[error("expected {expected}, found {found}")]
    Type {
        expected: &'static str,
        found: &'static str,
    },
    #[error("a str is not valid UTF-8")]
    Utf8,
    #[error("an enum is a str or a map of one entry, not a map of {0} entries")]
    EnumLen(usize),
    #[error("{left} {what} entries more than the target takes")]
    Trailing { what: &'static str, left: usize },
    #[error("the target type needs a self-describing decoder, which control messages never use")]
    Untyped,
    /// What the target type refused: an unknown variant, a missing or repeated field, an
    /// integer out of its range, a name that fails its check.
    #[error("{0}")]
    Refused(String),
}

impl de::Error for DecodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DecodeError::Refused(msg.to_string())
    }
}

/// Decodes one value from the start of `input` (what follows it is ignored).
pub fn from_slice<'de, T: de::Deserialize<'de>>(input: &'de [u8]) -> Result<T, DecodeError> {
    T::deserialize(&mut Deserializer { input })
}

/// The kind of value a marker byte starts, for errors.
fn kind(marker: u8) -> &'static str {
    match marker {
        0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff => "integer",
        0x80..=0x8f | 0xde | 0xdf => "map",
        0x90..=0x9f | 0xdc | 0xdd => "array",
        0xa0..=0xbf | 0xd9..=0xdb => "str",
        0xc0 => "nil",
        0xc1 => "the never-used byte 0xc1",
        0xc2 | 0xc3 => "bool",
        0xc4..=0xc6 => "bin",
        0xc7..=0xc9 | 0xd4..=0xd8 => "ext",
        0xca | 0xcb => "float",
    }
}

/// A decoded integer: non-negative ones as `u64` (MessagePack's range goes up to `u64::MAX`).
enum Int {
    Pos(u64),
    Neg(i64),
}

/// The strict deserializer over one body.
pub struct Deserializer<'de> {
    input: &'de [u8],
}

impl<'de> Deserializer<'de> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.input.first().copied().ok_or(DecodeError::Eof)
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8], DecodeError> {
        if n > self.input.len() {
            return Err(DecodeError::Eof);
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian unsigned integer of `n` (1, 2, 4 or 8) bytes.
    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// A big-endian length of `n` bytes.
    fn len(&mut self, n: usize) -> Result<usize, DecodeError> {
        usize::try_from(self.be(n)?).map_err(|_| DecodeError::Eof)
    }

    /// The error for the value at the cursor when `expected` was wanted.
    fn wrong(&self, expected: &'static str) -> DecodeError {
        match self.peek() {
            Ok(m) => DecodeError::Type {
                expected,
                found: kind(m),
            },
            Err(e) => e,
        }
    }

    fn int(&mut self) -> Result<Int, DecodeError> {
        let m = self.peek()?;
        if !matches!(m, 0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff) {
            return Err(self.wrong("an integer"));
        }
        self.take(1)?;
        Ok(match m {
            0x00..=0x7f => Int::Pos(u64::from(m)),
            0xcc..=0xcf => Int::Pos(self.be(1 << (m - 0xcc))?),
            0xd0..=0xd3 => {
                let bytes = 1usize << (m - 0xd0);
                let shift = 64 - 8 * bytes as u32;
                // Sign-extend the two's complement value.
                let v = ((self.be(bytes)? << shift) as i64) >> shift;
                u64::try_from(v).map_or(Int::Neg(v), Int::Pos)
            }
            // Negative fixint, 0xe0..=0xff.
            _ => Int::Neg(i64::from(m as i8)),
        })
    }

    fn str(&mut self) -> Result<&'de str, DecodeError> {
        let len = match self.peek()? {
            m @ 0xa0..=0xbf => {
                self.take(1)?;
                usize::from(m & 0x1f)
            }
            m @ 0xd9..=0xdb => {
                self.take(1)?;
                self.len(1 << (m - 0xd9))?
            }
            _ => return Err(self.wrong("a str")),
        };
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::Utf8)
    }

    fn bin(&mut self) -> Result<&'de [u8], DecodeError> {
        let m = self.peek()?;
        if !(0xc4..=0xc6).contains(&m) {
            return Err(self.wrong("a bin"));
        }
        self.take(1)?;
        let len = self.len(1 << (m - 0xc4))?;
        self.take(len)
    }

    /// The length of an array at the cursor, or `None` (cursor unmoved) for another kind.
    fn array_len(&mut self) -> Result<Option<usize>, DecodeError> {
        let len = match self.peek()? {
            m @ 0x90..=0x9f => {
                self.take(1)?;
                usize::from(m & 0x0f)
            }
            m @ (0xdc | 0xdd) => {
                self.take(1)?;
                self.len(2 << (m - 0xdc))?
            }
            _ => return Ok(None),
        };
        Ok(Some(len))
    }

    /// The entry count of a map at the cursor, or `None` (cursor unmoved) for another kind.
    fn map_len(&mut self) -> Result<Option<usize>, DecodeError> {
        let len = match self.peek()? {
            m @ 0x80..=0x8f => {
                self.take(1)?;
                usize::from(m & 0x0f)
            }
            m @ (0xde | 0xdf) => {
                self.take(1)?;
                self.len(2 << (m - 0xde))?
            }
            _ => return Ok(None),
        };
        Ok(Some(len))
    }

    /// Skips one value of any kind, without recursion.
    fn skip(&mut self) -> Result<(), DecodeError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let m = self.byte()?;
            let (data, values) = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
                0x80..=0x8f => (0, 2 * u64::from(m & 0x0f)),
                0x90..=0x9f => (0, u64::from(m & 0x0f)),
                0xa0..=0xbf => (usize::from(m & 0x1f), 0),
                0xc1 => {
                    return Err(DecodeError::Type {
                        expected: "a MessagePack value",
                        found: kind(m),
                    })
                }
                0xc4 | 0xd9 => (self.len(1)?, 0),
                0xc5 | 0xda => (self.len(2)?, 0),
                0xc6 | 0xdb => (self.len(4)?, 0),
                0xc7 => (self.len(1)?.saturating_add(1), 0),
                0xc8 => (self.len(2)?.saturating_add(1), 0),
                0xc9 => (self.len(4)?.saturating_add(1), 0),
                0xca => (4, 0),
                0xcb => (8, 0),
                0xcc | 0xd0 => (1, 0),
                0xcd | 0xd1 => (2, 0),
                0xce | 0xd2 => (4, 0),
                0xcf | 0xd3 => (8, 0),
                // fixext 1, 2, 4, 8, 16: a type byte and the data.
                0xd4..=0xd8 => (1 + (1 << (m - 0xd4)), 0),
                0xdc => (0, self.be(2)?),
                0xdd => (0, self.be(4)?),
                0xde => (0, 2 * self.be(2)?),
                0xdf => (0, 2 * self.be(4)?),
            };
            self.take(data)?;
            // Every value takes at least one byte, so a forged count ends at `Eof`.
            pending = pending.saturating_add(values);
        }
        Ok(())
    }

    fn integer<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.int()? {
            Int::Pos(u) => visitor.visit_u64(u),
            Int::Neg(i) => visitor.visit_i64(i),
        }
    }

    fn map<V: Visitor<'de>>(
        &mut self,
        expected: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let Some(len) = self.map_len()? else {
            return Err(self.wrong(expected));
        };
        let mut access = Entries {
            de: self,
            left: len,
        };
        let value = visitor.visit_map(&mut access)?;
        access.done("map")?;
        Ok(value)
    }

    fn array<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, DecodeError> {
        let Some(len) = self.array_len()? else {
            return Err(self.wrong("an array"));
        };
        let mut access = Entries {
            de: self,
            left: len,
        };
        let value = visitor.visit_seq(&mut access)?;
        access.done("array")?;
        Ok(value)
    }
}

/// The elements of an array or the entries of a map.
struct Entries<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: usize,
}

impl Entries<'_, '_> {
    fn done(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.left {
            0 => Ok(()),
            left => Err(DecodeError::Trailing { what, left }),
        }
    }

    /// At most what the bytes left could hold: every value takes a byte.
    fn hint(&self, per_item: usize) -> Option<usize> {
        Some(self.left.min(self.de.input.len() / per_item))
    }
}

impl<'de> de::SeqAccess<'de> for Entries<'_, 'de> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint(1)
    }
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint(2)
    }
}

/// An enum at the cursor: a plain str (`tagged: false`, unit variants only) or the value of a
/// map of one entry whose key was the variant name (`tagged: true`, variants with a value).
struct Variant<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    tagged: bool,
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = DecodeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), DecodeError> {
        // The name goes through `deserialize_identifier`: a str, never an index.
        let v = seed.deserialize(&mut *self.de)?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<(), DecodeError> {
        if self.tagged {
            return Err(DecodeError::Type {
                expected: "a plain str for a variant without a value",
                found: "map",
            });
        }
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        if !self.tagged {
            return Err(self.untagged());
        }
        seed.deserialize(self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        if !self.tagged {
            return Err(self.untagged());
        }
        self.de.array(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        if !self.tagged {
            return Err(self.untagged());
        }
        self.de.map("a map with field names", visitor)
    }
}

impl Variant<'_, '_> {
    fn untagged(&self) -> DecodeError {
        DecodeError::Type {
            expected: "a map of one entry for a variant with a value",
            found: "str",
        }
    }
}

macro_rules! integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            self.integer(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError::Untyped)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.peek()? {
            m @ (0xc2 | 0xc3) => {
                self.take(1)?;
                visitor.visit_bool(m == 0xc3)
            }
            _ => Err(self.wrong("a bool")),
        }
    }

    integers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.peek()? {
            0xca => {
                self.take(1)?;
                visitor.visit_f32(f32::from_bits(self.be(4)? as u32))
            }
            0xcb => {
                self.take(1)?;
                visitor.visit_f64(f64::from_bits(self.be(8)?))
            }
            _ => Err(self.wrong("a float")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_bytes(self.bin()?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_bytes(self.bin()?)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.peek()? == 0xc0 {
            self.take(1)?;
            return visitor.visit_none();
        }
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        if self.peek()? != 0xc0 {
            return Err(self.wrong("nil"));
        }
        self.take(1)?;
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.array(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.array(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.array(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.map("a map", visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        // Never a positional array: field names are the contract.
        self.map("a map with field names", visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        if let 0xa0..=0xbf | 0xd9..=0xdb = self.peek()? {
            return visitor.visit_enum(Variant {
                de: self,
                tagged: false,
            });
        }
        match self.map_len()? {
            Some(1) => visitor.visit_enum(Variant {
                de: self,
                tagged: true,
            }),
            Some(n) => Err(DecodeError::EnumLen(n)),
            None => Err(self.wrong("a str or a map of one entry")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_borrowed_str(self.str()?)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.skip()?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}
