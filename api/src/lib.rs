//! The contract between the SensorFlow operator and its processors, with no I/O:
//!
//! ```text
//!                      sensorflow-api
//!   crd (SensorPipeline) ─┐   topics (9 roles, names)   env (variable names)
//!                         ▼            │                       │
//!   operator: validate ─▶ settings::{Common,Window,Join,Sink}Settings ─▶ env ─▶ ConfigMaps
//!                                                                             │ envFrom
//!   processors: clap `env = sensorflow_api::env::…` ◀─────────────────────────┘
//! ```
//!
//! - [`crd`]: the `SensorPipeline` custom resource (`sensorflow.io/v1alpha1`) and its CEL rules.
//! - [`topics`]: the nine topic roles, their default names and the resolved [`TopicNames`].
//! - [`env`]: every environment variable name the processors read, defined once.
//! - [`settings`]: the processor settings as typed structs that render their environment.
//!
//! The enums of the CRD that travel as strings (`security.protocol`, the watermark scope, …)
//! convert both ways with `as_str`/[`std::fmt::Display`] and [`std::str::FromStr`], spelled as
//! in the CRD and as the processors parse them.
//!
//! Dependencies are serde, schemars, kube-core (+ kube-derive) and k8s-openapi only: no client,
//! no async runtime, no Kafka client, so a CLI or a test can use the types without them.

pub mod crd;
pub mod env;
pub mod processors;
pub mod settings;
pub mod topics;

use std::fmt;

pub use crd::{
    Aggregate, DeletionPolicy, DeliveryGuarantee, FeatureAggregates, LogFormat, ModelKind,
    PullPolicy, SaslMechanism, ScalingMode, SecurityProtocol, SensorPipeline, SensorPipelineSpec,
    SensorPipelineStatus, WatermarkScope, WindowEmit, WindowKind, WindowTime, WireFormat,
};
pub use topics::{TopicNames, TopicRole};

/// A string that names none of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseEnumError {
    what: &'static str,
    got: String,
    expected: Vec<&'static str>,
}

impl ParseEnumError {
    /// `got` is not a `what`; the valid spellings are `expected`.
    pub fn new(what: &'static str, got: &str, expected: &[&'static str]) -> Self {
        Self {
            what,
            got: got.to_owned(),
            expected: expected.to_vec(),
        }
    }
}

impl fmt::Display for ParseEnumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a {}: expected one of {}",
            self.got,
            self.what,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for ParseEnumError {}

/// `as_str`, `ALL`, [`fmt::Display`] and [`std::str::FromStr`] for a fieldless enum, with the
/// spellings given (which must match its serde names; tested in `crd`).
macro_rules! string_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            /// The spelling in the CRD, in the environment and on the command line.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $s),+
                }
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = $crate::ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($ty::$variant),)+
                    _ => Err($crate::ParseEnumError::new($what, s, &[$($s),+])),
                }
            }
        }
    };
}

string_enum!(SecurityProtocol, "security protocol", {
    Plaintext => "PLAINTEXT", Ssl => "SSL", SaslPlaintext => "SASL_PLAINTEXT", SaslSsl => "SASL_SSL",
});
string_enum!(SaslMechanism, "SASL mechanism", {
    Plain => "PLAIN", ScramSha256 => "SCRAM-SHA-256", ScramSha512 => "SCRAM-SHA-512",
});
string_enum!(WatermarkScope, "watermark scope", { Partition => "partition", Client => "client" });
string_enum!(WindowKind, "window kind", {
    Sliding => "Sliding", Tumbling => "Tumbling", Hopping => "Hopping", Global => "Global",
});
string_enum!(WindowEmit, "window emission", { PerRecord => "PerRecord", Final => "Final" });
string_enum!(WindowTime, "window time", {
    EventTime => "EventTime", ProcessingTime => "ProcessingTime",
});
string_enum!(Aggregate, "aggregate", {
    Count => "Count", Sum => "Sum", Mean => "Mean", Min => "Min", Max => "Max",
    Integral => "Integral", Derivative => "Derivative",
});
string_enum!(ModelKind, "model kind", { Logistic => "logistic", Random => "random" });
string_enum!(LogFormat, "log format", { Text => "text", Json => "json" });
string_enum!(PullPolicy, "image pull policy", {
    Always => "Always", IfNotPresent => "IfNotPresent", Never => "Never",
});
string_enum!(ScalingMode, "scaling mode", { Planner => "Planner", External => "External" });
string_enum!(DeliveryGuarantee, "delivery guarantee", {
    AtLeastOnce => "AtLeastOnce", ExactlyOnce => "ExactlyOnce",
});
string_enum!(DeletionPolicy, "deletion policy", { Retain => "Retain", Delete => "Delete" });
string_enum!(WireFormat, "wire format", { Plain => "plain", Confluent => "confluent" });
