//! How much to prune: the `ffn` fraction and the `heads` fraction or count, turned into a
//! number of channels or heads to remove from a group of a given width.

use crate::pass::PassError;

use super::PASS;

/// What to remove from each group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// A fraction in `(0, 1)` of the group's width, rounded to the nearest integer.
    Fraction(f64),
    /// A fixed number per group.
    Count(usize),
}

impl Amount {
    /// `ffn=f`: a fraction in `[0, 1)`; 0 turns FFN pruning off.
    pub fn ffn(value: f64) -> Result<Option<Amount>, PassError> {
        if !(0.0..1.0).contains(&value) {
            return Err(PassError::bad_option(
                PASS,
                "ffn",
                format!(
                    "{value} is not a fraction in [0, 1): give the share of intermediate channels to remove, e.g. 0.25"
                ),
            ));
        }
        Ok((value > 0.0).then_some(Amount::Fraction(value)))
    }

    /// `heads=h`: empty or 0 (off), a fraction in `(0, 1)` (`0.25`), or a whole number of heads
    /// per attention block (`2`).
    pub fn heads(text: &str) -> Result<Option<Amount>, PassError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let bad = |why: &str| PassError::bad_option(PASS, "heads", format!("`{text}` {why}"));
        if let Ok(n) = text.parse::<usize>() {
            return Ok((n > 0).then_some(Amount::Count(n)));
        }
        match text.parse::<f64>() {
            Ok(0.0) => Ok(None),
            Ok(f) if f > 0.0 && f < 1.0 => Ok(Some(Amount::Fraction(f))),
            Ok(_) => Err(bad("is neither a fraction in (0, 1) nor a whole number of heads")),
            Err(_) => Err(bad("is not a number: give a fraction (0.25) or a head count (2)")),
        }
    }

    /// How many of `width` units to remove: never all of them (one is always kept).
    pub fn removed(self, width: usize) -> usize {
        let n = match self {
            Amount::Fraction(f) => (f * width as f64).round() as usize,
            Amount::Count(n) => n,
        };
        n.min(width.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_round_and_keep_one() {
        assert_eq!(Amount::Fraction(0.25).removed(128), 32);
        assert_eq!(Amount::Fraction(0.3).removed(5), 2);
        assert_eq!(Amount::Fraction(0.99).removed(4), 3);
        assert_eq!(Amount::Count(9).removed(4), 3);
        assert_eq!(Amount::Fraction(0.1).removed(1), 0);
    }

    #[test]
    fn option_text() {
        assert_eq!(Amount::heads("2").unwrap(), Some(Amount::Count(2)));
        assert_eq!(Amount::heads("0.5").unwrap(), Some(Amount::Fraction(0.5)));
        assert_eq!(Amount::heads("").unwrap(), None);
        assert_eq!(Amount::heads("0").unwrap(), None);
        assert!(Amount::heads("1.5").is_err());
        assert!(Amount::heads("x").is_err());
        assert!(Amount::ffn(1.0).is_err());
        assert!(Amount::ffn(-0.1).is_err());
        assert_eq!(Amount::ffn(0.0).unwrap(), None);
    }
}
