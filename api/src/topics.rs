//! The nine topic roles of a pipeline and their names.
//!
//! ```text
//!   SX ─┐                                  ┌─▶ FA ─┐
//!   SY ─┼──────────────────────────────────┼─▶ FI ─┼─▶ join-predict ─▶ predictions
//!   SZ ─┴─▶ window-processor ──────────────┴─▶ FD ─┘
//!              └─▶ late, dead-letter ◀─────────────── (both processors)
//! ```
//!
//! A role has three spellings, all defined here once: the processors' stand-alone default topic
//! name (`SX`, …, `dead-letter`), the suffix of the operator's default `<pipeline>.<suffix>`
//! (`sx`, …, `dead-letter`), and the environment variable that carries the resolved name to the
//! processors (`SF_TOPIC_SX`, …, `SF_TOPIC_DLQ`).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::env;

/// A pipeline topic, by role.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TopicRole {
    /// SX.
    Sx,
    /// SY.
    Sy,
    /// SZ.
    Sz,
    /// FA.
    Fa,
    /// FI.
    Fi,
    /// FD.
    Fd,
    /// Predictions.
    Predictions,
    /// Dead letters.
    DeadLetter,
    /// Late records.
    Late,
}

impl TopicRole {
    /// Every role, inputs first: `sx sy sz fa fi fd predictions dead-letter late`.
    pub const ALL: [TopicRole; 9] = [
        TopicRole::Sx,
        TopicRole::Sy,
        TopicRole::Sz,
        TopicRole::Fa,
        TopicRole::Fi,
        TopicRole::Fd,
        TopicRole::Predictions,
        TopicRole::DeadLetter,
        TopicRole::Late,
    ];

    /// The join's five co-partitioned inputs: SX, SY, FA, FI, FD.
    pub const JOIN_INPUTS: [TopicRole; 5] = [
        TopicRole::Sx,
        TopicRole::Sy,
        TopicRole::Fa,
        TopicRole::Fi,
        TopicRole::Fd,
    ];

    /// The pipeline's inputs, written by its sensors (upstream): SX, SY, SZ.
    pub const INPUTS: [TopicRole; 3] = [TopicRole::Sx, TopicRole::Sy, TopicRole::Sz];

    /// The window-processor's input: SZ.
    pub const WINDOW_INPUTS: [TopicRole; 1] = [TopicRole::Sz];

    /// The role's name in the CRD (`sink.topics` items) and the suffix of the operator's default
    /// topic name `<pipeline>.<suffix>`: `sx`, …, `predictions`, `dead-letter`, `late`.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicRole::Sx => "sx",
            TopicRole::Sy => "sy",
            TopicRole::Sz => "sz",
            TopicRole::Fa => "fa",
            TopicRole::Fi => "fi",
            TopicRole::Fd => "fd",
            TopicRole::Predictions => "predictions",
            TopicRole::DeadLetter => "dead-letter",
            TopicRole::Late => "late",
        }
    }

    /// The field of `spec.topics` that names this role's topic (camelCase).
    pub fn spec_field(self) -> &'static str {
        match self {
            TopicRole::DeadLetter => "deadLetter",
            other => other.as_str(),
        }
    }

    /// The processors' default topic name when run stand-alone (no operator, no flag):
    /// `SX SY SZ FA FI FD predictions dead-letter late`.
    pub fn default_name(self) -> &'static str {
        match self {
            TopicRole::Sx => "SX",
            TopicRole::Sy => "SY",
            TopicRole::Sz => "SZ",
            TopicRole::Fa => "FA",
            TopicRole::Fi => "FI",
            TopicRole::Fd => "FD",
            TopicRole::Predictions => "predictions",
            TopicRole::DeadLetter => "dead-letter",
            TopicRole::Late => "late",
        }
    }

    /// The environment variable that carries this role's topic name to every processor.
    pub fn env(self) -> &'static str {
        match self {
            TopicRole::Sx => env::TOPIC_SX,
            TopicRole::Sy => env::TOPIC_SY,
            TopicRole::Sz => env::TOPIC_SZ,
            TopicRole::Fa => env::TOPIC_FA,
            TopicRole::Fi => env::TOPIC_FI,
            TopicRole::Fd => env::TOPIC_FD,
            TopicRole::Predictions => env::TOPIC_PREDICTIONS,
            TopicRole::DeadLetter => env::TOPIC_DLQ,
            TopicRole::Late => env::TOPIC_LATE,
        }
    }
}

impl fmt::Display for TopicRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TopicRole {
    type Err = crate::ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                crate::ParseEnumError::new("topic role", s, &Self::ALL.map(Self::as_str))
            })
    }
}

/// The resolved topic name of each of the nine roles.
///
/// [`Default`] gives the processors' stand-alone names ([`TopicRole::default_name`]);
/// `TopicNames::for_pipeline` (beside [`crate::crd::TopicsSpec`]) gives the operator's `<pipeline>.<suffix>` names with the
/// spec's explicit names taking precedence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TopicNames {
    /// Categorical sensor X readings (join input).
    pub sx: String,
    /// Categorical sensor Y readings (join input).
    pub sy: String,
    /// Continuous sensor Z readings (window input).
    pub sz: String,
    /// Window mean features (window output, join input).
    pub fa: String,
    /// Window integral features (window output, join input).
    pub fi: String,
    /// Window derivative features (window output, join input).
    pub fd: String,
    /// Model predictions (join output).
    pub predictions: String,
    /// Malformed or unprocessable records, with the reason in headers.
    pub dead_letter: String,
    /// Readings older than the watermark (reason `late`).
    pub late: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self::from_fn(|r| r.default_name().to_owned())
    }
}

impl TopicNames {
    /// Names from a function of the role.
    pub fn from_fn(mut name: impl FnMut(TopicRole) -> String) -> Self {
        Self {
            sx: name(TopicRole::Sx),
            sy: name(TopicRole::Sy),
            sz: name(TopicRole::Sz),
            fa: name(TopicRole::Fa),
            fi: name(TopicRole::Fi),
            fd: name(TopicRole::Fd),
            predictions: name(TopicRole::Predictions),
            dead_letter: name(TopicRole::DeadLetter),
            late: name(TopicRole::Late),
        }
    }

    /// The topic of `role`.
    pub fn get(&self, role: TopicRole) -> &str {
        match role {
            TopicRole::Sx => &self.sx,
            TopicRole::Sy => &self.sy,
            TopicRole::Sz => &self.sz,
            TopicRole::Fa => &self.fa,
            TopicRole::Fi => &self.fi,
            TopicRole::Fd => &self.fd,
            TopicRole::Predictions => &self.predictions,
            TopicRole::DeadLetter => &self.dead_letter,
            TopicRole::Late => &self.late,
        }
    }

    /// All nine names in [`TopicRole::ALL`] order.
    pub fn all(&self) -> [&str; 9] {
        TopicRole::ALL.map(|r| self.get(r))
    }

    /// Every role with its name, in [`TopicRole::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (TopicRole, &str)> {
        TopicRole::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    /// The join's five co-partitioned inputs: SX, SY, FA, FI, FD.
    pub fn join_inputs(&self) -> [&str; 5] {
        TopicRole::JOIN_INPUTS.map(|r| self.get(r))
    }

    /// The window-processor's input: SZ (its consumer lag is summed over this).
    pub fn window_inputs(&self) -> [&str; 1] {
        TopicRole::WINDOW_INPUTS.map(|r| self.get(r))
    }

    /// The role whose topic is `topic`, if any.
    pub fn role_of(&self, topic: &str) -> Option<TopicRole> {
        self.iter().find(|(_, t)| *t == topic).map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names_and_serde() {
        for r in TopicRole::ALL {
            assert_eq!(r.as_str().parse::<TopicRole>(), Ok(r));
            let json = serde_json::to_value(r).expect("json");
            assert_eq!(json, r.as_str());
        }
        assert!("dead_letter".parse::<TopicRole>().is_err());
    }
}
