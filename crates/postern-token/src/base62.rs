//! Fixed-width base62 encoding of big-endian unsigned integers stored as byte
//! arrays. This is a plain radix conversion (encoding, not cryptography).
//!
//! Digits are `0-9`, `A-Z`, `a-z` (values 0..=61), most significant first,
//! left-padded with `'0'` to the requested width.

use zeroize::Zeroize;

/// The base62 alphabet, in digit-value order.
pub(crate) const ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Writes the big-endian integer `bytes` into `out` as exactly `out.len()`
/// base62 digits.
///
/// Callers must pick a width with `62^out.len() >= 256^N`; the token layout
/// constants are checked by tests, and debug builds assert it here.
pub(crate) fn encode<const N: usize>(bytes: &[u8; N], out: &mut [u8]) {
    let mut limbs = to_limbs(bytes);
    let used = limb_count::<N>();
    let mut dropped = 0;
    let mut end = out.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK_DIGITS);
        let mut rem = div_rem(&mut limbs[..used], CHUNK_BASE);
        for slot in out[start..end].iter_mut().rev() {
            *slot = ALPHABET[(rem % 62) as usize];
            rem /= 62;
        }
        dropped |= rem;
        end = start;
    }
    debug_assert!(
        dropped == 0 && limbs.iter().all(|&limb| limb == 0),
        "base62 width too small for {N} bytes"
    );
    limbs.zeroize();
}

/// Parses `digits` as a base62 integer into the big-endian array `out`.
///
/// Returns `false` (leaving `out` zeroed) if a character is not a base62
/// digit or the value does not fit in `N` bytes.
pub(crate) fn decode<const N: usize>(digits: &[u8], out: &mut [u8; N]) -> bool {
    let mut limbs = [0u64; MAX_LIMBS];
    let ok = decode_into_limbs(digits, &mut limbs[..limb_count::<N>()]) && from_limbs(&limbs, out);
    limbs.zeroize();
    if !ok {
        out.zeroize();
    }
    ok
}

/// Whether every byte of `s` is one of the 62 digit characters.
pub(crate) fn all_digits(s: &[u8]) -> bool {
    // Branch-free so the check over a whole token vectorizes.
    s.iter().fold(true, |ok, &c| ok & is_digit(c))
}

fn is_digit(c: u8) -> bool {
    (c.wrapping_sub(b'0') < 10) | ((c | 0x20).wrapping_sub(b'a') < 26)
}

const MAX_BYTES: usize = 32;
const LIMB_BYTES: usize = 8;
const MAX_LIMBS: usize = MAX_BYTES / LIMB_BYTES;
/// Digits handled per limb pass; `62^10 < 2^60` keeps every intermediate
/// value of a limb pass below `2^124`.
const CHUNK_DIGITS: usize = 10;
const CHUNK_BASE: u64 = 62u64.pow(CHUNK_DIGITS as u32);
/// `POW62[k] = 62^k` for every chunk length.
const POW62: [u64; CHUNK_DIGITS + 1] = {
    let mut table = [1u64; CHUNK_DIGITS + 1];
    let mut k = 1;
    while k <= CHUNK_DIGITS {
        table[k] = table[k - 1] * 62;
        k += 1;
    }
    table
};
const INVALID: u8 = 0xff;
const DIGIT_VALUES: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

const fn limb_count<const N: usize>() -> usize {
    const { assert!(N <= MAX_BYTES, "base62 helpers support at most 32 bytes") };
    N.div_ceil(LIMB_BYTES)
}

/// Big-endian `u64` limbs; a byte length that is not a multiple of eight is
/// zero-extended at the most significant end.
fn to_limbs<const N: usize>(bytes: &[u8; N]) -> [u64; MAX_LIMBS] {
    let used = limb_count::<N>();
    let mut limbs = [0u64; MAX_LIMBS];
    let mut end = N;
    for limb in limbs[..used].iter_mut().rev() {
        let take = end.min(LIMB_BYTES);
        let mut buf = [0u8; LIMB_BYTES];
        buf[LIMB_BYTES - take..].copy_from_slice(&bytes[end - take..end]);
        *limb = u64::from_be_bytes(buf);
        end -= take;
    }
    limbs
}

/// Inverse of [`to_limbs`]; fails if the zero-extension bytes are not zero.
fn from_limbs<const N: usize>(limbs: &[u64; MAX_LIMBS], out: &mut [u8; N]) -> bool {
    let used = limb_count::<N>();
    let extension_bits = 8 * (used * LIMB_BYTES - N);
    if extension_bits > 0 && limbs[0] >> (64 - extension_bits) != 0 {
        return false;
    }
    let mut end = N;
    for limb in limbs[..used].iter().rev() {
        let take = end.min(LIMB_BYTES);
        out[end - take..end].copy_from_slice(&limb.to_be_bytes()[LIMB_BYTES - take..]);
        end -= take;
    }
    true
}

fn decode_into_limbs(digits: &[u8], limbs: &mut [u64]) -> bool {
    // Branch-free over the digits: invalid characters (high bit set in the
    // table) and overflow are accumulated and checked once at the end.
    let mut invalid = 0u8;
    let mut overflow = 0u64;
    for chunk in digits.chunks(CHUNK_DIGITS) {
        let mut value = 0u64;
        for &c in chunk {
            let d = DIGIT_VALUES[usize::from(c)];
            invalid |= d;
            value = value * 62 + u64::from(d & 0x3f);
        }
        overflow |= mul_add(limbs, POW62[chunk.len()], value);
    }
    invalid & 0x80 == 0 && overflow == 0
}

/// `limbs = limbs * multiplier + addend`, returning the carry out of the top limb.
fn mul_add(limbs: &mut [u64], multiplier: u64, addend: u64) -> u64 {
    let mut carry = addend;
    for limb in limbs.iter_mut().rev() {
        let cur = u128::from(*limb) * u128::from(multiplier) + u128::from(carry);
        *limb = cur as u64;
        carry = (cur >> 64) as u64;
    }
    carry
}

/// `limbs = limbs / divisor`, returning the remainder.
fn div_rem(limbs: &mut [u64], divisor: u64) -> u64 {
    let mut rem = 0u64;
    for limb in limbs.iter_mut() {
        let cur = (u128::from(rem) << 64) | u128::from(*limb);
        *limb = (cur / u128::from(divisor)) as u64;
        rem = (cur % u128::from(divisor)) as u64;
    }
    rem
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc<const N: usize>(bytes: &[u8; N], width: usize) -> String {
        let mut out = vec![0u8; width];
        encode(bytes, &mut out);
        String::from_utf8(out).expect("alphabet is ASCII")
    }

    fn dec<const N: usize>(digits: &str) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        decode(digits.as_bytes(), &mut out).then_some(out)
    }

    /// Reference conversion via u128 for values that fit.
    fn reference(mut value: u128, width: usize) -> String {
        let mut out = vec![b'0'; width];
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(value % 62) as usize];
            value /= 62;
        }
        assert_eq!(value, 0, "reference width too small");
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn alphabet_is_ordered_and_matches_digit_value() {
        for (i, &c) in ALPHABET.iter().enumerate() {
            assert_eq!(DIGIT_VALUES[usize::from(c)], i as u8);
            assert!(is_digit(c));
        }
        for c in 0..=255u8 {
            assert_eq!(is_digit(c), c.is_ascii_alphanumeric(), "{c}");
            assert_eq!(
                DIGIT_VALUES[usize::from(c)] != INVALID,
                c.is_ascii_alphanumeric()
            );
        }
        assert!(all_digits(ALPHABET));
        assert!(all_digits(b""));
        assert!(!all_digits(b"abc_def"));
        for c in [b'_', b'-', b' ', b'+', b'/', b'=', 0, 0x80, 0xff] {
            assert_eq!(DIGIT_VALUES[usize::from(c)], INVALID);
            assert!(!is_digit(c));
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(enc(&[0u8; 4], 6), "000000");
        assert_eq!(enc(&[0, 0, 0, 61], 6), "00000z");
        assert_eq!(enc(&[0, 0, 0, 62], 6), "000010");
        assert_eq!(enc(&u32::MAX.to_be_bytes(), 6), "4gfFC3");
        assert_eq!(dec::<4>("4gfFC3"), Some(u32::MAX.to_be_bytes()));
        assert_eq!(dec::<4>("4gfFC4"), None, "2^32 must overflow 4 bytes");
        assert_eq!(enc(&u128::MAX.to_be_bytes(), 22), reference(u128::MAX, 22));
    }

    #[test]
    fn width_math_is_tight() {
        // The largest value of each width overflows the byte array
        // (62^w > 256^N), while one digit fewer always fits (62^(w-1) < 256^N).
        assert!(dec::<4>(&"z".repeat(6)).is_none());
        assert!(dec::<16>(&"z".repeat(22)).is_none());
        assert!(dec::<32>(&"z".repeat(43)).is_none());
        assert!(dec::<4>(&"z".repeat(5)).is_some());
        assert!(dec::<16>(&"z".repeat(21)).is_some());
        assert!(dec::<32>(&"z".repeat(42)).is_some());
        // And the maximum byte values round-trip at the chosen widths.
        assert_eq!(dec::<4>(&enc(&[0xff; 4], 6)), Some([0xff; 4]));
        assert_eq!(dec::<16>(&enc(&[0xff; 16], 22)), Some([0xff; 16]));
        assert_eq!(dec::<32>(&enc(&[0xff; 32], 43)), Some([0xff; 32]));
    }

    #[test]
    fn rejects_non_digits_and_odd_lengths() {
        assert!(dec::<4>("00000_").is_none());
        assert!(dec::<4>("0000 0").is_none());
        assert_eq!(dec::<3>("0"), Some([0; 3]));
        assert_eq!(dec::<3>(&enc(&[0xff; 3], 5)), Some([0xff; 3]));
        // 2^24 does not fit in 3 bytes even though it fits in the limb.
        assert_eq!(dec::<3>(&reference(1 << 24, 5)), None);
        assert_eq!(dec::<0>(""), Some([]));
        assert_eq!(dec::<0>("1"), None);
    }

    proptest! {
        #[test]
        fn roundtrip_32(bytes in any::<[u8; 32]>()) {
            let s = enc(&bytes, 43);
            prop_assert_eq!(s.len(), 43);
            prop_assert!(all_digits(s.as_bytes()));
            prop_assert_eq!(dec::<32>(&s), Some(bytes));
        }

        #[test]
        fn roundtrip_16_matches_reference(value in any::<u128>()) {
            let s = enc(&value.to_be_bytes(), 22);
            prop_assert_eq!(&s, &reference(value, 22));
            prop_assert_eq!(dec::<16>(&s), Some(value.to_be_bytes()));
        }

        #[test]
        fn roundtrip_4_matches_reference(value in any::<u32>()) {
            let s = enc(&value.to_be_bytes(), 6);
            prop_assert_eq!(&s, &reference(u128::from(value), 6));
            prop_assert_eq!(dec::<4>(&s), Some(value.to_be_bytes()));
        }

        #[test]
        fn roundtrip_odd_lengths(a in any::<[u8; 5]>(), b in any::<[u8; 20]>(), c in any::<[u8; 9]>()) {
            // Widths: 62^7 >= 2^40, 62^27 >= 2^160, 62^13 >= 2^72.
            prop_assert_eq!(dec::<5>(&enc(&a, 7)), Some(a));
            prop_assert_eq!(dec::<20>(&enc(&b, 27)), Some(b));
            prop_assert_eq!(dec::<9>(&enc(&c, 13)), Some(c));
            let mut wide = [0u8; 16];
            wide[7..].copy_from_slice(&c);
            prop_assert_eq!(enc(&c, 13), enc(&wide, 13));
        }

        #[test]
        fn overflow_is_rejected(excess in 1u128..(1u128 << 90)) {
            // Values in [2^128, 2^128 + 2^90) written with 22 digits.
            let mut digits = vec![0u8; 22];
            let mut wide = [0u8; 32];
            wide[15] = 1;
            wide[16..].copy_from_slice(&excess.to_be_bytes());
            encode(&wide, &mut digits);
            prop_assert!(dec::<16>(std::str::from_utf8(&digits).expect("ASCII")).is_none());
            // Same digits fit in 32 bytes and decode back.
            prop_assert_eq!(dec::<32>(std::str::from_utf8(&digits).expect("ASCII")), Some(wide));
        }

        #[test]
        fn leading_zero_padding(value in any::<u32>(), width in 6usize..12) {
            let s = enc(&value.to_be_bytes(), width);
            prop_assert!(s[..width - 6].bytes().all(|c| c == b'0'));
            prop_assert_eq!(dec::<4>(&s), Some(value.to_be_bytes()));
        }
    }
}
