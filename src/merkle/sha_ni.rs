//! Two RFC 6962 leaf hashes computed side by side with the x86-64 SHA extensions.
//!
//! One SHA-256 is a chain of 64 dependent rounds, so a single message leaves the CPU's SHA
//! unit waiting on each round's result. A full sweep hashes millions of short, independent
//! leaves (about 570 bytes each), so this module runs the rounds of two leaves interleaved:
//! while one leaf's round is in flight, the other's issues. On the 2-core machine this project
//! is measured on (an AMD EPYC host that day), pairs hash 1.2-1.35 times as fast as `sha2`
//! does one leaf at a time (docs/BENCHMARKS.md, "Where the time goes (full)").
//!
//! The round structure is FIPS 180-4 §6.2.2 expressed with the `SHA256RNDS2`, `SHA256MSG1`
//! and `SHA256MSG2` instructions, whose state layout is described in Intel's "SHA Extensions"
//! programming reference: the eight working variables are held as two vectors, `ABEF` and
//! `CDGH`, and each `SHA256RNDS2` performs two rounds. Nothing here is trusted on its own:
//! the tests compare every result with `sha2` over inputs of every length up to several blocks,
//! and the integration tests recompute every archived segment's leaves and root with Python's
//! `hashlib` (`tests/py/verify_archive.py`), which shares no code with this.

use core::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_loadu_si128, _mm_set_epi8,
    _mm_sha256msg1_epu32, _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi8,
    _mm_shuffle_epi32, _mm_storeu_si128,
};

use super::Hash;

/// FIPS 180-4 §4.2.2: the first 32 bits of the fractional parts of the cube roots of the first
/// 64 primes.
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// FIPS 180-4 §5.3.3: the initial hash value.
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Whether this CPU has what [`leaf_hash_pair`] needs (checked once by the standard library,
/// then a load of a cached flag).
pub(super) fn supported() -> bool {
    std::arch::is_x86_feature_detected!("sha")
        && std::arch::is_x86_feature_detected!("sse4.1")
        && std::arch::is_x86_feature_detected!("ssse3")
}

/// `[SHA-256(0x00 ‖ a), SHA-256(0x00 ‖ b)]`, computed together.
///
/// # Safety
///
/// The CPU must have the SHA, SSSE3 and SSE4.1 extensions ([`supported`]).
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(super) unsafe fn leaf_hash_pair(a: &[u8], b: &[u8]) -> [Hash; 2] {
    prefixed_pair(0x00, a, b)
}

/// `[SHA-256(0x01 ‖ a.0 ‖ a.1), SHA-256(0x01 ‖ b.0 ‖ b.1)]`, computed together.
///
/// # Safety
///
/// The CPU must have the SHA, SSSE3 and SSE4.1 extensions ([`supported`]).
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(super) unsafe fn node_hash_pair(a: [&Hash; 2], b: [&Hash; 2]) -> [Hash; 2] {
    let children = |[left, right]: [&Hash; 2]| {
        let mut both = [0u8; 64];
        both[..32].copy_from_slice(left);
        both[32..].copy_from_slice(right);
        both
    };
    prefixed_pair(0x01, &children(a), &children(b))
}

/// `[SHA-256(prefix ‖ a), SHA-256(prefix ‖ b)]`.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn prefixed_pair(prefix: u8, a: &[u8], b: &[u8]) -> [Hash; 2] {
    let (a, b) = (Padded::new(prefix, a), Padded::new(prefix, b));
    let start = State::load(&H0);
    let mut both = [start, start];
    let shared = a.blocks.min(b.blocks);
    for i in 0..shared {
        compress(&mut both, [a.block(i), b.block(i)]);
    }
    let [sa, sb] = both;
    [a.finish(sa, shared), b.finish(sb, shared)]
}

/// A message `prefix ‖ data` with its SHA-256 padding, as 64-byte blocks, without copying
/// `data`: the blocks in its middle are read in place; the first (which starts with the
/// prefix byte) and the last one or two (which carry the padding and the bit length) are
/// assembled in small buffers.
struct Padded<'a> {
    data: &'a [u8],
    first: [u8; 64],
    tail: [u8; 128],
    /// Blocks wholly inside the message (`first` and the in-place ones).
    whole: usize,
    blocks: usize,
}

impl<'a> Padded<'a> {
    fn new(prefix: u8, data: &'a [u8]) -> Padded<'a> {
        let len = data.len() + 1; // with the prefix byte
        let whole = len / 64;
        let rest = len - 64 * whole; // message bytes in the tail, 0..=63
        let tail_blocks = if rest + 1 + 8 <= 64 { 1 } else { 2 };
        let mut first = [0u8; 64];
        let mut tail = [0u8; 128];
        if whole == 0 {
            tail[0] = prefix;
            tail[1..rest].copy_from_slice(data);
        } else {
            first[0] = prefix;
            first[1..].copy_from_slice(&data[..63]);
            tail[..rest].copy_from_slice(&data[64 * whole - 1..]);
        }
        tail[rest] = 0x80;
        let end = 64 * tail_blocks;
        tail[end - 8..end].copy_from_slice(&(len as u64 * 8).to_be_bytes());
        Padded {
            data,
            first,
            tail,
            whole,
            blocks: whole + tail_blocks,
        }
    }

    /// Compresses blocks `from..` into `state` alone and returns the hash.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn finish(&self, state: State, from: usize) -> Hash {
        let mut one = [state];
        for i in from..self.blocks {
            compress(&mut one, [self.block(i)]);
        }
        one[0].digest()
    }

    fn block(&self, i: usize) -> &[u8; 64] {
        let bytes = if i >= self.whole {
            &self.tail[64 * (i - self.whole)..][..64]
        } else if i == 0 {
            &self.first[..]
        } else {
            // Message byte 64·i is data byte 64·i − 1 (the prefix byte comes first).
            &self.data[64 * i - 1..][..64]
        };
        bytes.try_into().expect("64 bytes")
    }
}

/// The eight working variables in the layout `SHA256RNDS2` wants: `[F, E, B, A]` and
/// `[H, G, D, C]` from the lowest lane up.
#[derive(Clone, Copy)]
struct State {
    abef: __m128i,
    cdgh: __m128i,
}

impl State {
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn load(h: &[u32; 8]) -> State {
        let dcba = load(&h[..4]);
        let hgfe = load(&h[4..]);
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
        State {
            abef: _mm_alignr_epi8(cdab, efgh, 8),
            cdgh: _mm_blend_epi16(efgh, cdab, 0xF0),
        }
    }

    /// The hash value as 32 big-endian bytes.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn digest(self) -> Hash {
        let feba = _mm_shuffle_epi32(self.abef, 0x1B);
        let dchg = _mm_shuffle_epi32(self.cdgh, 0xB1);
        let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
        let hgfe = _mm_alignr_epi8(dchg, feba, 8);
        let mut out = [0u8; 32];
        let (lo, hi) = out.split_at_mut(16);
        store(lo, _mm_shuffle_epi8(dcba, big_endian_words()));
        store(hi, _mm_shuffle_epi8(hgfe, big_endian_words()));
        out
    }
}

/// The byte shuffle that turns four big-endian 32-bit words into native ones (and back).
#[target_feature(enable = "sse2")]
fn big_endian_words() -> __m128i {
    _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3)
}

#[target_feature(enable = "sse2")]
fn load(words: &[u32]) -> __m128i {
    assert!(words.len() >= 4);
    // SAFETY: at least 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(words.as_ptr().cast()) }
}

#[target_feature(enable = "sse2")]
fn store(out: &mut [u8], v: __m128i) {
    assert!(out.len() >= 16);
    // SAFETY: at least 16 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), v) }
}

/// Message words `4·j .. 4·j + 4` of `block`, as native integers.
#[target_feature(enable = "sse2,ssse3")]
fn message_words(block: &[u8; 64], j: usize) -> __m128i {
    let bytes = &block[16 * j..][..16];
    // SAFETY: 16 readable bytes; `loadu` has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
    _mm_shuffle_epi8(v, big_endian_words())
}

/// One 64-byte block into each of `N` independent states, their rounds interleaved.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn compress<const N: usize>(states: &mut [State; N], blocks: [&[u8; 64]; N]) {
    let before = *states;
    // The message schedule, four words to a vector: w0 holds the oldest four of the last
    // sixteen words, w3 the newest.
    let mut w0: [__m128i; N] = core::array::from_fn(|l| message_words(blocks[l], 0));
    let mut w1: [__m128i; N] = core::array::from_fn(|l| message_words(blocks[l], 1));
    let mut w2: [__m128i; N] = core::array::from_fn(|l| message_words(blocks[l], 2));
    let mut w3: [__m128i; N] = core::array::from_fn(|l| message_words(blocks[l], 3));
    let mut four_rounds = |w: &[__m128i; N], j: usize| {
        let k = load(&K[4 * j..]);
        for (s, w) in states.iter_mut().zip(w) {
            let wk = _mm_add_epi32(*w, k);
            s.cdgh = _mm_sha256rnds2_epu32(s.cdgh, s.abef, wk);
            s.abef = _mm_sha256rnds2_epu32(s.abef, s.cdgh, _mm_shuffle_epi32(wk, 0x0E));
        }
    };
    four_rounds(&w0, 0);
    four_rounds(&w1, 1);
    four_rounds(&w2, 2);
    four_rounds(&w3, 3);
    for j in 4..16 {
        // W[t] = σ1(W[t−2]) + W[t−7] + σ0(W[t−15]) + W[t−16], four at a time.
        let next: [__m128i; N] = core::array::from_fn(|l| {
            let t = _mm_sha256msg1_epu32(w0[l], w1[l]);
            let t = _mm_add_epi32(t, _mm_alignr_epi8(w3[l], w2[l], 4));
            _mm_sha256msg2_epu32(t, w3[l])
        });
        four_rounds(&next, j);
        (w0, w1, w2, w3) = (w1, w2, w3, next);
    }
    for (s, b) in states.iter_mut().zip(before) {
        s.abef = _mm_add_epi32(s.abef, b.abef);
        s.cdgh = _mm_add_epi32(s.cdgh, b.cdgh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic byte stream (xorshift) so failures reproduce.
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn pairs_equal_sha2_for_every_length_across_several_blocks() {
        assert!(
            supported(),
            "the CPUs this project runs on have the SHA extensions; without them \
             merkle::extend_leaf_hashes falls back to sha2 and this code is unused"
        );
        // Lengths 0..=300 cover every position of the padding boundary (message lengths
        // 55, 56, 63, 64 with the prefix byte) over several blocks; the partner has another
        // length so the two states run for different numbers of blocks.
        for len in 0..=300 {
            let a = bytes(len as u64 + 1, len);
            for other in [0, 1, len / 2, len + 1, 2 * len + 70] {
                let b = bytes(7 * other as u64 + 3, other);
                // SAFETY: checked above.
                let [ha, hb] = unsafe { leaf_hash_pair(&a, &b) };
                assert_eq!(ha, super::super::leaf_hash(&a), "length {len}");
                assert_eq!(hb, super::super::leaf_hash(&b), "length {other}");
            }
        }
    }

    #[test]
    fn node_pairs_equal_sha2() {
        assert!(supported());
        let h = |seed| -> Hash { bytes(seed, 32).try_into().unwrap() };
        for seed in 0..50 {
            let (a, b, c, d) = (h(seed), h(seed + 100), h(seed + 200), h(seed + 300));
            // SAFETY: checked above.
            let [ab, cd] = unsafe { node_hash_pair([&a, &b], [&c, &d]) };
            assert_eq!(ab, super::super::node_hash(&a, &b));
            assert_eq!(cd, super::super::node_hash(&c, &d));
        }
    }
}
