//! Key/value metadata (`metadata_props`) and the protobuf fields we carry without modelling.

/// Ordered `metadata_props` entries. Order and duplicates are kept as they came, because the
/// file format allows both and lossless round trips must not reorder them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata(pub Vec<(String, String)>);

impl Metadata {
    /// The first value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing the first entry with that key or appending a new one.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// What the file format carries for a message beyond the modelled fields: protobuf fields of
/// a newer schema (re-emitted verbatim so that newer models survive a rewrite), and which
/// optional fields were *present with their default value* (proto2 tells `i: 0` from an
/// absent `i`; a lossless round trip must too). See `onnx::presence`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Extras {
    pub(crate) unknown: protobuf::UnknownFields,
    pub(crate) explicit: u32,
}

impl Extras {
    pub(crate) fn from_special(fields: &protobuf::SpecialFields) -> Extras {
        Extras { unknown: fields.unknown_fields().clone(), explicit: 0 }
    }

    pub(crate) fn to_special(&self) -> protobuf::SpecialFields {
        let mut special = protobuf::SpecialFields::new();
        *special.mut_unknown_fields() = self.unknown.clone();
        special
    }

    /// Marks optional fields (bits of `onnx::presence::bit`) as written even when default.
    pub(crate) fn with_explicit(mut self, bits: u32) -> Extras {
        self.explicit |= bits;
        self
    }
}
