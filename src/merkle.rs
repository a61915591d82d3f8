//! RFC 6962 Merkle trees: leaf and node hashing, roots, inclusion proofs.
//!
//! ```text
//! leaf hash  = SHA-256(0x00 ‖ canonical bytes of one event)
//! node hash  = SHA-256(0x01 ‖ left ‖ right)
//! MTH({})    = SHA-256("")
//! MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n])) with k the largest power of two < n
//! ```
//!
//! Trees are built bottom-up, promoting an unpaired right-most node unchanged; that yields
//! exactly the RFC 6962 §2.1 tree (the known-answer tests below pin it). [`Tree`], for
//! inclusion proofs, uses `rs_merkle` through [`Rfc6962Hasher`]; [`root`], for sealing and
//! checking segments, is our own level-by-level loop that hashes two nodes at a time where the
//! CPU allows ([`extend_leaf_hashes`] does the same for leaves), and is tested against [`Tree`]. Proof *verification* is our
//! own code, written from RFC 9162 §2.1.3.2, so that `rs_merkle` is checked rather than
//! trusted, and so that offline verifiers have a short algorithm to copy.

use sha2::{Digest, Sha256};

#[cfg(target_arch = "x86_64")]
mod sha_ni;

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// SHA-256 of the empty string: the root of a tree with no leaves.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// Appends the leaf hashes of `rows` to `out`, in order. The same as mapping [`leaf_hash`],
/// but on x86-64 CPUs with the SHA extensions two leaves are hashed side by side (about a
/// quarter faster; the full sweep hashes every leaf of every segment).
pub fn extend_leaf_hashes<'a>(out: &mut Vec<Hash>, rows: impl IntoIterator<Item = &'a [u8]>) {
    leaf_hashes_into(out, rows, true);
}

/// [`extend_leaf_hashes`]; `pairs` allows the pair code where the CPU has it (the tests turn
/// it off to check the other path on the same machine).
fn leaf_hashes_into<'a>(
    out: &mut Vec<Hash>,
    rows: impl IntoIterator<Item = &'a [u8]>,
    pairs: bool,
) {
    let rows = rows.into_iter();
    #[cfg(target_arch = "x86_64")]
    if pairs && sha_ni::supported() {
        let mut rows = rows;
        while let Some(a) = rows.next() {
            match rows.next() {
                // SAFETY: `supported()` checked the CPU has what the pair code uses.
                Some(b) => out.extend(unsafe { sha_ni::leaf_hash_pair(a, b) }),
                None => out.push(leaf_hash(a)),
            }
        }
        return;
    }
    let _ = pairs; // unused where there is no pair code
    out.extend(rows.map(leaf_hash));
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The domain-separating RFC 6962 hasher for `rs_merkle`.
#[derive(Clone, Copy, Debug)]
pub struct Rfc6962Hasher;

impl rs_merkle::Hasher for Rfc6962Hasher {
    type Hash = Hash;

    /// Hashing raw data yields a *leaf* hash, so a leaf can never be confused with a node.
    fn hash(data: &[u8]) -> Hash {
        leaf_hash(data)
    }

    fn concat_and_hash(left: &Hash, right: Option<&Hash>) -> Hash {
        match right {
            Some(right) => node_hash(left, right),
            None => *left,
        }
    }
}

/// A built tree over a list of leaf hashes.
pub struct Tree {
    inner: rs_merkle::MerkleTree<Rfc6962Hasher>,
    size: usize,
}

impl Tree {
    pub fn from_leaf_hashes(leaves: &[Hash]) -> Tree {
        Tree {
            inner: rs_merkle::MerkleTree::from_leaves(leaves),
            size: leaves.len(),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn root(&self) -> Hash {
        self.inner.root().unwrap_or(EMPTY_ROOT)
    }

    /// The RFC 6962 audit path of leaf `index`, from the leaf's sibling up to the root's child.
    pub fn inclusion_proof(&self, index: usize) -> Vec<Hash> {
        assert!(
            index < self.size,
            "leaf {index} is outside a tree of {}",
            self.size
        );
        self.inner.proof(&[index]).proof_hashes().to_vec()
    }
}

/// The root over `leaves` (RFC 6962 MTH).
///
/// Built level by level, as [`Tree`] does (the unpaired last node of a level moves up
/// unchanged), but in one buffer and, on x86-64 CPUs with the SHA extensions, two nodes at a
/// time: a segment's tree has as many nodes as leaves, so its root costs about a fifth of what
/// hashing its leaves does. The tests check it against [`Tree`] for every size to 130.
pub fn root(leaves: &[Hash]) -> Hash {
    root_with(leaves, true)
}

/// [`root`]; `pairs` as for [`leaf_hashes_into`].
fn root_with(leaves: &[Hash], pairs: bool) -> Hash {
    if leaves.is_empty() {
        return EMPTY_ROOT;
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        next_level(&mut level, pairs);
    }
    level[0]
}

/// Replaces a level of the tree with the level above it, in place (node `i` above is made
/// from nodes `2i` and `2i + 1` below, which no earlier write has touched).
fn next_level(level: &mut Vec<Hash>, pairs: bool) {
    let n = level.len();
    let nodes = n / 2;
    #[cfg(target_arch = "x86_64")]
    let done = if pairs && sha_ni::supported() {
        // SAFETY: `supported()` checked the CPU has what the pair code uses.
        unsafe { node_pairs(level, nodes) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = pairs;
        0
    };
    for i in done..nodes {
        level[i] = node_hash(&level[2 * i], &level[2 * i + 1]);
    }
    if n % 2 == 1 {
        level[nodes] = level[n - 1];
        level.truncate(nodes + 1);
    } else {
        level.truncate(nodes);
    }
}

/// The first nodes of the level above `level`, two at a time, in place; returns how many it
/// made (all of `nodes` but an odd last one).
///
/// # Safety
///
/// As for [`sha_ni::node_hash_pair`].
#[cfg(target_arch = "x86_64")]
unsafe fn node_pairs(level: &mut [Hash], nodes: usize) -> usize {
    let mut i = 0;
    while i + 1 < nodes {
        let (l, r) = (2 * i, 2 * i + 2);
        // SAFETY: the caller's.
        let [a, b] = unsafe {
            sha_ni::node_hash_pair([&level[l], &level[l + 1]], [&level[r], &level[r + 1]])
        };
        level[i] = a;
        level[i + 1] = b;
        i += 2;
    }
    i
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2): does `leaf` sit at `index` in a tree of
/// `size` leaves whose root is `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    root_from_inclusion_proof(index, size, leaf, proof).is_some_and(|r| &r == root)
}

/// Recomputes the root an inclusion proof commits to, or `None` if the proof has the wrong
/// shape for `index` and `size`.
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight test leaves of the RFC 6962 reference implementation (certificate-transparency
    /// `merkle_tree_test`), and the roots of the trees over their first n.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        LEAVES
            .iter()
            .map(|h| leaf_hash(&hex::decode(h).unwrap()))
            .collect()
    }

    #[test]
    fn known_answer_roots() {
        assert_eq!(root(&[]), sha256(b""));
        assert_eq!(
            hex::encode(EMPTY_ROOT),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let l = leaves();
        for n in 1..=8 {
            assert_eq!(
                hex::encode(root(&l[..n])),
                ROOTS[n - 1],
                "tree of {n} leaves"
            );
        }
    }

    #[test]
    fn leaf_hashes_in_bulk_equal_one_at_a_time() {
        // Odd and even counts (the bulk path hashes pairs and the last one alone), lengths
        // on both sides of a block boundary, and the known-answer leaves; with pairs and
        // without (the path of CPUs without the SHA extensions).
        let mut rows: Vec<Vec<u8>> = LEAVES.iter().map(|h| hex::decode(h).unwrap()).collect();
        rows.extend((50..140).map(|n| (0..n).map(|i| (i * 31 + n) as u8).collect()));
        let bulk = |count: usize, pairs: bool| {
            let mut out = Vec::new();
            leaf_hashes_into(&mut out, rows[..count].iter().map(|r| r.as_slice()), pairs);
            out
        };
        for count in [0, 1, 2, 3, 8, 9, rows.len()] {
            let single: Vec<Hash> = rows[..count].iter().map(|r| leaf_hash(r)).collect();
            assert_eq!(bulk(count, true), single, "{count} rows in pairs");
            assert_eq!(bulk(count, false), single, "{count} rows one by one");
        }
        let mut public = Vec::new();
        extend_leaf_hashes(&mut public, rows[..8].iter().map(|r| r.as_slice()));
        assert_eq!(root(&public), root(&leaves()));
    }

    #[test]
    fn the_level_by_level_root_equals_the_tree_for_every_size() {
        let all: Vec<Hash> = (0u32..130).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 0..=all.len() {
            let tree = Tree::from_leaf_hashes(&all[..n]).root();
            assert_eq!(root_with(&all[..n], true), tree, "{n} leaves, in pairs");
            assert_eq!(root_with(&all[..n], false), tree, "{n} leaves, one by one");
            assert_eq!(root(&all[..n]), tree, "{n} leaves");
        }
    }

    #[test]
    fn known_answer_inclusion_proof() {
        // Audit path of leaf 5 in the 8-leaf tree (RFC 6962 reference test data).
        let l = leaves();
        let tree = Tree::from_leaf_hashes(&l);
        let proof: Vec<String> = tree.inclusion_proof(5).iter().map(hex::encode).collect();
        assert_eq!(
            proof,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
    }

    /// A second, recursive implementation straight from the RFC 6962 definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - (n - 1).leading_zeros() - 1);
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn every_proof_of_every_size_verifies_and_nothing_else_does() {
        let all: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..all.len() {
            let l = &all[..n];
            let tree = Tree::from_leaf_hashes(l);
            assert_eq!(tree.root(), mth(l), "size {n}");
            for (i, leaf) in l.iter().enumerate() {
                let p = tree.inclusion_proof(i);
                assert!(
                    verify_inclusion(i as u64, n as u64, leaf, &p, &tree.root()),
                    "{i}/{n}"
                );
                // The wrong leaf, the wrong index or a flipped bit must fail.
                assert!(!verify_inclusion(
                    i as u64,
                    n as u64,
                    &all[n],
                    &p,
                    &tree.root()
                ));
                if n > 1 {
                    let j = (i + 1) % n;
                    assert!(!verify_inclusion(
                        j as u64,
                        n as u64,
                        leaf,
                        &p,
                        &tree.root()
                    ));
                }
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert_ne!(&bad[0], first);
                    assert!(!verify_inclusion(
                        i as u64,
                        n as u64,
                        leaf,
                        &bad,
                        &tree.root()
                    ));
                }
            }
        }
    }
}
