//! The naive reference the fast join is property-tested against.

use super::types::*;
use std::collections::BTreeMap;

/// One record of the naive reference: its input, offset and content.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefRecord {
    /// The record.
    pub input: JoinInput,
    /// Its offset in its input's partition.
    pub offset: i64,
}

/// A partial or complete triple in the reference: bins and record offsets (FA, FI, FD).
type RefTriple = ([Option<u32>; 3], [Option<i64>; 3]);
/// A trigger in the reference: client, kind, time, record, own value, triple source and bins.
type RefTrigger<'a> = (&'a str, Trigger, i64, RecordRef, i64, SzSource, [u32; 3]);

/// Naive as-of reference over one partition's complete input (no idleness, no repeats):
/// every trigger's event by scanning all records. O(n²). Late records (see
/// [`reference_outcomes`]) are left out.
pub fn reference_join(cfg: JoinConfig, records: &[(&str, RefRecord)]) -> Vec<JoinEvent> {
    reference_outcomes(cfg, records).0
}

/// The reference's events and its late records: a record is late when its event time is below
/// the largest event time of the records before it (by offset) in its own input, minus the
/// grace; it then takes no part in the join.
pub fn reference_outcomes(
    cfg: JoinConfig,
    records: &[(&str, RefRecord)],
) -> (Vec<JoinEvent>, Vec<RecordRef>) {
    let mut by_input: Vec<&(&str, RefRecord)> = records.iter().collect();
    by_input.sort_by_key(|(_, r)| (r.input.kind(), r.offset));
    let mut late = Vec::new();
    let mut max: [Option<i64>; 5] = [None; 5];
    for (_, r) in by_input {
        let k = r.input.kind() as usize;
        let t = r.input.event_time_ms();
        if max[k].is_some_and(|m| t < m.saturating_sub(cfg.grace_ms)) {
            late.push(RecordRef {
                input: r.input.kind(),
                offset: r.offset,
            });
        } else {
            max[k] = Some(max[k].map_or(t, |m| m.max(t)));
        }
    }
    let kept: Vec<(&str, RefRecord)> = records
        .iter()
        .filter(|(_, r)| {
            !late.contains(&RecordRef {
                input: r.input.kind(),
                offset: r.offset,
            })
        })
        .copied()
        .collect();
    (join_in_time(cfg, &kept), late)
}

fn join_in_time(cfg: JoinConfig, records: &[(&str, RefRecord)]) -> Vec<JoinEvent> {
    let s = cfg.max_staleness_ms;
    let mut out = Vec::new();
    // Complete triples: (client, t, source) → bins and FA offset.
    let mut triples: BTreeMap<(&str, i64, SzSource), RefTriple> = BTreeMap::new();
    for &(c, r) in records {
        if let JoinInput::Feature {
            kind,
            bin,
            event_time_ms,
            source,
        } = r.input
        {
            let e = triples.entry((c, event_time_ms, source)).or_default();
            e.0[kind.idx() - 2] = Some(bin);
            e.1[kind.idx() - 2] = Some(r.offset);
        }
    }
    // Latest value of `pick` for client `c` with time ≤ t, by (t, tie).
    let latest_reading = |c: &str, want: InputKind, t: i64| -> Option<(i64, i64)> {
        records
            .iter()
            .filter(|(rc, r)| *rc == c && r.input.kind() == want && r.input.event_time_ms() <= t)
            .map(|(_, r)| match r.input {
                JoinInput::Sx {
                    value,
                    event_time_ms,
                }
                | JoinInput::Sy {
                    value,
                    event_time_ms,
                } => ((event_time_ms, r.offset), value),
                JoinInput::Feature { .. } => ((i64::MIN, 0), 0),
            })
            .max_by_key(|(k, _)| *k)
            .map(|((et, _), v)| (et, v))
    };
    let latest_triple = |c: &str, t: i64| {
        triples
            .iter()
            .filter(|((rc, et, _), (b, _))| *rc == c && *et <= t && b.iter().all(Option::is_some))
            .max_by_key(|((_, et, src), _)| (*et, *src))
            .map(|((_, et, src), (b, _))| (*et, *src, b.map(|x| x.unwrap_or(0))))
    };
    let classify = |e: Option<i64>, t: i64, missing, stale| match e {
        Some(et) if et >= t.saturating_sub(s) => Ok(()),
        Some(et) if et >= t.saturating_sub(2 * s) => Err(stale),
        _ => Err(missing),
    };
    let mut triggers: Vec<RefTrigger<'_>> = Vec::new();
    let mut triple_records: BTreeMap<(&str, i64, SzSource), [Option<RecordRef>; 3]> =
        BTreeMap::new();
    for (key, (_, o)) in &triples {
        triple_records.insert(
            *key,
            [InputKind::Fa, InputKind::Fi, InputKind::Fd]
                .into_iter()
                .zip(o)
                .map(|(input, o)| o.map(|offset| RecordRef { input, offset }))
                .collect::<Vec<_>>()
                .try_into()
                .unwrap_or([None; 3]),
        );
    }
    for &(c, r) in records {
        match r.input {
            JoinInput::Sx {
                value,
                event_time_ms,
            } => triggers.push((
                c,
                Trigger::Sx,
                event_time_ms,
                RecordRef {
                    input: InputKind::Sx,
                    offset: r.offset,
                },
                value,
                SzSource {
                    partition: -1,
                    offset: -1,
                    index: 0,
                },
                [0; 3],
            )),
            JoinInput::Sy {
                value,
                event_time_ms,
            } => triggers.push((
                c,
                Trigger::Sy,
                event_time_ms,
                RecordRef {
                    input: InputKind::Sy,
                    offset: r.offset,
                },
                value,
                SzSource {
                    partition: -1,
                    offset: -1,
                    index: 0,
                },
                [0; 3],
            )),
            JoinInput::Feature { .. } => {}
        }
    }
    for ((c, t, src), (b, o)) in &triples {
        match (b, o[0]) {
            ([Some(a), Some(i), Some(d)], Some(fa)) => triggers.push((
                c,
                Trigger::Features,
                *t,
                RecordRef {
                    input: InputKind::Fa,
                    offset: fa,
                },
                0,
                *src,
                [*a, *i, *d],
            )),
            _ => out.push(JoinEvent::IncompleteTriple {
                client: (*c).into(),
                event_time_ms: *t,
                source: *src,
                present: o
                    .iter()
                    .zip([InputKind::Fa, InputKind::Fi, InputKind::Fd])
                    .filter_map(|(o, input)| o.map(|offset| RecordRef { input, offset }))
                    .collect(),
            }),
        }
    }
    for (c, trig, t, record, value, src, bins) in triggers {
        let sx = if trig == Trigger::Sx {
            Some((t, value))
        } else {
            latest_reading(c, InputKind::Sx, t)
        };
        let sy = if trig == Trigger::Sy {
            Some((t, value))
        } else {
            latest_reading(c, InputKind::Sy, t)
        };
        let tr = if trig == Trigger::Features {
            Some((t, src, bins))
        } else {
            latest_triple(c, t)
        };
        let verdict = classify(
            sx.map(|x| x.0),
            t,
            SkipReason::MissingSx,
            SkipReason::StaleSx,
        )
        .and_then(|()| {
            classify(
                sy.map(|x| x.0),
                t,
                SkipReason::MissingSy,
                SkipReason::StaleSy,
            )
        })
        .and_then(|()| {
            classify(
                tr.map(|x| x.0),
                t,
                SkipReason::MissingFeatures,
                SkipReason::StaleFeatures,
            )
        });
        let ingest = 0;
        let records = if trig == Trigger::Features {
            triple_records
                .get(&(c, t, src))
                .copied()
                .unwrap_or([None; 3])
        } else {
            [Some(record), None, None]
        };
        out.push(match (verdict, sx, sy, tr) {
            (Ok(()), Some(sx), Some(sy), Some(tr)) => JoinEvent::Prediction(JoinOutput {
                client: c.into(),
                vector: [
                    sx.1,
                    sy.1,
                    i64::from(tr.2[0]),
                    i64::from(tr.2[1]),
                    i64::from(tr.2[2]),
                ],
                trigger: trig,
                event_time_ms: t,
                record,
                records,
                triple_source: tr.1,
                ingest_time_ms: ingest,
            }),
            (v, ..) => JoinEvent::Skipped {
                client: c.into(),
                trigger: trig,
                event_time_ms: t,
                record,
                records,
                reason: v.err().unwrap_or(SkipReason::MissingSx),
            },
        });
    }
    out
}
