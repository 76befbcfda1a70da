//! Randomness that does not depend on thread timing: every random choice in the corpus generator
//! and the loader comes from a generator seeded by a hash of (seed, epoch, index, ...), so the
//! same seed gives the same images and batches whichever worker thread does the work.

/// Mixes several words into one well-spread 64-bit seed (SplitMix64's finaliser, chained).
pub fn derive_seed(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    for &p in parts {
        h = splitmix(h ^ p);
    }
    h
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A generator for one item: `rng(&[seed, epoch, index])`.
pub fn rng(parts: &[u64]) -> fastrand::Rng {
    fastrand::Rng::with_seed(derive_seed(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_every_part_and_order() {
        let a = derive_seed(&[1, 2, 3]);
        assert_eq!(a, derive_seed(&[1, 2, 3]));
        assert_ne!(a, derive_seed(&[1, 2, 4]));
        assert_ne!(a, derive_seed(&[2, 1, 3]));
        assert_ne!(derive_seed(&[0]), derive_seed(&[0, 0]));
    }
}
