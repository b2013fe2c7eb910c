//! The join of SX, SY and the FA/FI/FD triple by client key.
//!
//! ```text
//!   SX ─┐                      latest SX ─┐
//!   SY ─┼─► JoinState(client) ─ latest SY ─┼─► [SX, SY, FA, FI, FD] on every event
//!   FA ─┤      partial triples by          │
//!   FI ─┤      (SZ partition, offset) ─────┘ (a triple completes when all three arrive)
//!   FD ─┘
//! ```
//!
//! Per client the state keeps the latest SX and SY values and the latest complete triple
//! (latest by the SZ reading's event time, then offset). FA, FI and FD of one SZ reading arrive
//! on three topics in any order; they are matched by the SZ reading's (partition, offset) in a
//! per-client buffer of partial triples, kept sorted by that source so a lookup is a binary
//! search (each feature topic delivers a client's records in source order). Every event — an SX reading, an SY reading, or
//! a triple becoming complete — yields a [`JoinOutput`] once all five values are known. A
//! triple event uses the triple it completed; SX/SY events use the latest triple.
//!
//! Inputs on different topics arrive in whatever order the consumer fetches them, so which SX
//! is "latest" when a triple completes depends on that order (there is no cross-topic event-
//! time alignment). What is deterministic: every SX, SY and completed triple produces exactly
//! one output once the client's five values are known, and a triple output carries exactly
//! that triple's bins.

use rustc_hash::FxHashMap;
use std::collections::VecDeque;

use crate::proto::FeatureKind;

/// How many incomplete triples a client may hold before the oldest is dropped (and counted).
///
/// FA, FI and FD arrive on three topics that the consumer reads at different paces: catching
/// up on a backlog it may deliver thousands of one client's FA records before the matching FI
/// and FD, so this is a safety bound on memory (48 bytes a partial, ≈ 800 KB a client at the
/// limit), not a tuning knob: at one reading a minute it covers 11 days of skew.
pub const DEFAULT_MAX_PARTIALS: usize = 16_384;

/// A categorical reading held by the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    /// Integer value.
    pub value: i64,
    /// Event time, ms.
    pub event_time_ms: i64,
}

/// Identifies the SZ reading behind a triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SzSource {
    /// SZ partition.
    pub partition: i32,
    /// SZ offset.
    pub offset: i64,
}

/// A complete FA/FI/FD triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triple {
    /// FA bin, FI bin, FD bin.
    pub bins: [u32; 3],
    /// Event time of the SZ reading, ms.
    pub event_time_ms: i64,
    /// The SZ reading.
    pub source: SzSource,
}

#[derive(Debug, Clone, Copy)]
struct Partial {
    source: SzSource,
    event_time_ms: i64,
    bins: [Option<u32>; 3],
}

/// One input event of the join.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JoinInput {
    /// An SX reading (integer).
    Sx(Latest),
    /// An SY reading (integer).
    Sy(Latest),
    /// One feature of one SZ reading.
    Feature {
        /// FA, FI or FD.
        kind: FeatureKind,
        /// Bin 0..=9.
        bin: u32,
        /// Event time of the SZ reading, ms.
        event_time_ms: i64,
        /// The SZ reading.
        source: SzSource,
    },
}

/// What triggered an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An SX reading.
    Sx,
    /// An SY reading.
    Sy,
    /// A completed triple.
    Features,
}

/// A joined vector, ready for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOutput {
    /// `[SX, SY, FA bin, FI bin, FD bin]`.
    pub vector: [i64; 5],
    /// What triggered it.
    pub trigger: Trigger,
    /// Event time of the trigger, ms.
    pub event_time_ms: i64,
    /// The SZ reading behind the triple used.
    pub triple_source: SzSource,
}

#[derive(Debug, Default)]
struct ClientJoin {
    sx: Option<Latest>,
    sy: Option<Latest>,
    triple: Option<Triple>,
    partials: VecDeque<Partial>,
}

impl ClientJoin {
    fn output(
        &self,
        trigger: Trigger,
        event_time_ms: i64,
        triple: Option<Triple>,
    ) -> Option<JoinOutput> {
        let (sx, sy, tr) = (self.sx?, self.sy?, triple.or(self.triple)?);
        Some(JoinOutput {
            vector: [
                sx.value,
                sy.value,
                i64::from(tr.bins[0]),
                i64::from(tr.bins[1]),
                i64::from(tr.bins[2]),
            ],
            trigger,
            event_time_ms,
            triple_source: tr.source,
        })
    }
}

fn newer(a: &Triple, b: &Triple) -> bool {
    (a.event_time_ms, a.source) > (b.event_time_ms, b.source)
}

/// Join state for all clients of the partitions one join-predict instance owns.
#[derive(Debug)]
pub struct JoinState {
    clients: FxHashMap<Box<str>, ClientJoin>,
    max_partials: usize,
    dropped_partials: u64,
}

impl Default for JoinState {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PARTIALS)
    }
}

impl JoinState {
    /// Empty state; each client holds at most `max_partials` incomplete triples.
    pub fn new(max_partials: usize) -> Self {
        Self {
            clients: FxHashMap::default(),
            max_partials: max_partials.max(1),
            dropped_partials: 0,
        }
    }

    /// Applies one event; returns the vector to predict on, if all five values are known.
    pub fn apply(&mut self, client: &str, input: JoinInput) -> Option<JoinOutput> {
        let c = match self.clients.get_mut(client) {
            Some(c) => c,
            None => self.clients.entry(client.into()).or_default(),
        };
        match input {
            JoinInput::Sx(l) => {
                c.sx = Some(l);
                c.output(Trigger::Sx, l.event_time_ms, None)
            }
            JoinInput::Sy(l) => {
                c.sy = Some(l);
                c.output(Trigger::Sy, l.event_time_ms, None)
            }
            JoinInput::Feature {
                kind,
                bin,
                event_time_ms,
                source,
            } => {
                let slot = match kind {
                    FeatureKind::Fa => 0,
                    FeatureKind::Fi => 1,
                    FeatureKind::Fd => 2,
                    FeatureKind::Unspecified => return None,
                };
                let at = c.partials.partition_point(|p| p.source < source);
                let idx = if c.partials.get(at).is_some_and(|p| p.source == source) {
                    at
                } else {
                    let mut at = at;
                    if c.partials.len() >= self.max_partials {
                        c.partials.pop_front();
                        self.dropped_partials += 1;
                        at = at.saturating_sub(1);
                    }
                    c.partials.insert(
                        at,
                        Partial {
                            source,
                            event_time_ms,
                            bins: [None; 3],
                        },
                    );
                    at
                };
                c.partials[idx].bins[slot] = Some(bin);
                let p = c.partials[idx];
                let [Some(fa), Some(fi), Some(fd)] = p.bins else {
                    return None;
                };
                c.partials.remove(idx);
                let t = Triple {
                    bins: [fa, fi, fd],
                    event_time_ms: p.event_time_ms,
                    source: p.source,
                };
                if c.triple.is_none_or(|cur| newer(&t, &cur)) {
                    c.triple = Some(t);
                }
                c.output(Trigger::Features, t.event_time_ms, Some(t))
            }
        }
    }

    /// Drops all state (on partition revocation the runtime rebuilds from the topics).
    pub fn clear(&mut self) {
        self.clients.clear();
    }

    /// Clients with state.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Incomplete triples held across clients.
    pub fn partials(&self) -> usize {
        self.clients.values().map(|c| c.partials.len()).sum()
    }

    /// Incomplete triples dropped because a client exceeded the partial limit.
    pub fn dropped_partials(&self) -> u64 {
        self.dropped_partials
    }

    /// Forgets the clients for which `keep` is false (e.g. clients of revoked partitions).
    pub fn retain_clients(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.clients.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feat(kind: FeatureKind, bin: u32, offset: i64) -> JoinInput {
        JoinInput::Feature {
            kind,
            bin,
            event_time_ms: offset * 1000,
            source: SzSource {
                partition: 0,
                offset,
            },
        }
    }
    fn sx(v: i64) -> JoinInput {
        JoinInput::Sx(Latest {
            value: v,
            event_time_ms: 0,
        })
    }
    fn sy(v: i64) -> JoinInput {
        JoinInput::Sy(Latest {
            value: v,
            event_time_ms: 0,
        })
    }

    #[test]
    fn nothing_until_all_five_are_known() {
        let mut j = JoinState::default();
        assert_eq!(j.apply("c", sx(1)), None);
        assert_eq!(j.apply("c", feat(FeatureKind::Fa, 2, 7)), None);
        assert_eq!(j.apply("c", feat(FeatureKind::Fd, 4, 7)), None);
        assert_eq!(
            j.apply("c", feat(FeatureKind::Fi, 3, 7)),
            None,
            "SY still missing"
        );
        let out = j.apply("c", sy(9)).unwrap();
        assert_eq!(out.vector, [1, 9, 2, 3, 4]);
        assert_eq!(out.trigger, Trigger::Sy);
        let out = j.apply("c", sx(5)).unwrap();
        assert_eq!(out.vector, [5, 9, 2, 3, 4]);
        assert_eq!(
            out.triple_source,
            SzSource {
                partition: 0,
                offset: 7
            }
        );
    }

    #[test]
    fn interleaved_triples_match_by_source() {
        let mut j = JoinState::default();
        j.apply("c", sx(1));
        j.apply("c", sy(1));
        j.apply("c", feat(FeatureKind::Fa, 1, 10));
        j.apply("c", feat(FeatureKind::Fa, 5, 11));
        j.apply("c", feat(FeatureKind::Fi, 6, 11));
        let out = j.apply("c", feat(FeatureKind::Fd, 7, 11)).unwrap();
        assert_eq!(out.vector, [1, 1, 5, 6, 7]);
        j.apply("c", feat(FeatureKind::Fi, 2, 10));
        // The older triple completes late: its own event uses it, the latest stays 11.
        let out = j.apply("c", feat(FeatureKind::Fd, 3, 10)).unwrap();
        assert_eq!(out.vector, [1, 1, 1, 2, 3]);
        assert_eq!(j.apply("c", sx(2)).unwrap().vector, [2, 1, 5, 6, 7]);
        assert_eq!(j.partials(), 0);
    }

    #[test]
    fn clients_do_not_mix() {
        let mut j = JoinState::default();
        j.apply("a", sx(1));
        j.apply("a", sy(1));
        j.apply("b", feat(FeatureKind::Fa, 1, 1));
        j.apply("b", feat(FeatureKind::Fi, 1, 1));
        assert_eq!(j.apply("b", feat(FeatureKind::Fd, 1, 1)), None);
        assert_eq!(j.clients(), 2);
    }

    #[test]
    fn a_backlog_of_one_feature_topic_still_completes() {
        // The consumer delivers every FA before any FI or FD (catching up on a backlog).
        let mut j = JoinState::default();
        j.apply("c", sx(1));
        j.apply("c", sy(1));
        let n = 5_000;
        for o in 0..n {
            assert_eq!(j.apply("c", feat(FeatureKind::Fa, 1, o)), None);
        }
        for o in 0..n {
            assert_eq!(j.apply("c", feat(FeatureKind::Fi, 2, o)), None);
        }
        let done = (0..n)
            .filter_map(|o| j.apply("c", feat(FeatureKind::Fd, 3, o)))
            .count();
        assert_eq!(done, n as usize);
        assert_eq!((j.partials(), j.dropped_partials()), (0, 0));
    }

    #[test]
    fn partials_are_bounded() {
        let mut j = JoinState::new(4);
        for o in 0..10 {
            j.apply("c", feat(FeatureKind::Fa, 1, o));
        }
        assert_eq!(j.partials(), 4);
        assert_eq!(j.dropped_partials(), 6);
    }

    proptest! {
        /// Whatever the interleaving of the three feature topics, every SZ reading's triple
        /// completes exactly once, carrying its own bins.
        #[test]
        fn every_triple_completes_once_in_any_order(order in Just((0..30usize).flat_map(|o| (0..3).map(move |k| (o, k))).collect::<Vec<_>>()).prop_shuffle()) {
            let mut j = JoinState::new(1000);
            j.apply("c", sx(3));
            j.apply("c", sy(4));
            let mut seen = std::collections::BTreeMap::new();
            for (o, k) in order {
                let kind = [FeatureKind::Fa, FeatureKind::Fi, FeatureKind::Fd][k];
                let bin = ((o + k) % 10) as u32;
                if let Some(out) = j.apply("c", feat(kind, bin, o as i64)) {
                    prop_assert_eq!(out.trigger, Trigger::Features);
                    prop_assert_eq!(out.vector, [3, 4, (o % 10) as i64, ((o + 1) % 10) as i64, ((o + 2) % 10) as i64]);
                    prop_assert!(seen.insert(o, ()).is_none());
                }
            }
            prop_assert_eq!(seen.len(), 30);
            prop_assert_eq!(j.partials(), 0);
        }
    }
}
