//! The one place bytes are made: bincode 2 (serde mode) behind a format version byte.
//!
//! Everything ordo writes to sled, to snapshot files and to Raft RPC bodies goes through
//! `encode` / `decode`, so the on-disk and on-wire format can only change here. The leading
//! byte names the format; a reader refuses a version it does not know instead of misreading it.
//!
//! Every decode is bounded: bincode trusts the length prefixes it reads, so without a limit
//! eleven hostile bytes can claim an allocation of 2^62 bytes and abort the process. Bytes
//! from a peer go through `decode_bounded` with a limit fitting their route; bytes from our
//! own disk through `decode`, under `STORED_LIMIT`.

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

/// The most memory one decode of stored bytes (a log entry, a state-machine value, a snapshot
/// record) may claim. Far above any legal value; a corrupt length prefix fails instead.
pub const STORED_LIMIT: usize = 256 * 1024 * 1024;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value as `[FORMAT_VERSION, bincode...]`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// Decodes what `encode` wrote to our own store; the whole input must be one value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_bounded::<T, STORED_LIMIT>(bytes)
}

/// Decodes bytes that came over the network: strings and byte strings may claim at most
/// `LIMIT` bytes of memory in all (bincode counts their claimed size before allocating them),
/// so a lying length prefix on one is a `Decode` error, never an allocation. bincode 2's serde
/// path does not count sequences and maps: their elements are decoded one at a time (serde
/// preallocates at most 1 MiB), each from at least one byte of input, so a lying length ends
/// the input instead; but a body of many tiny elements decodes to its length times the
/// largest element's size in memory (tens of times its length for Raft log entries).
pub fn decode_bounded<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config().with_limit::<LIMIT>())?;
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

    /// The 11 bytes that used to abort a node: a string whose length prefix claims 2^62 bytes.
    #[test]
    fn a_lying_length_prefix_is_an_error_not_an_allocation() {
        let hostile = [1u8, 0x00, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40];
        assert!(matches!(
            decode::<(u8, String)>(&hostile),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            decode_bounded::<(u8, Vec<u64>), 1024>(&hostile),
            Err(CodecError::Decode(_))
        ));
        // Within the limit the same shape decodes.
        let ok = encode(&(7u8, vec![1u64; 100])).unwrap();
        assert_eq!(
            decode_bounded::<(u8, Vec<u64>), 1024>(&ok).unwrap(),
            (7u8, vec![1u64; 100])
        );
        // Past it, it does not, however honest the bytes.
        assert!(decode_bounded::<(u8, Vec<u64>), 256>(&ok).is_err());
    }
}
