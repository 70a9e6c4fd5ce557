//! Identifiers, parsed at the edge and never passed inward as raw strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// An identifier that failed to parse; says what was expected, never echoes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {expected}")]
pub struct IdError {
    pub what: &'static str,
    pub expected: &'static str,
}

/// Positive integer ids. JSON carries them as numbers; strings of digits are accepted too.
macro_rules! positive_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// Wraps a value known to be positive (from the store).
            pub fn new(v: i64) -> Result<Self, IdError> {
                if v > 0 { Ok(Self(v)) } else { Err(IdError { what: $what, expected: "a positive integer" }) }
            }
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let err = IdError { what: $what, expected: "a positive integer" };
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err);
                }
                s.parse::<i64>().map_err(|_| err.clone()).and_then(Self::new)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum NumOrStr {
                    Num(i64),
                    Str(String),
                }
                match NumOrStr::deserialize(d)? {
                    NumOrStr::Num(n) => Self::new(n).map_err(serde::de::Error::custom),
                    NumOrStr::Str(s) => s.parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}

positive_id!(
    /// A member's `uid`.
    MemberId, "member uid"
);
positive_id!(
    /// A subscriber's id.
    SubscriberId, "subscriber id"
);
positive_id!(
    /// A dedicated connection's own `id` (`connection.id` of `trove demo --json`).
    ConnectionId, "connection id"
);
positive_id!(
    /// The connection node id issued when a connection is first approved.
    Nid, "nid"
);
positive_id!(
    /// The number of a connection's revision of terms, 1 for the first: an agreement is at
    /// the version its member approved.
    AgreementVersion, "version"
);

impl AgreementVersion {
    /// The first revision's.
    pub const FIRST: AgreementVersion = AgreementVersion(1);

    /// The revision after this one.
    pub fn next(self) -> AgreementVersion {
        AgreementVersion(self.0 + 1)
    }
}

/// The member-connection pair `"<uid>-<nid>"` that Mydex calls take as `con_id`.
///
/// ```
/// use catalog::ConId;
/// let c: ConId = "12-3".parse().unwrap();
/// assert_eq!((c.member.get(), c.nid.get()), (12, 3));
/// assert!("12-x".parse::<ConId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConId {
    pub member: MemberId,
    pub nid: Nid,
}

impl FromStr for ConId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = IdError { what: "con_id", expected: "\"<uid>-<nid>\"" };
        let (uid, nid) = s.split_once('-').ok_or(err.clone())?;
        Ok(Self { member: uid.parse().map_err(|_| err.clone())?, nid: nid.parse().map_err(|_| err)? })
    }
}

impl fmt::Display for ConId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.member, self.nid)
    }
}

impl<'de> Deserialize<'de> for ConId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ConId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Lower snake case names: datasets (`ds_*`) and fields.
macro_rules! snake_name {
    ($(#[$doc:meta])* $name:ident, $what:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let ok = s.len() <= 128
                    && s.starts_with($prefix)
                    && s.len() > $prefix.len()
                    && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                    && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError {
                        what: $what,
                        expected: concat!("lower snake case starting with '", $prefix, "', at most 128 characters"),
                    })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

snake_name!(
    /// A dataset's machine name, `ds_*`.
    DatasetName, "dataset name", "ds_"
);
snake_name!(
    /// A field of a dataset.
    FieldName, "field name", ""
);

impl DatasetName {
    /// Parses the Mydex spellings: `ds_x` and the older `field_ds_x`.
    pub fn parse_mydex(s: &str) -> Result<Self, IdError> {
        s.strip_prefix("field_").unwrap_or(s).parse()
    }
}

/// Member uids are already well spread integers: hashing them with SipHash was a tenth of
/// ingest CPU. A multiplicative hash is enough: the uids a map holds are the catalog's own,
/// so nobody can choose keys that collide.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemberHasher(u64);

impl std::hash::Hasher for MemberHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_i64(&mut self, v: i64) {
        self.0 = (v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

/// A map keyed by member, hashed with [`MemberHasher`] (ingest's per-row lookups).
pub type MemberMap<V> = std::collections::HashMap<MemberId, V, std::hash::BuildHasherDefault<MemberHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_positive_digits_only() {
        assert_eq!("42".parse::<MemberId>().unwrap().get(), 42);
        for bad in ["", "0", "-1", "+1", "1.0", " 1", "99999999999999999999", "1e3"] {
            assert!(bad.parse::<MemberId>().is_err(), "{bad}");
        }
        let m: MemberId = serde_json::from_str("\"7\"").unwrap();
        assert_eq!(m.get(), 7);
        let m: MemberId = serde_json::from_str("7").unwrap();
        assert_eq!(m.get(), 7);
        assert!(serde_json::from_str::<MemberId>("0").is_err());
    }

    #[test]
    fn con_id_round_trips() {
        let c: ConId = "12-3".parse().unwrap();
        assert_eq!((c.member.get(), c.nid.get()), (12, 3));
        assert_eq!(c.to_string(), "12-3");
        for bad in ["12", "12-", "-3", "a-3", "12-3-4", "0-1"] {
            assert!(bad.parse::<ConId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_snake_case() {
        assert!("ds_energy_consumption".parse::<DatasetName>().is_ok());
        assert_eq!(DatasetName::parse_mydex("field_ds_home").unwrap().as_str(), "ds_home");
        for bad in ["energy", "ds_", "DS_X", "ds x", "ds_x;drop", "ds_é"] {
            assert!(bad.parse::<DatasetName>().is_err(), "{bad}");
        }
        assert!("field_energy_reading_value".parse::<FieldName>().is_ok());
        assert!("1abc".parse::<FieldName>().is_err());
    }
}
