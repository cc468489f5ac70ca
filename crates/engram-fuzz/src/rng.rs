//! The harness's random numbers: SplitMix64, seeded per input.
//!
//! Our own generator rather than `rand`'s: the input of iteration `i` must
//! be the same bytes in every build and on every machine, so that a crash
//! reported as (seed, target, iteration) can be regenerated later, and
//! `rand` documents its `StdRng` as free to change between versions.

/// SplitMix64 (Steele, Lea and Flood, 2014): one 64-bit word of state,
/// full period, and every seed — even 0 — gives a good stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

/// FNV-1a, 64 bits: a stable hash of bytes (target names, inputs), the
/// same in every build.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator for one input: a function of the run's seed, the
    /// target's name and the iteration only, so that input `iteration` of
    /// a run can be made again without making the ones before it.
    pub fn for_input(seed: u64, target: &str, iteration: u64) -> Rng {
        let mut r = Rng(seed ^ fnv1a(target.as_bytes()));
        let a = r.next_u64();
        let mut r = Rng(a ^ iteration.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: no modulo bias worth the name for n < 2^32.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A small size, most often tiny: 1..=`max` (`max` at least 1) with a
    /// bias towards 1, so that stacked mutations mostly make small changes.
    pub fn small(&mut self, max: usize) -> usize {
        let bits = self.below(usize::BITS as usize - max.leading_zeros() as usize + 1);
        1 + self.below((1usize << bits).min(max))
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_target_and_iteration_give_the_same_stream() {
        let a: Vec<u64> = (0..4)
            .map(|_| Rng::for_input(7, "t", 3).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::for_input(7, "t", 3);
        let first = r.next_u64();
        assert_ne!(first, Rng::for_input(7, "t", 4).next_u64());
        assert_ne!(first, Rng::for_input(8, "t", 3).next_u64());
        assert_ne!(first, Rng::for_input(7, "u", 3).next_u64());
    }

    #[test]
    fn bounded_draws_stay_in_bounds() {
        let mut r = Rng::new(1);
        for n in [1usize, 2, 3, 100, 1 << 20] {
            for _ in 0..1000 {
                assert!(r.below(n) < n);
                let s = r.small(n);
                assert!((1..=n).contains(&s), "{s} of {n}");
            }
        }
        assert_eq!(r.below(0), 0);
        for _ in 0..1000 {
            assert!((3..=5).contains(&r.range(3, 5)));
        }
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
