//! A bit-exact copy of the parts of CPython's `random` module that calibration sampling uses.
//!
//! lmdeploy (and GPTQ, whose loaders it copied) draws calibration windows with
//! `random.seed(seed); random.randint(a, b)`. Reproducing its samples needs the same Mersenne
//! Twister (MT19937), the same seeding from a Python int (`init_by_array` over the int's 32-bit
//! words) and the same rejection sampling in `_randbelow`. Checked against CPython 3.11 outputs in
//! the tests below.

/// CPython's `random.Random`, restricted to non-negative integer seeds.
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

impl PyRandom {
    /// `random.seed(n)` for a non-negative int: `init_by_array` with the 32-bit words of `n`,
    /// least significant first (`n = 0` gives the key `[0]`).
    pub fn new(seed: u64) -> Self {
        let lo = seed as u32;
        let hi = (seed >> 32) as u32;
        let key: Vec<u32> = if hi == 0 { vec![lo] } else { vec![lo, hi] };
        let mut r = PyRandom { mt: [0; N], index: N };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] =
                (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000; // MSB is 1, assuring a non-zero initial state
    }

    /// One tempered 32-bit output (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for kk in 0..N {
                let y = (self.mt[kk] & UPPER_MASK) | (self.mt[(kk + 1) % N] & LOWER_MASK);
                let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
                self.mt[kk] = self.mt[(kk + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random.getrandbits(k)` for `k <= 64`: 32-bit words filled least significant first, the
    /// last (most significant) word keeping only its top bits.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits: k = {k} > 64 is not supported");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let lo = u64::from(self.next_u32());
        let hi = u64::from(self.next_u32() >> (64 - k));
        lo | (hi << 32)
    }

    /// `random._randbelow(n)` (the getrandbits variant): draw `bit_length(n)` bits until the value
    /// is below `n`. Note `bit_length(n)`, not `bit_length(n - 1)`: even `n = 1` consumes words.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.randint(a, b)`: uniform on the inclusive range `[a, b]` (`a <= b`).
    pub fn randint(&mut self, a: u64, b: u64) -> u64 {
        assert!(a <= b, "randint: empty range [{a}, {b}]");
        a + self.randbelow(b - a + 1)
    }

    /// `random.random()`: 53 random bits as a float in `[0, 1)`.
    pub fn random(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // python3 -c "import random; random.seed(0); print([random.randint(0, 1000) for _ in range(20)])"
    // (CPython 3.11.7)
    #[test]
    fn randint_seed0_matches_cpython() {
        let want = [
            864, 394, 776, 911, 430, 41, 265, 988, 523, 497, 414, 940, 802, 849, 310, 991, 488, 366, 597, 913,
        ];
        let mut r = PyRandom::new(0);
        let got: Vec<u64> = (0..20).map(|_| r.randint(0, 1000)).collect();
        assert_eq!(got, want);
    }

    // python3 -c "import random; random.seed(0); print([random.getrandbits(32) for _ in range(5)])"
    #[test]
    fn getrandbits32_seed0_matches_cpython() {
        let want = [3626764237u64, 1654615998, 3255389356, 3823568514, 1806341205];
        let mut r = PyRandom::new(0);
        let got: Vec<u64> = (0..5).map(|_| r.getrandbits(32)).collect();
        assert_eq!(got, want);
    }

    // python3 -c "import random; random.seed(0); print([repr(random.random()) for _ in range(5)])"
    #[test]
    fn random_seed0_matches_cpython() {
        let want = [
            0.8444218515250481,
            0.7579544029403025,
            0.420571580830845,
            0.25891675029296335,
            0.5112747213686085,
        ];
        let mut r = PyRandom::new(0);
        for w in want {
            assert_eq!(r.random().to_bits(), f64::to_bits(w));
        }
    }

    // Seeds wider than 32 bits are split into words, least significant first:
    // python3 -c "import random; random.seed(12345678901234567890); print([random.randint(0, 2**20) for _ in range(8)])"
    // python3 -c "import random; random.seed(2**32); print([random.randint(1, 6) for _ in range(10)])"
    #[test]
    fn wide_seeds_match_cpython() {
        let mut r = PyRandom::new(12_345_678_901_234_567_890);
        let got: Vec<u64> = (0..8).map(|_| r.randint(0, 1 << 20)).collect();
        assert_eq!(got, [938569, 685047, 742453, 481287, 1000031, 762729, 272470, 156069]);
        let mut r = PyRandom::new(1 << 32);
        let got: Vec<u64> = (0..10).map(|_| r.randint(1, 6)).collect();
        assert_eq!(got, [1, 3, 4, 1, 1, 5, 3, 5, 4, 1]);
    }

    // python3 -c "import random; random.seed(42); print([random.getrandbits(k) for k in (1,7,31,33,64)])"
    #[test]
    fn getrandbits_widths_match_cpython() {
        let mut r = PyRandom::new(42);
        let got: Vec<u64> = [1, 7, 31, 33, 64].iter().map(|&k| r.getrandbits(k)).collect();
        assert_eq!(got, [1, 14, 53710184, 3184935163, 4117511471858006928]);
    }

    // Rejection sampling with a power-of-two range (n = 5 -> 3 bits, 3/8 rejected):
    // python3 -c "import random; random.seed(7); print([random.randint(0, 4) for _ in range(16)])"
    // And n = 1 still consumes words (1 bit, rejected when it is 1):
    // python3 -c "import random; random.seed(0); print([random.randint(5,5) for _ in range(3)], random.getrandbits(32))"
    #[test]
    fn rejection_sampling_matches_cpython() {
        let mut r = PyRandom::new(7);
        let got: Vec<u64> = (0..16).map(|_| r.randint(0, 4)).collect();
        assert_eq!(got, [2, 1, 3, 0, 0, 4, 0, 2, 4, 0, 4, 1, 0, 0, 3, 3]);
        let mut r = PyRandom::new(0);
        for _ in 0..3 {
            assert_eq!(r.randint(5, 5), 5);
        }
        assert_eq!(r.getrandbits(32), 1112038970);
    }
}
