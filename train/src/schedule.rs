//! Learning-rate schedules: linear warmup, then cosine, linear or no decay — the schedules of
//! Hugging Face `transformers` (`get_cosine_schedule_with_warmup`,
//! `get_linear_schedule_with_warmup`, `get_constant_schedule_with_warmup`), with a floor.
//!
//! For step `s` (0-based: the step about to be taken), peak `lr`, `warmup` steps, `total`
//! steps and floor `min = min_lr_ratio · lr`:
//!
//! ```text
//! s < warmup:        lr · s / warmup                    (0 at step 0, as transformers)
//! constant:          lr
//! cosine:            min + (lr − min) · ½(1 + cos(π · p))     p = (s − warmup) / (total − warmup)
//! linear:            min + (lr − min) · (1 − p)
//! s ≥ total:         min (decays), lr (constant)
//! ```

use std::fmt;
use std::str::FromStr;

use crate::error::{Result, TrainError};

/// What happens after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

impl Decay {
    pub const CHOICES: &'static [&'static str] = &["cosine", "linear", "constant"];

    pub fn name(self) -> &'static str {
        match self {
            Decay::Cosine => "cosine",
            Decay::Linear => "linear",
            Decay::Constant => "constant",
        }
    }
}

impl fmt::Display for Decay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Decay {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Decay> {
        match s {
            "cosine" => Ok(Decay::Cosine),
            "linear" => Ok(Decay::Linear),
            "constant" => Ok(Decay::Constant),
            _ => Err(TrainError::Config(format!(
                "unknown schedule `{s}`; expected one of {}",
                Decay::CHOICES.join(", ")
            ))),
        }
    }
}

/// A learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f32,
    pub warmup: u64,
    /// Steps of the whole run; decay ends here.
    pub total: u64,
    pub decay: Decay,
    /// The floor of the decay as a fraction of `lr` (0 decays to 0).
    pub min_lr_ratio: f32,
}

impl Schedule {
    /// A checked schedule: `lr` finite and ≥ 0, `min_lr_ratio` in `[0, 1]`, `warmup ≤ total`.
    pub fn new(lr: f32, warmup: u64, total: u64, decay: Decay, min_lr_ratio: f32) -> Result<Schedule> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(TrainError::Config(format!("learning rate must be finite and ≥ 0, got {lr}")));
        }
        if !(0.0..=1.0).contains(&min_lr_ratio) {
            return Err(TrainError::Config(format!("min_lr_ratio must be in [0, 1], got {min_lr_ratio}")));
        }
        if warmup > total {
            return Err(TrainError::Config(format!("warmup ({warmup} steps) is longer than the run ({total} steps)")));
        }
        Ok(Schedule { lr, warmup, total, decay, min_lr_ratio })
    }

    /// A constant learning rate, no warmup.
    pub fn constant(lr: f32) -> Schedule {
        Schedule { lr, warmup: 0, total: 0, decay: Decay::Constant, min_lr_ratio: 1.0 }
    }

    /// The learning rate for step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f32 {
        let lr = f64::from(self.lr);
        if step < self.warmup {
            return (lr * step as f64 / self.warmup as f64) as f32;
        }
        let min = lr * f64::from(self.min_lr_ratio);
        if step >= self.total && self.decay != Decay::Constant {
            return min as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let p = ((step - self.warmup) as f64 / span).min(1.0);
        let factor = match self.decay {
            Decay::Constant => return self.lr,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            Decay::Linear => 1.0 - p,
        };
        (min + (lr - min) * factor) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-7 * (1.0 + b.abs())
    }

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule::new(1.0, 10, 110, Decay::Cosine, 0.0).unwrap();
        assert_eq!(s.lr_at(0), 0.0);
        assert!(near(s.lr_at(5), 0.5));
        assert!(near(s.lr_at(9), 0.9));
        assert!(near(s.lr_at(10), 1.0));
        assert!(near(s.lr_at(60), 0.5));
        assert!(near(s.lr_at(35), (0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())) as f32));
        assert!(near(s.lr_at(110), 0.0));
        assert!(near(s.lr_at(500), 0.0));
        // Monotone after warmup.
        assert!((10..110).all(|i| s.lr_at(i) >= s.lr_at(i + 1)));
    }

    #[test]
    fn floors_and_linear() {
        let s = Schedule::new(2.0, 0, 100, Decay::Linear, 0.1).unwrap();
        assert!(near(s.lr_at(0), 2.0));
        assert!(near(s.lr_at(50), 0.2 + 1.8 * 0.5));
        assert!(near(s.lr_at(100), 0.2));
        assert!(near(s.lr_at(1000), 0.2));
        let c = Schedule::new(2.0, 0, 100, Decay::Cosine, 0.5).unwrap();
        assert!(near(c.lr_at(100), 1.0) && near(c.lr_at(50), 1.5));
    }

    #[test]
    fn constant_with_warmup_and_edge_cases() {
        let s = Schedule::new(3e-4, 4, 10, Decay::Constant, 0.0).unwrap();
        assert_eq!(s.lr_at(0), 0.0);
        assert!(near(s.lr_at(2), 1.5e-4));
        assert_eq!(s.lr_at(4), 3e-4);
        assert_eq!(s.lr_at(1_000_000), 3e-4);
        assert_eq!(Schedule::constant(0.1).lr_at(0), 0.1);
        // warmup == total: the peak, then the floor.
        let w = Schedule::new(1.0, 5, 5, Decay::Cosine, 0.0).unwrap();
        assert!(near(w.lr_at(4), 0.8) && w.lr_at(5) == 0.0);
        assert!(Schedule::new(1.0, 6, 5, Decay::Cosine, 0.0).unwrap_err().to_string().contains("warmup (6 steps)"));
        assert!(Schedule::new(f32::NAN, 0, 5, Decay::Cosine, 0.0).is_err());
        assert!(Schedule::new(1.0, 0, 5, Decay::Cosine, 1.5).is_err());
        assert_eq!("linear".parse::<Decay>().unwrap(), Decay::Linear);
        let e = "step".parse::<Decay>().unwrap_err().to_string();
        assert_eq!(e, "unknown schedule `step`; expected one of cosine, linear, constant");
    }
}
