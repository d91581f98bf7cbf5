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

/// Protobuf fields of a message that this version of the schema does not know (fields added by
/// newer ONNX releases). They are re-emitted verbatim so that newer models survive a rewrite.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Extras(pub(crate) protobuf::UnknownFields);

impl Extras {
    pub(crate) fn from_special(fields: &protobuf::SpecialFields) -> Extras {
        Extras(fields.unknown_fields().clone())
    }

    pub(crate) fn to_special(&self) -> protobuf::SpecialFields {
        let mut special = protobuf::SpecialFields::new();
        *special.mut_unknown_fields() = self.0.clone();
        special
    }
}
