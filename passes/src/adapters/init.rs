//! Initial values of LoRA adapter weights (`insert-lora{init=… seed=…}`), reproducing PEFT's
//! `init_lora_weights` choices:
//!
//! | `init`     | `A [r, in]`                         | `B [out, r]`                 | base weight          |
//! |------------|-------------------------------------|------------------------------|----------------------|
//! | `default`  | Kaiming-uniform (a=√5): U(±1/√in)    | 0                            | unchanged            |
//! | `gaussian` | N(0, (1/r)²)                         | 0                            | unchanged            |
//! | `random`   | U(±1/√in)                            | U(±1/√r) (PyTorch `Linear`)  | unchanged            |
//! | `pissa`    | diag(√(S_r/s))·V_rᵀ                  | U_r·diag(√(S_r/s))           | `W − s·BA`           |
//! | `olora`    | R[:r] of `W = QR`                    | Q[:, :r]                     | `W − s·BA`           |
//!
//! `default` and `gaussian` leave the output unchanged (B = 0); `pissa` and `olora` move the
//! top-r part of `W` into the adapter and keep the rest (the residual) as the base, so the
//! output is unchanged up to rounding; `random` moves the output (PEFT's
//! `init_lora_weights=False`, for tests). PiSSA follows PEFT's `pissa_init` (`W = U S Vᵀ`,
//! `S_r ← S_r / s`, `A = diag(√S_r) V_rᵀ`, `B = U_r diag(√S_r)`, so `s·BA` is exactly the top-r
//! part); OLoRA follows PEFT's `olora_init` (`Q, R = qr(W)`, `A = R[:r]`, `B = Q[:, :r]`, no
//! division by `s`). Both need `r ≤ min(in, out)` and compute in `f64`; the residual is formed
//! from the `f32` values of A and B actually stored, so `W_res + s·BA` reproduces `W` to `f32`
//! rounding.
//!
//! Randomness: a [`SplitMix64`] stream per layer, seeded from the pass's `seed` and the
//! layer's module path ([`layer_seed`]), so a layer's values do not depend on which other
//! layers were selected. Uniform values use the top 53 bits; normal values use Box–Muller.
//! (PyTorch's generator is not reproduced: values differ from PEFT's for the same seed, the
//! distributions are the same.)

use super::linalg::{qr, svd, Mat};

/// `init` choices, as the pass option lists them.
pub const INIT_CHOICES: &[&str] = &["default", "gaussian", "pissa", "olora", "random"];

/// How to initialise A and B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraInit {
    Default,
    Gaussian,
    Pissa,
    Olora,
    Random,
}

impl LoraInit {
    pub fn parse(text: &str) -> Option<LoraInit> {
        Some(match text {
            "default" => LoraInit::Default,
            "gaussian" => LoraInit::Gaussian,
            "pissa" => LoraInit::Pissa,
            "olora" => LoraInit::Olora,
            "random" => LoraInit::Random,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            LoraInit::Default => "default",
            LoraInit::Gaussian => "gaussian",
            LoraInit::Pissa => "pissa",
            LoraInit::Olora => "olora",
            LoraInit::Random => "random",
        }
    }

    /// Whether the base weight's values are needed (and replaced by a residual).
    pub fn replaces_base(self) -> bool {
        matches!(self, LoraInit::Pissa | LoraInit::Olora)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit counter passed through a bijective mixer.
/// Tiny, fast, and every seed gives a full-period, well-mixed stream — enough for weight
/// initialisation, not for cryptography.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`: the top 53 bits as a fraction.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[-bound, bound)`.
    pub fn symmetric(&mut self, bound: f64) -> f64 {
        (2.0 * self.uniform() - 1.0) * bound
    }

    /// Standard normal by Box–Muller (`u1` in `(0, 1]`, so the logarithm is finite); one value
    /// per two uniforms, the sine half is discarded to keep the stream simple.
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The seed of one layer's stream: FNV-1a of the module path, mixed with the pass's seed.
pub fn layer_seed(seed: u64, module: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in module.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    SplitMix64::new(seed ^ h.rotate_left(17)).next_u64()
}

/// Initial adapter weights of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraWeights {
    /// `A [r, in]`, row-major.
    pub a: Vec<f32>,
    /// `B [out, r]`, row-major.
    pub b: Vec<f32>,
    /// The new base weight `[out, in]` (`pissa`, `olora`).
    pub residual: Option<Mat>,
}

/// Computes the initial A and B of a layer with `out × in` weight `w` (`[out, in]`, needed for
/// `pissa` and `olora` only), rank `r` and scaling `scale`.
pub fn init_lora(
    init: LoraInit,
    rng: &mut SplitMix64,
    (out, inp, r): (usize, usize, usize),
    scale: f32,
    w: Option<&Mat>,
) -> Result<LoraWeights, String> {
    let kaiming = |rng: &mut SplitMix64, n: usize, fan_in: usize| -> Vec<f32> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        (0..n).map(|_| rng.symmetric(bound) as f32).collect()
    };
    match init {
        LoraInit::Default => Ok(LoraWeights { a: kaiming(rng, r * inp, inp), b: vec![0.0; out * r], residual: None }),
        LoraInit::Gaussian => {
            let std = 1.0 / r as f64;
            let a = (0..r * inp).map(|_| (rng.normal() * std) as f32).collect();
            Ok(LoraWeights { a, b: vec![0.0; out * r], residual: None })
        }
        LoraInit::Random => {
            let a = kaiming(rng, r * inp, inp);
            let b = kaiming(rng, out * r, r);
            Ok(LoraWeights { a, b, residual: None })
        }
        LoraInit::Pissa | LoraInit::Olora => {
            let w = w.ok_or("the base weight is needed")?;
            let k = out.min(inp);
            if r > k {
                return Err(format!(
                    "init={} needs rank ≤ min(in, out) = {k}, got rank {r} for a [{out}, {inp}] weight",
                    init.name()
                ));
            }
            let (a, b) = if init == LoraInit::Pissa { pissa(w, r, scale)? } else { olora(w, r)? };
            let (am, bm) = (Mat::from_f32(r, inp, &a), Mat::from_f32(out, r, &b));
            let residual = w.add_scaled(-f64::from(scale), &bm.matmul(&am));
            Ok(LoraWeights { a, b, residual: Some(residual) })
        }
    }
}

/// PEFT's `pissa_init`: `A = diag(√(S_r/s)) V_rᵀ`, `B = U_r diag(√(S_r/s))`.
fn pissa(w: &Mat, r: usize, scale: f32) -> Result<(Vec<f32>, Vec<f32>), String> {
    let d = svd(w)?;
    let k = d.s.len();
    let root: Vec<f64> = d.s[..r].iter().map(|&s| (s / f64::from(scale)).sqrt()).collect();
    let mut a = Vec::with_capacity(r * w.cols);
    for (i, &rt) in root.iter().enumerate() {
        a.extend(d.vt.data[i * w.cols..(i + 1) * w.cols].iter().map(|&v| (rt * v) as f32));
    }
    let mut b = Vec::with_capacity(w.rows * r);
    for row in 0..w.rows {
        b.extend(root.iter().enumerate().map(|(i, &rt)| (d.u.data[row * k + i] * rt) as f32));
    }
    Ok((a, b))
}

/// PEFT's `olora_init`: `Q, R = qr(W)`, `A = R[:r]`, `B = Q[:, :r]`.
fn olora(w: &Mat, r: usize) -> Result<(Vec<f32>, Vec<f32>), String> {
    let (q, rr) = qr(w)?;
    let a = rr.data[..r * rr.cols].iter().map(|&v| v as f32).collect();
    let mut b = Vec::with_capacity(q.rows * r);
    for row in 0..q.rows {
        b.extend(q.data[row * q.cols..row * q.cols + r].iter().map(|&v| v as f32));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_well_spread() {
        // Reference values of SplitMix64 from seed 0 (as in Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(42);
        let xs: Vec<f64> = (0..20_000).map(|_| r.uniform()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let ns: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let m = ns.iter().sum::<f64>() / ns.len() as f64;
        let var = ns.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / ns.len() as f64;
        assert!(m.abs() < 0.03 && (var - 1.0).abs() < 0.05, "{m} {var}");
        assert_ne!(layer_seed(0, "a.q"), layer_seed(0, "a.k"));
        assert_ne!(layer_seed(0, "a.q"), layer_seed(1, "a.q"));
    }

    #[test]
    fn kaiming_bounds_and_zero_b() {
        let mut rng = SplitMix64::new(7);
        let w = init_lora(LoraInit::Default, &mut rng, (6, 16, 4), 2.0, None).unwrap();
        assert!(w.a.iter().all(|v| v.abs() <= 0.25) && w.a.iter().any(|v| v.abs() > 0.2));
        assert!(w.b.iter().all(|&v| v == 0.0));
        let w = init_lora(LoraInit::Random, &mut rng, (6, 16, 4), 2.0, None).unwrap();
        assert!(w.b.iter().all(|v| v.abs() <= 0.5) && w.b.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn pissa_and_olora_keep_w_and_check_rank() {
        let (out, inp) = (5, 4);
        let w = Mat { rows: out, cols: inp, data: (0..20).map(|i| ((i * 37 % 11) as f64) / 7.0 - 0.6).collect() };
        for init in [LoraInit::Pissa, LoraInit::Olora] {
            let mut rng = SplitMix64::new(0);
            let lw = init_lora(init, &mut rng, (out, inp, 2), 0.5, Some(&w)).unwrap();
            let ba = Mat::from_f32(out, 2, &lw.b).matmul(&Mat::from_f32(2, inp, &lw.a));
            let back = lw.residual.as_ref().unwrap().add_scaled(0.5, &ba);
            assert!(back.data.iter().zip(&w.data).all(|(x, y)| (x - y).abs() < 1e-12));
            // At full rank PiSSA leaves ~0; OLoRA (no division by s, as PEFT) leaves (1 − s)·W.
            let full = init_lora(init, &mut rng, (out, inp, 4), 0.5, Some(&w)).unwrap();
            let res = full.residual.unwrap();
            let keep = if init == LoraInit::Pissa { 0.0 } else { 0.5 };
            assert!(res.data.iter().zip(&w.data).all(|(v, x)| (v - keep * x).abs() < 1e-5), "{init:?}");
            let e = init_lora(init, &mut rng, (out, inp, 5), 0.5, Some(&w)).unwrap_err();
            assert!(e.contains("rank ≤ min(in, out) = 4"), "{e}");
        }
    }
}
