//! A log-linear latency histogram (HDR-style): 128 linear sub-buckets per
//! power of two, so any recorded value is reported within 0.8 %. Fixed size
//! (about 20 KB), no allocation after creation, mergeable across threads.

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS; // 128
const HALF: u64 = SUB / 2; // 64
/// Values up to 2^44 ns (about 4.9 hours) are kept exactly; larger ones are clamped.
const MAX_MSB: u32 = 44;
const BUCKETS: usize = ((MAX_MSB - SUB_BITS + 2) as usize) * HALF as usize + HALF as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let msb = msb.min(MAX_MSB);
    let v = v.min((1u64 << (MAX_MSB + 1)) - 1);
    let g = msb - SUB_BITS + 1; // >= 1
    let sub = v >> g; // in [64, 128)
    (g as usize) * HALF as usize + sub as usize
}

/// Lowest value that falls in bucket `i`, and the bucket's width.
fn bucket(i: usize) -> (u64, u64) {
    if (i as u64) < SUB {
        return (i as u64, 1);
    }
    let g = i as u64 / HALF - 1;
    let sub = i as u64 - g * HALF;
    (sub << g, 1 << g)
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        if v > self.max {
            self.max = v;
        }
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += *b;
        }
        self.total += o.total;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): the midpoint of the bucket holding
    /// the rank, never above the recorded maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, w) = bucket(i);
                return (lo + w / 2).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_precise() {
        let mut last = 0;
        for v in (0..2_000_000u64).chain([u64::MAX / 2, 1 << 40]) {
            let i = index(v);
            assert!(i >= last || v > 2_000_000, "monotonic at {v}");
            assert!(i < BUCKETS);
            let (lo, w) = bucket(i);
            if v < (1 << MAX_MSB) {
                assert!(lo <= v && v < lo + w, "v={v} lo={lo} w={w}");
                assert!(w as f64 <= (lo as f64 / 64.0).max(1.0), "precision at {v}");
            }
            last = i;
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.01, "{p50}");
        let p999 = h.quantile(0.999) as f64;
        assert!((p999 / 99_900_000.0 - 1.0).abs() < 0.01, "{p999}");
        assert_eq!(h.quantile(1.0), 100_000_000);
        let mut g = Histogram::new();
        g.record(5);
        g.merge(&h);
        assert_eq!(g.count(), 100_001);
        assert_eq!(g.max(), 100_000_000);
    }
}
