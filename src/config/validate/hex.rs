//! Hex strings of the `*_hex` keys: pairs of hex digits, whitespace allowed between bytes
//! (`"2a 31 0d 0a"`), so binary protocols can be written down byte by byte.

/// Why a hex string does not decode; positions are 1-based characters, as an editor shows them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum HexError {
    /// A character that is neither a hex digit nor whitespace.
    #[error("{found:?} at position {position} is not a hex digit")]
    NotHex {
        /// The offending character.
        found: char,
        /// Where it is.
        position: usize,
    },
    /// Whitespace between the two digits of one byte.
    #[error("whitespace at position {position} splits a byte")]
    SplitByte {
        /// Where the whitespace is.
        position: usize,
    },
    /// An odd number of digits.
    #[error("ends in half a byte (an odd number of hex digits)")]
    HalfByte,
}

/// Decodes `text`.
pub(super) fn decode(text: &str) -> Result<Vec<u8>, HexError> {
    let mut bytes = Vec::with_capacity(text.len() / 2);
    // The high digit of the byte being read, once seen.
    let mut high: Option<u8> = None;
    for (index, c) in text.chars().enumerate() {
        let position = index + 1;
        if c.is_whitespace() {
            if high.is_some() {
                return Err(HexError::SplitByte { position });
            }
            continue;
        }
        let Some(digit) = c.to_digit(16) else {
            return Err(HexError::NotHex { found: c, position });
        };
        // `to_digit(16)` is below 16.
        let digit = digit as u8;
        match high.take() {
            None => high = Some(digit),
            Some(h) => bytes.push(h << 4 | digit),
        }
    }
    if high.is_some() {
        return Err(HexError::HalfByte);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_with_or_without_spaces() {
        assert_eq!(decode("2a310d0a"), Ok(vec![0x2a, 0x31, 0x0d, 0x0a]));
        assert_eq!(decode(" 2A 31\t0d\n0a "), Ok(vec![0x2a, 0x31, 0x0d, 0x0a]));
        assert_eq!(decode("00 ff"), Ok(vec![0x00, 0xff]));
        assert_eq!(decode(""), Ok(vec![]));
        assert_eq!(decode("   "), Ok(vec![]));
    }

    #[test]
    fn errors_name_the_position() {
        assert_eq!(
            decode("0a 0g"),
            Err(HexError::NotHex {
                found: 'g',
                position: 5
            })
        );
        // Positions count characters, not bytes.
        let cases = [
            ("0a 0g", "'g' at position 5 is not a hex digit"),
            ("é0", "'é' at position 1 is not a hex digit"),
            ("0x0a", "'x' at position 2 is not a hex digit"),
            ("0a 0 b", "whitespace at position 5 splits a byte"),
            ("0a0", "ends in half a byte (an odd number of hex digits)"),
        ];
        for (text, want) in cases {
            assert_eq!(decode(text).unwrap_err().to_string(), want, "{text}");
        }
    }
}
