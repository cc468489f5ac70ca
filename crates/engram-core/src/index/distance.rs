//! Vector kernels: inner product, `i8` quantization, L2 normalisation.
//!
//! Every search and every insert spends most of its time in these dot
//! products, so the x86_64 build carries AVX2+FMA kernels chosen at run time
//! (the binary stays portable to CPUs without AVX2). The kernels keep four
//! independent 8-lane accumulators so the FMA latency (4-5 cycles) is hidden
//! behind throughput; a single accumulator would make every iteration wait
//! for the previous one.

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

/// Quantizes `v` to `i8` codes with one scale per vector:
/// `v[i] ≈ scale * out[i]`, the largest component mapping to ±127. Returns
/// the scale (0 for a zero or non-finite vector, whose codes are all 0).
///
/// On the benchmark sets (unit vectors, 384 and 768 dimensions) the error
/// of a [`dot_i8`] similarity is 2-3e-4 on average, well below the gaps
/// between neighbours' similarities, so searches traverse the graph on
/// codes and re-rank with exact vectors.
pub fn quantize(v: &[f32], out: &mut [i8]) -> f32 {
    debug_assert_eq!(v.len(), out.len());
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let inv = 127.0 / max;
    for (o, x) in out.iter_mut().zip(v) {
        *o = (x * inv).round().clamp(-127.0, 127.0) as i8;
    }
    max / 127.0
}

/// Inner product of an `f32` query with `i8` codes (multiply by the codes'
/// scale for the similarity). AVX2+FMA kernel when available, like [`dot`].
#[inline]
pub fn dot_i8(a: &[f32], b: &[i8]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot_i8 of vectors with different lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { x86::dot_i8_avx2_fma(a, b) };
        }
    }
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * f32::from(y[i]);
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * f32::from(*y))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Inner product of two code rows (multiply by both scales for the
/// similarity). What the compact mode's graph building compares nodes with,
/// since their `f32` vectors are on disk. Sixteen independent `i32` lanes,
/// which the compiler turns into widening multiply-adds; `i32` cannot
/// overflow below 2^17 dimensions (127 * 127 * 2^17 < 2^31).
#[inline]
pub fn dot_i8_i8(a: &[i8], b: &[i8]) -> i32 {
    debug_assert_eq!(a.len(), b.len(), "dot_i8_i8 of rows with different lengths");
    let mut acc = [0i32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    acc.iter().sum::<i32>() + tail
}

/// Asks the CPU to start loading every cache line of `bytes`. A hint only:
/// no effect on results, and nothing on other architectures.
#[inline(always)]
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for off in (0..bytes.len()).step_by(64) {
            // SAFETY: prefetch never faults and the address is inside `bytes`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(off).cast::<i8>()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = bytes;
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

    /// Horizontal sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(s: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps::<0b01>(q, q)))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_i8_avx2_fma(a: &[f32], b: &[i8]) -> f32 {
        let n = a.len().min(b.len());
        let pa = a.as_ptr();
        let pb = b.as_ptr();
        let mut i = 0;
        // SAFETY (whole body): each step reads `[i, i + 32)` of both slices
        // (or `[i, i + 8)`), kept below `n` by the loop conditions; loads are
        // unaligned.
        unsafe {
            let mut s0 = _mm256_setzero_ps();
            let mut s1 = _mm256_setzero_ps();
            let mut s2 = _mm256_setzero_ps();
            let mut s3 = _mm256_setzero_ps();
            while i + 32 <= n {
                let c = _mm256_loadu_si256(pb.add(i).cast());
                let lo = _mm256_castsi256_si128(c);
                let hi = _mm256_extracti128_si256::<1>(c);
                let b0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
                let b1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo)));
                let b2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
                let b3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi)));
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), b0, s0);
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), b1, s1);
                s2 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 16)), b2, s2);
                s3 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 24)), b3, s3);
                i += 32;
            }
            while i + 8 <= n {
                let c = _mm_loadl_epi64(pb.add(i).cast());
                let w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), w, s0);
                i += 8;
            }
            let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
            while i < n {
                sum += *pa.add(i) * f32::from(*pb.add(i));
                i += 1;
            }
            sum
        }
    }

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
            let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
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
    fn quantized_dot_is_close_to_exact() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for len in [1usize, 7, 8, 31, 33, 100, 384, 768] {
            let mut a: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut b: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            normalize(&mut a);
            normalize(&mut b);
            let mut codes = vec![0i8; len];
            let scale = quantize(&b, &mut codes);
            let approx = dot_i8(&a, &codes) * scale;
            assert!(
                (approx - dot(&a, &b)).abs() < 5e-3,
                "len {len}: {approx} vs {}",
                dot(&a, &b)
            );
            let exact_codes: f64 = a
                .iter()
                .zip(&codes)
                .map(|(x, c)| f64::from(*x) * f64::from(*c))
                .sum();
            assert!(
                (f64::from(dot_i8(&a, &codes)) - exact_codes).abs() < 1e-3 * (len as f64).sqrt(),
                "len {len}"
            );
        }
        let mut z = vec![5i8; 3];
        assert_eq!(quantize(&[0.0, 0.0, 0.0], &mut z), 0.0);
        assert_eq!(z, vec![0; 3]);
    }

    #[test]
    fn code_by_code_dot_is_exact_on_codes_and_close_to_exact_on_vectors() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for len in [1usize, 15, 16, 17, 100, 384, 768] {
            let mut a: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut b: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            normalize(&mut a);
            normalize(&mut b);
            let (mut ca, mut cb) = (vec![0i8; len], vec![0i8; len]);
            let (sa, sb) = (quantize(&a, &mut ca), quantize(&b, &mut cb));
            let want: i32 = ca
                .iter()
                .zip(&cb)
                .map(|(x, y)| i32::from(*x) * i32::from(*y))
                .sum();
            assert_eq!(dot_i8_i8(&ca, &cb), want, "len {len}");
            let approx = dot_i8_i8(&ca, &cb) as f32 * sa * sb;
            assert!((approx - dot(&a, &b)).abs() < 1e-2, "len {len}");
        }
        let full = vec![127i8; 1 << 12];
        assert_eq!(dot_i8_i8(&full, &full), 127 * 127 * (1 << 12));
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
