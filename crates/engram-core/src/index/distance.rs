//! Vector kernels: inner product and L2 normalisation.
//!
//! Every search and every insert spends most of its time in [`dot`], so the
//! x86_64 build carries an AVX2+FMA kernel chosen at run time (the binary
//! stays portable to CPUs without AVX2). The kernel keeps four independent
//! 8-lane accumulators so the FMA latency (4-5 cycles) is hidden behind
//! throughput; a single accumulator would make every iteration wait for the
//! previous one.

/// Inner product of `a` and `b`.
///
/// Uses the AVX2+FMA kernel on x86_64 CPUs that have it (detected once at
/// run time), a portable unrolled loop elsewhere. The two kernels sum in a
/// different order, so results may differ in the last bits.
///
/// # Panics
/// Debug builds assert `a.len() == b.len()`; release builds use the shorter
/// length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot of vectors with different lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { x86::dot_avx2_fma(a, b) };
        }
    }
    dot_portable(a, b)
}

/// L2-normalises `v` in place and returns its original norm.
///
/// A zero (or non-finite-norm) vector is left unchanged, so callers can
/// reject it by looking at the returned norm.
pub fn normalize(v: &mut [f32]) -> f32 {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 && norm.is_finite() {
        let inv = 1.0 / norm;
        for x in v.iter_mut() {
            *x *= inv;
        }
    }
    norm
}

/// Asks the CPU to start loading the cache lines of `v` that a following
/// [`dot`] will read first. A hint only: it has no effect on results, and
/// does nothing on other architectures.
#[inline(always)]
pub(crate) fn prefetch(v: &[f32], lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = v.as_ptr().cast::<i8>();
        let bytes = std::mem::size_of_val(v);
        let mut off = 0;
        let mut n = 0;
        while n < lines && off < bytes {
            // SAFETY: prefetch never faults and the address is inside `v`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
            off += 64;
            n += 1;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (v, lines);
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2_fma() -> bool {
    // `is_x86_feature_detected!` caches its answer in a static after the
    // first call, so this is one relaxed load and a test.
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Portable kernel: eight independent partial sums let the compiler keep
/// several additions in flight (and vectorise with SSE on x86_64).
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let pa = a.as_ptr();
        let pb = b.as_ptr();
        let mut i = 0;
        // SAFETY (whole body): every load reads `[i, i + 8)` or `[i, i + 32)`
        // with the loop conditions keeping that range below `n`, and both
        // slices have at least `n` elements. Unaligned loads are used, so no
        // alignment requirement.
        unsafe {
            let mut s0 = _mm256_setzero_ps();
            let mut s1 = _mm256_setzero_ps();
            let mut s2 = _mm256_setzero_ps();
            let mut s3 = _mm256_setzero_ps();
            while i + 32 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                s1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    s1,
                );
                s2 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 16)),
                    _mm256_loadu_ps(pb.add(i + 16)),
                    s2,
                );
                s3 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 24)),
                    _mm256_loadu_ps(pb.add(i + 24)),
                    s3,
                );
                i += 32;
            }
            while i + 8 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                i += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
            let lo = _mm256_castps256_ps128(s);
            let hi = _mm256_extractf128_ps::<1>(s);
            let q = _mm_add_ps(lo, hi);
            let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let q = _mm_add_ss(q, _mm_shuffle_ps::<0b01>(q, q));
            let mut sum = _mm_cvtss_f32(q);
            while i < n {
                sum += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            sum
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn naive(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    #[test]
    fn dot_matches_naive_for_all_lengths() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for len in 0..200 {
            let a: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let want = naive(&a, &b);
            let tol = 1e-5 * (len as f64 + 1.0);
            assert!((f64::from(dot(&a, &b)) - want).abs() < tol, "len {len}");
            assert!(
                (f64::from(dot_portable(&a, &b)) - want).abs() < tol,
                "len {len}"
            );
        }
    }

    #[test]
    fn normalize_returns_norm_and_makes_unit() {
        let mut v = vec![3.0f32, 4.0];
        assert_eq!(normalize(&mut v), 5.0);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut z = vec![0.0f32; 4];
        assert_eq!(normalize(&mut z), 0.0);
        assert_eq!(z, vec![0.0; 4]);
    }
}
