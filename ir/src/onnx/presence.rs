//! proto2 field presence.
//!
//! ONNX's schema is proto2: an optional field set to its default (`i: 0`, `domain: ""`) is
//! different on the wire from an absent one, and exporters write both forms. The IR keeps
//! plain values (`String`, `i64`) and remembers, per message, which fields were present with
//! their default value; the encoder writes those back. Non-default values are always written.

use crate::metadata::Extras;

/// Bits of [`Extras::explicit`]. One namespace for all messages; each uses a few.
pub(crate) mod bit {
    pub const NAME: u32 = 1 << 0;
    pub const DOC_STRING: u32 = 1 << 1;
    pub const DOMAIN: u32 = 1 << 2;
    pub const OP_TYPE: u32 = 1 << 3;
    pub const OVERLOAD: u32 = 1 << 4;
    pub const PRODUCER_NAME: u32 = 1 << 5;
    pub const PRODUCER_VERSION: u32 = 1 << 6;
    pub const IR_VERSION: u32 = 1 << 7;
    pub const MODEL_VERSION: u32 = 1 << 8;
    pub const VERSION: u32 = 1 << 9;
    pub const REF_ATTR_NAME: u32 = 1 << 10;
    pub const F: u32 = 1 << 11;
    pub const I: u32 = 1 << 12;
    pub const S: u32 = 1 << 13;
    pub const RAW_DATA: u32 = 1 << 14;
    pub const DATA_LOCATION: u32 = 1 << 15;
}

pub(crate) fn take_str(field: Option<String>, extras: &mut Extras, bit: u32) -> String {
    match field {
        Some(s) => {
            if s.is_empty() {
                extras.explicit |= bit;
            }
            s
        }
        None => String::new(),
    }
}

pub(crate) fn take_bytes(field: Option<Vec<u8>>, extras: &mut Extras, bit: u32) -> Vec<u8> {
    match field {
        Some(s) => {
            if s.is_empty() {
                extras.explicit |= bit;
            }
            s
        }
        None => Vec::new(),
    }
}

pub(crate) fn take_i64(field: Option<i64>, extras: &mut Extras, bit: u32) -> i64 {
    match field {
        Some(v) => {
            if v == 0 {
                extras.explicit |= bit;
            }
            v
        }
        None => 0,
    }
}

pub(crate) fn take_f32(field: Option<f32>, extras: &mut Extras, bit: u32) -> f32 {
    match field {
        Some(v) => {
            if v.to_bits() == 0 {
                extras.explicit |= bit;
            }
            v
        }
        None => 0.0,
    }
}

pub(crate) fn put_str(v: &str, extras: &Extras, bit: u32) -> Option<String> {
    (!v.is_empty() || extras.explicit & bit != 0).then(|| v.to_string())
}

pub(crate) fn put_bytes(v: &[u8], extras: &Extras, bit: u32) -> Option<Vec<u8>> {
    (!v.is_empty() || extras.explicit & bit != 0).then(|| v.to_vec())
}

pub(crate) fn put_i64(v: i64, extras: &Extras, bit: u32) -> Option<i64> {
    (v != 0 || extras.explicit & bit != 0).then_some(v)
}

pub(crate) fn put_f32(v: f32, extras: &Extras, bit: u32) -> Option<f32> {
    (v.to_bits() != 0 || extras.explicit & bit != 0).then_some(v)
}
