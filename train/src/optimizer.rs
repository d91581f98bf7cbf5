//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, single-tensor path), and
//! `clip_grad_norm` as `torch.nn.utils.clip_grad_norm_`.
//!
//! One step, for every parameter `p` with gradient `g`, at step `t` (counted from 1):
//!
//! ```text
//! p ← p · (1 − lr·wd)                           decoupled weight decay
//! m ← m + (1 − β₁)·(g − m)                      torch's lerp_, the same as β₁m + (1−β₁)g
//! v ← β₂·v + (1 − β₂)·g²
//! p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! State is `f32`, as PyTorch keeps it for `f32` parameters: `m` and `v` per parameter and
//! one step counter for all of them (PyTorch keeps one per parameter; they are always equal
//! when every parameter is stepped every time, which is how training uses it). The bias
//! corrections are computed in `f64` and applied as `f32` scalars, like Python floats applied
//! to `f32` tensors. Parameters come in a fixed order with fixed names and sizes, given when
//! the optimizer is made; every step checks them, and a mismatch changes nothing.

use adaptc_runtime::ops::optim::AdamWCoefficients;
use adaptc_runtime::{Storage, Tensor};

use crate::error::{Result, TrainError};

/// AdamW's hyper-parameters except the learning rate, which each step is given (it comes
/// from the [`Schedule`](crate::Schedule)). Defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// `(β₁, β₂)`, default `(0.9, 0.999)`.
    pub betas: (f32, f32),
    /// Default `1e-8`.
    pub eps: f32,
    /// Decoupled weight decay, default `0.01`.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> AdamWConfig {
        AdamWConfig { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWConfig {
    /// Checks the ranges PyTorch checks: `0 ≤ β < 1`, `ε ≥ 0`, `wd ≥ 0`, all finite.
    pub fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        for (name, b) in [("beta1", b1), ("beta2", b2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(TrainError::Config(format!("AdamW {name} must be in [0, 1), got {b}")));
            }
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(TrainError::Config(format!("AdamW eps must be ≥ 0, got {}", self.eps)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(TrainError::Config(format!("AdamW weight decay must be ≥ 0, got {}", self.weight_decay)));
        }
        Ok(())
    }
}

/// One parameter's moments.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    pub name: String,
    /// First moment (`exp_avg`).
    pub m: Vec<f32>,
    /// Second moment (`exp_avg_sq`).
    pub v: Vec<f32>,
}

/// One parameter's values and gradient for [`AdamW::step`].
pub struct ParamGrad<'a> {
    pub name: &'a str,
    pub value: &'a mut [f32],
    pub grad: &'a [f32],
}

/// The optimizer: configuration, step counter, moments in parameter order.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    moments: Vec<Moments>,
}

impl AdamW {
    /// A fresh optimizer (step 0, zero moments) for parameters `(name, element count)` in the
    /// order every step will give them.
    pub fn new<'a>(config: AdamWConfig, params: impl IntoIterator<Item = (&'a str, usize)>) -> Result<AdamW> {
        config.validate()?;
        let moments: Vec<Moments> = params
            .into_iter()
            .map(|(name, n)| Moments { name: name.to_string(), m: vec![0.0; n], v: vec![0.0; n] })
            .collect();
        check_unique(&moments)?;
        Ok(AdamW { config, step: 0, moments })
    }

    /// An optimizer restored from a checkpoint: `step` steps taken, these moments.
    pub fn from_state(config: AdamWConfig, step: u64, moments: Vec<Moments>) -> Result<AdamW> {
        config.validate()?;
        check_unique(&moments)?;
        if let Some(bad) = moments.iter().find(|mo| mo.m.len() != mo.v.len()) {
            return Err(TrainError::Optimizer(format!(
                "`{}`: first moment has {} values, second moment {}",
                bad.name,
                bad.m.len(),
                bad.v.len()
            )));
        }
        Ok(AdamW { config, step, moments })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The moments, in parameter order.
    pub fn moments(&self) -> &[Moments] {
        &self.moments
    }

    /// One AdamW step at learning rate `lr`. `params` must be the optimizer's parameters, in
    /// order, with matching sizes; otherwise nothing changes and the error names the first
    /// mismatch.
    pub fn step(&mut self, lr: f32, params: &mut [ParamGrad<'_>]) -> Result<()> {
        self.check(params.iter().map(|p| (p.name, p.value.len(), p.grad.len())))?;
        if !lr.is_finite() || lr < 0.0 {
            return Err(TrainError::Optimizer(format!("learning rate must be finite and ≥ 0, got {lr}")));
        }
        let k = AdamWCoefficients::from_array(self.next_coefficients(lr)?);
        for (p, mo) in params.iter_mut().zip(&mut self.moments) {
            k.update(p.value, p.grad, &mut mo.m, &mut mo.v);
        }
        Ok(())
    }

    /// Counts one step made elsewhere (in the training graph, `append-adamw`) and returns its
    /// scalars in the order of the graph's `adamw.coefficients` input: `[decay, 1−β₁, β₂,
    /// 1−β₂, step_size, √bc₂, ε]`; the moments are then the graph's to update (see
    /// [`AdamW::set_moments`]).
    pub fn next_coefficients(&mut self, lr: f32) -> Result<[f32; 7]> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(TrainError::Optimizer(format!("learning rate must be finite and ≥ 0, got {lr}")));
        }
        self.step += 1;
        Ok(self.coefficients(lr).to_array())
    }

    /// Replaces the moments with values computed elsewhere (read back from the training
    /// graph's state): same names, order and sizes, or an error and nothing changes.
    pub fn set_moments(&mut self, moments: Vec<Moments>) -> Result<()> {
        self.check(moments.iter().map(|m| (m.name.as_str(), m.m.len(), m.v.len())))?;
        self.moments = moments;
        Ok(())
    }

    /// [`AdamW::step`] on runtime tensors: `params[i]` and `grads[i]` are `(name, f32 tensor)`
    /// pairs of the same name and shape.
    pub fn step_tensors(&mut self, lr: f32, params: &mut [(String, Tensor)], grads: &[(String, Tensor)]) -> Result<()> {
        if params.len() != grads.len() {
            return Err(TrainError::Optimizer(format!("{} parameters but {} gradients", params.len(), grads.len())));
        }
        let mut grad_slices = Vec::with_capacity(grads.len());
        for ((pn, p), (gn, g)) in params.iter().zip(grads) {
            if pn != gn || p.shape() != g.shape() {
                return Err(TrainError::Optimizer(format!(
                    "parameter `{pn}` {:?} is paired with gradient `{gn}` {:?}",
                    p.shape(),
                    g.shape()
                )));
            }
            f32_slice(p, pn)?;
            grad_slices.push(f32_slice(g, gn)?);
        }
        self.check(params.iter().zip(&grad_slices).map(|((n, p), g)| (n.as_str(), p.numel(), g.len())))?;
        let mut values: Vec<(Vec<usize>, Vec<f32>)> = params.iter_mut().map(|(_, t)| take_f32(t)).collect();
        let mut slots: Vec<ParamGrad<'_>> = params
            .iter()
            .zip(values.iter_mut())
            .zip(&grad_slices)
            .map(|(((name, _), (_, value)), grad)| ParamGrad { name, value, grad })
            .collect();
        let result = self.step(lr, &mut slots);
        drop(slots);
        for ((_, t), (shape, v)) in params.iter_mut().zip(values) {
            *t = Tensor::from_vec(shape, v)?;
        }
        result
    }

    fn check<'a>(&self, given: impl ExactSizeIterator<Item = (&'a str, usize, usize)>) -> Result<()> {
        if given.len() != self.moments.len() {
            return Err(TrainError::Optimizer(format!(
                "{} parameters given, the optimizer holds {} ({})",
                given.len(),
                self.moments.len(),
                self.moments.iter().map(|m| format!("`{}`", m.name)).collect::<Vec<_>>().join(", ")
            )));
        }
        for (i, ((name, n, g), mo)) in given.zip(&self.moments).enumerate() {
            if name != mo.name {
                return Err(TrainError::Optimizer(format!(
                    "parameter {i} is `{name}`, the optimizer expects `{}` there",
                    mo.name
                )));
            }
            if n != mo.m.len() || g != n {
                return Err(TrainError::Optimizer(format!(
                    "`{name}`: {n} values and {g} gradient values, the optimizer holds {}",
                    mo.m.len()
                )));
            }
        }
        Ok(())
    }

    fn coefficients(&self, lr: f32) -> AdamWCoefficients {
        let (b1, b2) = self.config.betas;
        // `self.step` fits an i32 for any real run; saturate rather than wrap beyond.
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let bc1 = 1.0 - f64::from(b1).powi(t);
        let bc2 = 1.0 - f64::from(b2).powi(t);
        AdamWCoefficients {
            decay: (1.0 - f64::from(lr) * f64::from(self.config.weight_decay)) as f32,
            one_minus_b1: (1.0 - f64::from(b1)) as f32,
            b2,
            one_minus_b2: (1.0 - f64::from(b2)) as f32,
            step_size: (f64::from(lr) / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: self.config.eps,
        }
    }
}

fn check_unique(moments: &[Moments]) -> Result<()> {
    let mut names: Vec<&str> = moments.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(TrainError::Optimizer(format!("parameter `{}` is given twice", w[0]))),
        None => Ok(()),
    }
}

/// The values of an f32 tensor, or an error naming it.
fn f32_slice<'t>(t: &'t Tensor, name: &str) -> Result<&'t [f32]> {
    t.as_slice::<f32>().ok_or_else(|| {
        TrainError::Optimizer(format!("`{name}` is {}, parameters and gradients must be float32", t.dtype()))
    })
}

/// Moves an f32 tensor's values out (leaving a scalar behind); the caller puts them back.
fn take_f32(t: &mut Tensor) -> (Vec<usize>, Vec<f32>) {
    let shape = t.shape().to_vec();
    match std::mem::replace(t, Tensor::scalar(0f32)).into_data() {
        Storage::F32(v) => (shape, v),
        // Callers check the element type first.
        _ => (shape, Vec::new()),
    }
}

/// Scales gradients so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (norm type 2): returns the norm *before* clipping, and
/// multiplies every gradient by `max_norm / (norm + 1e-6)` when that is below 1. The norm is
/// accumulated in `f64`. A non-finite norm (a NaN or infinite gradient) is returned and the
/// gradients are left as they are (PyTorch would turn them into NaNs); the caller decides
/// whether to skip the step.
pub fn clip_grad_norm<G: AsMut<[f32]>>(grads: &mut [G], max_norm: f32) -> f32 {
    let sum: f64 = grads.iter_mut().flat_map(|g| g.as_mut().iter()).map(|&x| f64::from(x) * f64::from(x)).sum();
    let norm = sum.sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if norm.is_finite() && coef < 1.0 {
        for g in grads.iter_mut() {
            for x in g.as_mut() {
                *x *= coef;
            }
        }
    }
    norm
}

/// [`clip_grad_norm`] on `(name, f32 tensor)` gradients.
pub fn clip_grad_norm_tensors(grads: &mut [(String, Tensor)], max_norm: f32) -> Result<f32> {
    for (name, g) in grads.iter() {
        f32_slice(g, name)?;
    }
    let mut values: Vec<(Vec<usize>, Vec<f32>)> = grads.iter_mut().map(|(_, t)| take_f32(t)).collect();
    let mut slices: Vec<&mut [f32]> = values.iter_mut().map(|(_, v)| v.as_mut_slice()).collect();
    let norm = clip_grad_norm(&mut slices, max_norm);
    for ((_, t), (shape, v)) in grads.iter_mut().zip(values) {
        *t = Tensor::from_vec(shape, v)?;
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "[{i}]: {x} vs {y}\n{a:?}\n{b:?}");
        }
    }

    #[test]
    fn first_step_has_the_closed_form() {
        // Step 1: m̂ = g, v̂ = g², so p₁ = p₀(1 − lr·wd) − lr·g/(|g| + ε).
        let (lr, wd) = (0.1f32, 0.5f32);
        let cfg = AdamWConfig { weight_decay: wd, ..AdamWConfig::default() };
        let mut opt = AdamW::new(cfg, [("w", 4)]).unwrap();
        let mut p = vec![1.0f32, -2.0, 0.5, 3.0];
        let g = [0.25f32, -4.0, 0.0, 1e-3];
        let want: Vec<f32> = p
            .iter()
            .zip(&g)
            .map(|(&p, &g)| {
                let (p, g) = (f64::from(p), f64::from(g));
                (p * (1.0 - 0.05) - 0.1 * g / (g.abs() + 1e-8)) as f32
            })
            .collect();
        opt.step(lr, &mut [ParamGrad { name: "w", value: &mut p, grad: &g }]).unwrap();
        close(&p, &want, 1e-6);
        assert_eq!(opt.step_count(), 1);
        close(&opt.moments()[0].m, &g.map(|x| 0.1 * x), 1e-6);
        close(&opt.moments()[0].v, &g.map(|x| 0.001 * x * x), 1e-6);
    }

    #[test]
    fn constant_gradient_steps_by_lr() {
        // With a constant gradient, m̂ = g and v̂ = g² at every step: each step moves by lr
        // (no weight decay).
        let cfg = AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() };
        let mut opt = AdamW::new(cfg, [("w", 1)]).unwrap();
        let mut p = vec![0.0f32];
        for _ in 0..50 {
            opt.step(0.01, &mut [ParamGrad { name: "w", value: &mut p, grad: &[2.0] }]).unwrap();
        }
        close(&p, &[-0.5], 1e-5);
    }

    /// Values from PyTorch 2.15 (`torch.optim.AdamW(lr=0.01, betas=(0.9, 0.999), eps=1e-8,
    /// weight_decay=0.1, foreach=False)`, three steps):
    ///
    /// ```python
    /// p = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    /// q = torch.nn.Parameter(torch.tensor([[0.1, 0.2], [-0.3, 0.4]]))
    /// opt = torch.optim.AdamW([p, q], lr=0.01, weight_decay=0.1, foreach=False)
    /// for gp, gq in GRADS:  # below
    ///     p.grad, q.grad = torch.tensor(gp), torch.tensor(gq); opt.step()
    /// print(p, q, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])
    /// ```
    #[test]
    #[allow(clippy::excessive_precision)] // PyTorch's numbers as printed
    fn matches_pytorch_over_three_steps() {
        let grads: [([f32; 4], [f32; 4]); 3] = [
            ([0.1, -0.2, 0.3, 0.0], [1.0, -1.0, 0.5, 0.25]),
            ([-0.05, 0.4, 0.3, 1e-3], [0.0, 2.0, -0.5, 0.75]),
            ([0.2, 0.1, -0.6, -1e-3], [0.3, -0.2, 0.1, 0.0]),
        ];
        let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let mut opt = AdamW::new(cfg, [("p", 4), ("q", 4)]).unwrap();
        let mut params = vec![
            ("p".to_string(), Tensor::from_vec(vec![4], vec![0.5f32, -1.0, 2.0, 0.0]).unwrap()),
            ("q".to_string(), Tensor::from_vec(vec![2, 2], vec![0.1f32, 0.2, -0.3, 0.4]).unwrap()),
        ];
        for (gp, gq) in grads {
            let g = vec![
                ("p".to_string(), Tensor::from_vec(vec![4], gp.to_vec()).unwrap()),
                ("q".to_string(), Tensor::from_vec(vec![2, 2], gq.to_vec()).unwrap()),
            ];
            opt.step_tensors(0.01, &mut params, &g).unwrap();
        }
        let p = params[0].1.as_slice::<f32>().unwrap();
        let q = params[1].1.as_slice::<f32>().unwrap();
        assert_eq!(params[1].1.shape(), &[2, 2]);
        close(p, &[4.792796671e-01, -9.948369861e-01, 1.974792600e+00, -6.982004270e-03], 1e-6);
        close(q, &[7.622838765e-02, 2.034739703e-01, -3.090474606e-01, 3.725580871e-01], 1e-6);
        close(&opt.moments()[0].m, &[2.360000089e-02, 2.980000153e-02, -8.699997328e-03, -9.999996109e-06], 1e-6);
        close(&opt.moments()[0].v, &[5.247751324e-05, 2.097600518e-04, 5.397301284e-04, 1.999000299e-09], 1e-6);
        assert_eq!(opt.step_count(), 3);

        // Restored from its state, an optimizer continues identically.
        let mut copy = AdamW::from_state(cfg, opt.step_count(), opt.moments().to_vec()).unwrap();
        let mut a = params.clone();
        let g = vec![
            ("p".to_string(), Tensor::from_vec(vec![4], vec![0.1f32; 4]).unwrap()),
            ("q".to_string(), Tensor::from_vec(vec![2, 2], vec![-0.1f32; 4]).unwrap()),
        ];
        opt.step_tensors(0.01, &mut params, &g).unwrap();
        copy.step_tensors(0.01, &mut a, &g).unwrap();
        assert_eq!(params, a);
        assert_eq!(opt, copy);
    }

    #[test]
    fn mismatches_change_nothing() {
        let mut opt = AdamW::new(AdamWConfig::default(), [("a", 2), ("b", 1)]).unwrap();
        let before = opt.clone();
        let (mut a, mut b) = (vec![1.0f32, 2.0], vec![3.0f32]);
        let e = opt
            .step(
                0.1,
                &mut [
                    ParamGrad { name: "b", value: &mut b, grad: &[1.0] },
                    ParamGrad { name: "a", value: &mut a, grad: &[1.0, 1.0] },
                ],
            )
            .unwrap_err()
            .to_string();
        assert_eq!(e, "optimizer: parameter 0 is `b`, the optimizer expects `a` there");
        let e = opt
            .step(
                0.1,
                &mut [
                    ParamGrad { name: "a", value: &mut a, grad: &[1.0] },
                    ParamGrad { name: "b", value: &mut b, grad: &[1.0] },
                ],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a`: 2 values and 1 gradient values"), "{e}");
        let e = opt.step(0.1, &mut [ParamGrad { name: "a", value: &mut a, grad: &[1.0, 1.0] }]).unwrap_err();
        assert!(e.to_string().contains("1 parameters given, the optimizer holds 2 (`a`, `b`)"), "{e}");
        assert_eq!(opt, before);
        assert_eq!((a, b), (vec![1.0, 2.0], vec![3.0]));

        let mut params = vec![("a".to_string(), Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap())];
        let grads = params.clone();
        let mut one = AdamW::new(AdamWConfig::default(), [("a", 2)]).unwrap();
        let e = one.step_tensors(0.1, &mut params, &grads).unwrap_err().to_string();
        assert!(e.contains("`a` is i64, parameters and gradients must be float32"), "{e}");
        assert!(AdamW::new(AdamWConfig::default(), [("a", 1), ("a", 2)]).is_err());
        let bad = AdamWConfig { betas: (1.0, 0.999), ..AdamWConfig::default() };
        assert!(AdamW::new(bad, [("a", 1)]).unwrap_err().to_string().contains("beta1 must be in [0, 1)"));
    }

    /// PyTorch: grads [3, 0, 4] and [12, 0] (norm 13), `clip_grad_norm_(…, 1.0)` returns 13 and
    /// leaves [0.2307692170, 0, 0.3076922894] and [0.9230768681, 0].
    #[test]
    #[allow(clippy::excessive_precision)] // PyTorch's numbers as printed
    fn clipping_matches_pytorch() {
        let mut grads = vec![vec![3.0f32, 0.0, 4.0], vec![12.0f32, 0.0]];
        let norm = clip_grad_norm(&mut grads, 1.0);
        assert_eq!(norm, 13.0);
        close(&grads[0], &[2.307692170e-01, 0.0, 3.076922894e-01], 1e-7);
        close(&grads[1], &[9.230768681e-01, 0.0], 1e-7);
        // Below the limit: unchanged.
        let mut small = vec![vec![0.3f32, 0.4]];
        assert!((clip_grad_norm(&mut small, 1.0) - 0.5).abs() < 1e-7);
        assert_eq!(small, vec![vec![0.3f32, 0.4]]);
        // Non-finite: reported, gradients left alone.
        let mut nan = vec![vec![f32::NAN, 1.0]];
        assert!(clip_grad_norm(&mut nan, 1.0).is_nan());
        assert_eq!(nan[0][1], 1.0);
        let mut t = vec![("g".to_string(), Tensor::from_vec(vec![2], vec![6.0f32, 8.0]).unwrap())];
        assert_eq!(clip_grad_norm_tensors(&mut t, 5.0).unwrap(), 10.0);
        close(t[0].1.as_slice::<f32>().unwrap(), &[3.0, 4.0], 1e-6);
    }
}
