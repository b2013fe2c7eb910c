//! The `predict` step: a feature vector in, a probability in [0, 1] out.
//!
//! The input is the integer vector `[SX, SY, FA bin, FI bin, FD bin]`. [`FeatureVector::new`]
//! checks its length and ranges; [`Predictor`] has two implementations:
//! - [`Logistic`] (the default): `p = 1 / (1 + e^−(w·x + b))` with weights and bias from
//!   configuration;
//! - [`RandomModel`]: the tutorial's dummy, uniform in [0, 1], reproducible: the draw is
//!   SplitMix64 of (seed, the input's identity), so a redelivered input gets the same
//!   probability on any replica.

use serde::{Deserialize, Serialize};

/// Length of every feature vector.
pub const FEATURES: usize = 5;
/// Names of the vector's components, in order.
pub const FEATURE_NAMES: [&str; FEATURES] = ["SX", "SY", "FA", "FI", "FD"];

/// An invalid model input or configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The vector does not have 5 components.
    #[error("feature vector must have {FEATURES} components [SX, SY, FA, FI, FD], got {0}")]
    WrongLength(usize),
    /// A component is outside its allowed range.
    #[error("feature {name} = {value} is outside [{min}, {max}]")]
    OutOfRange {
        /// Component name (SX, SY, FA, FI, FD).
        name: &'static str,
        /// The value given.
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// Weights/bias/threshold are not usable.
    #[error("invalid model configuration: {0}")]
    Config(String),
}

/// Allowed ranges of the categorical components SX and SY (bins are always 0..=9).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureBounds {
    /// Inclusive range for SX and SY values (default 0..=100 000, e.g. Wh per minute).
    pub categorical_min: i64,
    /// Inclusive upper bound for SX and SY.
    pub categorical_max: i64,
}

impl Default for FeatureBounds {
    fn default() -> Self {
        Self {
            categorical_min: 0,
            categorical_max: 100_000,
        }
    }
}

/// A validated feature vector `[SX, SY, FA, FI, FD]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureVector(pub [i64; FEATURES]);

impl FeatureVector {
    /// Validates a raw vector.
    ///
    /// # Errors
    /// [`ModelError::WrongLength`] unless 5 components; [`ModelError::OutOfRange`] when SX/SY
    /// are outside `bounds` or a bin is outside 0..=9.
    pub fn new(raw: &[i64], bounds: &FeatureBounds) -> Result<Self, ModelError> {
        let v: [i64; FEATURES] = raw
            .try_into()
            .map_err(|_| ModelError::WrongLength(raw.len()))?;
        for (i, &x) in v.iter().enumerate() {
            let (min, max) = if i < 2 {
                (bounds.categorical_min, bounds.categorical_max)
            } else {
                (0, i64::from(crate::binning::BINS) - 1)
            };
            if x < min || x > max {
                return Err(ModelError::OutOfRange {
                    name: FEATURE_NAMES[i],
                    value: x,
                    min,
                    max,
                });
            }
        }
        Ok(Self(v))
    }
}

/// A model: maps a validated vector to a probability.
pub trait Predictor: Send + Sync {
    /// Model name written into predictions (e.g. `logistic`).
    fn name(&self) -> &str;
    /// Model version written into predictions.
    fn version(&self) -> &str;
    /// Probability in [0, 1]. `identity` identifies the input record (used by models that
    /// need reproducible randomness; deterministic models ignore it).
    fn predict(&self, x: &FeatureVector, identity: u64) -> f64;
}

/// Logistic regression with configured weights and bias.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    weights: [f64; FEATURES],
    bias: f64,
    version: String,
}

/// Default logistic weights for `[SX, SY, FA, FI, FD]`, tuned to the household dataset with the
/// default bin ranges: an alert needs a high mean power (FA) and energy (FI).
pub const DEFAULT_WEIGHTS: [f64; FEATURES] = [0.01, 0.01, 1.0, 0.3, 0.2];
/// Default logistic bias.
pub const DEFAULT_BIAS: f64 = -6.0;

impl Logistic {
    /// A logistic model.
    ///
    /// # Errors
    /// [`ModelError::Config`] unless there are 5 finite weights and a finite bias.
    pub fn new(weights: &[f64], bias: f64) -> Result<Self, ModelError> {
        let weights: [f64; FEATURES] = weights.try_into().map_err(|_| {
            ModelError::Config(format!(
                "logistic model needs {FEATURES} weights, got {}",
                weights.len()
            ))
        })?;
        if !weights.iter().all(|w| w.is_finite()) || !bias.is_finite() {
            return Err(ModelError::Config(
                "weights and bias must be finite numbers".into(),
            ));
        }
        let version = format!(
            "w={}",
            weights
                .iter()
                .chain(std::iter::once(&bias))
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(Self {
            weights,
            bias,
            version,
        })
    }
}

impl Default for Logistic {
    fn default() -> Self {
        Self::new(&DEFAULT_WEIGHTS, DEFAULT_BIAS).expect("default weights are valid")
    }
}

impl Predictor for Logistic {
    fn name(&self) -> &str {
        "logistic"
    }
    fn version(&self) -> &str {
        &self.version
    }
    fn predict(&self, x: &FeatureVector, _identity: u64) -> f64 {
        let z = self
            .weights
            .iter()
            .zip(x.0.iter())
            .map(|(w, &xi)| w * xi as f64)
            .sum::<f64>()
            + self.bias;
        1.0 / (1.0 + (-z).exp())
    }
}

/// The tutorial's dummy model: uniform in [0, 1], reproducible from the seed and the input.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomModel {
    seed: u64,
    version: String,
}

impl RandomModel {
    /// A dummy model with this seed.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            version: format!("seed={seed}"),
        }
    }
}

/// SplitMix64's finaliser (Steele, Lea & Flood, 2014): a well-mixed 64-bit hash.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Predictor for RandomModel {
    fn name(&self) -> &str {
        "random"
    }
    fn version(&self) -> &str {
        &self.version
    }
    fn predict(&self, _x: &FeatureVector, identity: u64) -> f64 {
        // 53 high bits → a double in [0, 1).
        (splitmix64(self.seed ^ splitmix64(identity)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Which model to run, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum ModelConfig {
    /// Logistic regression (default).
    Logistic {
        /// 5 weights for [SX, SY, FA, FI, FD].
        weights: Vec<f64>,
        /// Bias.
        bias: f64,
    },
    /// Uniform random, seeded.
    Random {
        /// Seed.
        seed: u64,
    },
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::Logistic {
            weights: DEFAULT_WEIGHTS.to_vec(),
            bias: DEFAULT_BIAS,
        }
    }
}

impl ModelConfig {
    /// Builds the model.
    ///
    /// # Errors
    /// [`ModelError::Config`] for invalid logistic parameters.
    pub fn build(&self) -> Result<Box<dyn Predictor>, ModelError> {
        Ok(match self {
            ModelConfig::Logistic { weights, bias } => Box::new(Logistic::new(weights, *bias)?),
            ModelConfig::Random { seed } => Box::new(RandomModel::new(*seed)),
        })
    }
}

/// Validates an alert threshold.
///
/// # Errors
/// [`ModelError::Config`] unless `0 ≤ threshold ≤ 1`.
pub fn check_threshold(threshold: f64) -> Result<f64, ModelError> {
    if (0.0..=1.0).contains(&threshold) {
        Ok(threshold)
    } else {
        Err(ModelError::Config(format!(
            "threshold must be in [0, 1], got {threshold}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vector_validation_has_clear_errors() {
        let b = FeatureBounds::default();
        assert_eq!(
            FeatureVector::new(&[1, 2, 3, 4], &b),
            Err(ModelError::WrongLength(4))
        );
        let e = FeatureVector::new(&[1, 2, 3, 10, 4], &b).unwrap_err();
        assert_eq!(e.to_string(), "feature FI = 10 is outside [0, 9]");
        let e = FeatureVector::new(&[-1, 2, 3, 1, 4], &b).unwrap_err();
        assert!(matches!(e, ModelError::OutOfRange { name: "SX", .. }));
        assert!(FeatureVector::new(&[0, 100_000, 0, 9, 9], &b).is_ok());
    }

    #[test]
    fn logistic_matches_the_formula() {
        let m = Logistic::new(&[1.0, 0.0, 0.0, 0.0, 0.0], -2.0).unwrap();
        let p = m.predict(&FeatureVector([2, 0, 0, 0, 0]), 0);
        assert_eq!(p, 0.5);
        let p = m.predict(&FeatureVector([3, 0, 0, 0, 0]), 0);
        assert!((p - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-15);
        assert!(Logistic::new(&[1.0; 4], 0.0).is_err());
        assert!(Logistic::new(&[f64::NAN; 5], 0.0).is_err());
    }

    #[test]
    fn default_model_alerts_on_high_power_only() {
        let m = Logistic::default();
        assert!(m.predict(&FeatureVector([0, 0, 2, 1, 5]), 0) < 0.1);
        assert!(m.predict(&FeatureVector([0, 0, 7, 6, 5]), 0) > 0.9);
    }

    #[test]
    fn threshold_bounds() {
        assert!(check_threshold(0.0).is_ok() && check_threshold(1.0).is_ok());
        assert!(check_threshold(1.01).is_err() && check_threshold(f64::NAN).is_err());
    }

    proptest! {
        #[test]
        fn random_model_is_reproducible_and_in_unit_interval(seed in any::<u64>(), id in any::<u64>()) {
            let m = RandomModel::new(seed);
            let x = FeatureVector([0; 5]);
            let p = m.predict(&x, id);
            prop_assert!((0.0..1.0).contains(&p));
            prop_assert_eq!(p, RandomModel::new(seed).predict(&x, id));
        }

        #[test]
        fn logistic_is_a_probability(w in prop::array::uniform5(-10.0f64..10.0), b in -50.0f64..50.0, x in prop::array::uniform5(0i64..10)) {
            let p = Logistic::new(&w, b).unwrap().predict(&FeatureVector(x), 0);
            prop_assert!((0.0..=1.0).contains(&p));
        }
    }

    #[test]
    fn random_model_is_roughly_uniform() {
        let m = RandomModel::new(42);
        let x = FeatureVector([0; 5]);
        let mut buckets = [0u32; 10];
        for id in 0..100_000u64 {
            buckets[(m.predict(&x, id) * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((9_000..11_000).contains(&b), "{buckets:?}");
        }
    }
}
