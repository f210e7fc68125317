//! The one place bytes are made: bincode 2 (serde mode) behind a format version byte.
//!
//! Everything ordo writes to sled, to snapshot files and to Raft RPC bodies goes through
//! `encode` / `decode`, so the on-disk and on-wire format can only change here. The leading
//! byte names the format; a reader refuses a version it does not know instead of misreading it.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The current format. Bump it (and teach `decode` the old one) when a stored type changes shape.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("empty input")]
    Empty,
    #[error("unknown format version {0} (this build reads {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value as `[FORMAT_VERSION, bincode...]`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// Decodes what `encode` wrote; the whole input must be one value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let v = (42u64, String::from("order"), Some(vec![1u8, 2, 3]));
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<(u64, String, Option<Vec<u8>>)>(&bytes).unwrap(), v);

        let mut other = bytes.clone();
        other[0] = 99;
        assert!(matches!(
            decode::<(u64, String, Option<Vec<u8>>)>(&other),
            Err(CodecError::UnknownVersion(99))
        ));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        let mut long = encode(&7u64).unwrap();
        long.push(0);
        assert!(matches!(
            decode::<u64>(&long),
            Err(CodecError::TrailingBytes(1))
        ));
    }
}
