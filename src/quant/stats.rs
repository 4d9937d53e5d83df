//! Per-input-channel activation statistics (lmdeploy's `inputs_stats`, awq-reference §1.3), kept
//! in f64: max, min, absmax, mean and absmean of each channel over all calibration tokens.

use rayon::prelude::*;

#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    /// Number of tokens seen.
    pub count: usize,
    pub max: Vec<f64>,
    pub min: Vec<f64>,
    pub absmax: Vec<f64>,
    pub sum: Vec<f64>,
    pub abssum: Vec<f64>,
}

impl ChannelStats {
    pub fn new(k: usize) -> Self {
        ChannelStats {
            count: 0,
            max: vec![f64::NEG_INFINITY; k],
            min: vec![f64::INFINITY; k],
            absmax: vec![0.0; k],
            sum: vec![0.0; k],
            abssum: vec![0.0; k],
        }
    }

    pub fn channels(&self) -> usize {
        self.max.len()
    }

    /// Add `rows` tokens of a row-major `[rows, k]` buffer. Channels are processed in parallel,
    /// each accumulating over tokens in order, so the result does not depend on the thread count.
    pub fn update(&mut self, x: &[f32]) {
        let k = self.channels();
        if k == 0 {
            return;
        }
        let rows = x.len() / k;
        // Chunks of 64 channels per task.
        const C: usize = 64;
        let acc: Vec<(usize, Vec<[f64; 5]>)> = (0..k.div_ceil(C))
            .into_par_iter()
            .map(|ci| {
                let c0 = ci * C;
                let c1 = (c0 + C).min(k);
                let mut a: Vec<[f64; 5]> = (c0..c1)
                    .map(|c| [self.max[c], self.min[c], self.absmax[c], self.sum[c], self.abssum[c]])
                    .collect();
                for r in 0..rows {
                    let row = &x[r * k + c0..r * k + c1];
                    for (s, &v) in a.iter_mut().zip(row) {
                        let v = v as f64;
                        s[0] = s[0].max(v);
                        s[1] = s[1].min(v);
                        s[2] = s[2].max(v.abs());
                        s[3] += v;
                        s[4] += v.abs();
                    }
                }
                (c0, a)
            })
            .collect();
        for (c0, a) in acc {
            for (j, s) in a.into_iter().enumerate() {
                let c = c0 + j;
                self.max[c] = s[0];
                self.min[c] = s[1];
                self.absmax[c] = s[2];
                self.sum[c] = s[3];
                self.abssum[c] = s[4];
            }
        }
        self.count += rows;
    }

    pub fn mean(&self) -> Vec<f64> {
        self.sum.iter().map(|s| s / self.count.max(1) as f64).collect()
    }

    /// Mean of |x| per channel: AWQ's activation statistic (`x_mean`).
    pub fn absmean(&self) -> Vec<f64> {
        self.abssum.iter().map(|s| s / self.count.max(1) as f64).collect()
    }

    /// First non-finite statistic, as (channel, value), if any.
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        self.abssum.iter().chain(&self.absmax).enumerate().find(|(_, v)| !v.is_finite()).map(|(i, v)| (i % self.channels(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_match_direct_computation() {
        let (t, k) = (37, 130);
        let x: Vec<f32> = (0..t * k).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
        let mut s = ChannelStats::new(k);
        s.update(&x[..10 * k]);
        s.update(&x[10 * k..]);
        for c in [0, 63, 64, 129] {
            let col: Vec<f64> = (0..t).map(|r| x[r * k + c] as f64).collect();
            assert_eq!(s.max[c], col.iter().cloned().fold(f64::MIN, f64::max));
            assert_eq!(s.min[c], col.iter().cloned().fold(f64::MAX, f64::min));
            let am: f64 = col.iter().map(|v| v.abs()).sum::<f64>() / t as f64;
            assert!((s.absmean()[c] - am).abs() < 1e-12);
            let m: f64 = col.iter().sum::<f64>() / t as f64;
            assert!((s.mean()[c] - m).abs() < 1e-12);
        }
        assert_eq!(s.count, t);
    }
}
