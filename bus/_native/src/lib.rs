//! `obus_ed25519`: Ed25519 verification under libsodium's `crypto_sign_verify_detached`
//! acceptance rule, exactly, computed with curve25519-dalek.
//!
//! The rule is the one of libsodium 1.0.19 to 1.0.21 (`crypto_sign/ed25519/ref10/open.c`,
//! `_crypto_sign_ed25519_verify_detached`, without `ED25519_COMPAT`), which PyNaCl bundles and
//! `bus/crypto.py` pins. A signature `R || S` on message `M` under key `A` is accepted iff,
//! in this order:
//!
//! 1. `S` is canonical: `S < L` as a 256-bit little-endian integer (`sc25519_is_canonical`);
//! 2. the encoding `R` is not on the small-order blacklist (`ge25519_has_small_order` on
//!    bytes: seven encodings, compared with the top bit of the last byte ignored);
//! 3. the encoding `A` is canonical, `y < p`, the sign bit ignored (`ge25519_is_canonical`);
//! 4. the encoding `A` is not on the small-order blacklist;
//! 5. `A` decodes to a point of the curve (`ge25519_frombytes_negate_vartime`);
//! 6. with `k = SHA-512(R || A || M) mod L`, the canonical encoding of `[S]B - [k]A` equals the
//!    32 bytes `R` (cofactorless; `R` itself is never decoded, so a non-canonical or off-curve
//!    `R` can never match).
//!
//! Inputs of the wrong length are rejected. There is no other outcome: no panic, no error.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use pyo3::prelude::*;
use sha2::{Digest, Sha512};

/// The group order L = 2^252 + 27742317777372353535851937790883648493, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

/// libsodium's `ge25519_has_small_order` blacklist: 0 (order 4), 1 (order 1), the two y of the
/// points of order 8, p-1 (order 2), and the non-canonical p (= 0) and p+1 (= 1).
const SMALL_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    [
        0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Decoded keys, negated, by encoding: a node verifies many signatures under few keys, and
/// decoding costs a field exponentiation. Decoding is a pure function of the 32 bytes, so a
/// cached point is the point libsodium decodes again each time. Bounded: emptied when full.
const KEY_CACHE_MAX: usize = 4096;
static KEY_CACHE: OnceLock<Mutex<HashMap<[u8; 32], EdwardsPoint>>> = OnceLock::new();

/// `ge25519_frombytes_negate_vartime`: -A, or None when A is not on the curve.
fn negated_key(pk: &[u8; 32]) -> Option<EdwardsPoint> {
    let cache = KEY_CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(p) = cache.lock().ok().and_then(|c| c.get(pk).copied()) {
        return Some(p);
    }
    let minus_a = -CompressedEdwardsY(*pk).decompress()?;
    if let Ok(mut c) = cache.lock() {
        if c.len() >= KEY_CACHE_MAX {
            c.clear();
        }
        c.insert(*pk, minus_a);
    }
    Some(minus_a)
}

/// `sc25519_is_canonical`: s < L, all 256 bits counted.
fn scalar_is_canonical(s: &[u8; 32]) -> bool {
    for i in (0..32).rev() {
        if s[i] != L[i] {
            return s[i] < L[i];
        }
    }
    false // s == L
}

/// `ge25519_has_small_order` on an encoding: equal to a blacklisted one, the sign bit ignored.
fn has_small_order(s: &[u8; 32]) -> bool {
    SMALL_ORDER
        .iter()
        .any(|b| s[..31] == b[..31] && (s[31] & 0x7f) == b[31])
}

/// `ge25519_is_canonical`: false iff y >= p (bytes 1..=30 all 0xff, byte 31 & 0x7f == 0x7f and
/// byte 0 >= 0xed), the sign bit ignored.
fn point_is_canonical(s: &[u8; 32]) -> bool {
    let top = (s[31] & 0x7f) == 0x7f && s[1..31].iter().all(|&b| b == 0xff);
    !(top && s[0] >= 0xed)
}

/// The whole rule (see the module documentation). Pure and total.
pub fn verify_strict_libsodium(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(pk), Ok(sig)) = (
        <&[u8; 32]>::try_from(public_key),
        <&[u8; 64]>::try_from(signature),
    ) else {
        return false;
    };
    let r: &[u8; 32] = sig[..32].try_into().expect("32 of 64 bytes");
    let s: &[u8; 32] = sig[32..].try_into().expect("32 of 64 bytes");
    if !scalar_is_canonical(s) || has_small_order(r) {
        return false;
    }
    if !point_is_canonical(pk) || has_small_order(pk) {
        return false;
    }
    let Some(minus_a) = negated_key(pk) else {
        return false;
    };
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(r)
            .chain_update(pk)
            .chain_update(message)
            .finalize()
            .into(),
    );
    // S < L was checked above, so this is S itself (from_bits would also keep it).
    let s = Scalar::from_bytes_mod_order(*s);
    let check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &minus_a, &s);
    check.compress().as_bytes() == r
}

/// verify(public_key: bytes, message: bytes, signature: bytes) -> bool
///
/// True iff libsodium's ``crypto_sign_verify_detached`` accepts ``signature`` on ``message``
/// under ``public_key``. Wrong lengths give False; never raises for bytes arguments.
/// Releases the GIL while it computes.
#[pyfunction]
fn verify(py: Python<'_>, public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    py.allow_threads(|| verify_strict_libsodium(public_key, message, signature))
}

#[pymodule]
fn obus_ed25519(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add(
        "RULE",
        "libsodium crypto_sign_verify_detached (1.0.19-1.0.21, strict)",
    )?;
    Ok(())
}
