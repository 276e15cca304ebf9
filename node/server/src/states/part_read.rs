//! Reads of part of a set or a map — membership, some fields, the count, a page — that read only
//! the records the part needs, whatever the collection's size.
//!
//! A count is the header's alone. A page reads the header and one bounded scan of part records
//! from one snapshot ([`Engine::get_and_scan`]). Point reads (members, fields) are separate gets:
//! they read the header before and after, and retry if a write came between (its version, new at
//! every write), so every answer is one state's. A collection stored whole (format 1) is read whole.

use meridian_client::proto::{MapPart, MapPartReply, SetPart, SetPartReply};
use meridian_crdt::{AwSet, OrMap, Value};

use super::{as_set, corrupt, decode, decode_part, header_of, kind_of, Kind, PartValue, Result, StateError};
use super::{SplitHeader, ASSEMBLY_ATTEMPTS};
use crate::layout::{self, StateRecord, Stored};
use crate::storage::{Engine, Space};

/// A part read ([`read_set_part`], [`read_map_part`]): the key's state without the collection's
/// parts (its presence, type and dependencies: what a causal read waits on) and the answer, `None`
/// when the key holds another type.
#[derive(Debug)]
pub struct PartRead<R> {
    /// The state; a collection's parts are left out.
    pub header: Stored,
    /// The answer, if the key holds the kind of collection asked about.
    pub reply: Option<R>,
}

/// How much one page may carry.
#[derive(Clone, Copy, Debug)]
pub struct PageBudget {
    /// At most this many members or fields, whatever the request asks.
    pub max_items: usize,
    /// Stop once the page's encoded items reach this many bytes (at least one is always returned).
    pub max_bytes: usize,
}

impl PageBudget {
    /// How many items a page asking for `limit` may hold (at least one).
    fn want(&self, limit: u32) -> usize {
        (limit as usize).clamp(1, self.max_items)
    }
}

/// Reads part of the set at `data_key`; `None` if nothing is stored.
pub fn read_set_part(
    engine: &dyn Engine,
    data_key: &[u8],
    part: &SetPart,
    budget: PageBudget,
) -> Result<Option<PartRead<SetPartReply>>> {
    let whole = |stored: &Stored| Ok(as_set(stored).map(|set| part_of_set(set, stored.entry.exists(), part, budget)));
    match part {
        SetPart::Count => {
            read_points(engine, data_key, Kind::Set, &[], whole, |header, _| Ok(SetPartReply::Count(header.present)))
        }
        SetPart::Contains(members) => {
            let names: Vec<&[u8]> = members.iter().map(Vec::as_slice).collect();
            read_points(engine, data_key, Kind::Set, &names, whole, |_, found| {
                Ok(SetPartReply::Contains(found.iter().map(Option::is_some).collect()))
            })
        }
        SetPart::Page { after, limit } => {
            let want = budget.want(*limit);
            read_page(engine, data_key, Kind::Set, after.as_deref(), want, whole, |parts| {
                let items = parts.into_iter().map(|(name, _)| {
                    let len = name.len();
                    (name.clone(), Some((name, len)))
                });
                let (members, next) = take_page(items, want, budget.max_bytes);
                Ok(SetPartReply::Page { members, next })
            })
        }
    }
}

/// Reads part of the map at `data_key`; `None` if nothing is stored.
pub fn read_map_part(
    engine: &dyn Engine,
    data_key: &[u8],
    part: &MapPart,
    budget: PageBudget,
) -> Result<Option<PartRead<MapPartReply>>> {
    let whole = |stored: &Stored| match stored.entry.body() {
        meridian_crdt::Body::Map(map) => Some(part_of_map(map, stored.entry.exists(), part, budget)),
        _ => None,
    };
    // A whole map's answer can fail only on a field that does not decode into a value.
    let whole = |stored: &Stored| whole(stored).transpose().map_err(|e| corrupt(layout::show_data_key(data_key), e));
    match part {
        MapPart::Count => {
            read_points(engine, data_key, Kind::Map, &[], whole, |header, _| Ok(MapPartReply::Count(header.present)))
        }
        MapPart::Fields(fields) => {
            let names: Vec<&[u8]> = fields.iter().map(String::as_bytes).collect();
            read_points(engine, data_key, Kind::Map, &names, whole, |_, found| {
                let values = found.into_iter().map(|value| field_value(value.as_ref())).collect::<Result<_>>()?;
                Ok(MapPartReply::Fields(values))
            })
        }
        MapPart::Page { after, limit } => {
            let want = budget.want(*limit);
            let after = after.as_ref().map(String::as_bytes);
            read_page(engine, data_key, Kind::Map, after, want, whole, |parts| {
                let mut items = Vec::with_capacity(parts.len());
                for (name, value) in parts {
                    let shown = match field_value(Some(&value))? {
                        Some(value) => {
                            let name = String::from_utf8(name.clone()).map_err(|e| corrupt("a map field's name", e))?;
                            let len = meridian_crdt::codec::encode(&(&name, &value)).len();
                            Some(((name, value), len))
                        }
                        None => None,
                    };
                    items.push((name, shown));
                }
                let (fields, next) = take_page(items.into_iter(), want, budget.max_bytes);
                let next = next.map(String::from_utf8).transpose().map_err(|e| corrupt("a map field's name", e))?;
                Ok(MapPartReply::Page { fields, next })
            })
        }
    }
}

/// What a field record shows a read: its value, `None` for a removed field.
fn field_value(part: Option<&PartValue>) -> Result<Option<Value>> {
    match part {
        Some(PartValue::Field(entry)) => entry.read().map_err(|e| corrupt("a map field", e)),
        _ => Ok(None),
    }
}

/// The part of a whole set a [`SetPart`] asks for (`exists`: whether the key exists; a deleted
/// key reads as an empty set).
pub fn part_of_set(set: &AwSet<Vec<u8>>, exists: bool, part: &SetPart, budget: PageBudget) -> SetPartReply {
    let empty = AwSet::default();
    let set = if exists { set } else { &empty };
    match part {
        SetPart::Count => SetPartReply::Count(set.len() as u64),
        SetPart::Contains(members) => SetPartReply::Contains(members.iter().map(|m| set.contains(m)).collect()),
        SetPart::Page { after, limit } => {
            let from = set.elements().filter(|m| after.as_ref().is_none_or(|after| *m > after));
            let items = from.map(|m| (m.clone(), Some((m.clone(), m.len()))));
            let (members, next) = take_page(items, budget.want(*limit), budget.max_bytes);
            SetPartReply::Page { members, next }
        }
    }
}

/// The part of a whole map a [`MapPart`] asks for (`exists`: whether the key exists; a deleted
/// key reads as an empty map).
pub fn part_of_map(
    map: &OrMap,
    exists: bool,
    part: &MapPart,
    budget: PageBudget,
) -> std::result::Result<MapPartReply, meridian_crdt::CrdtError> {
    let empty = OrMap::default();
    let map = if exists { map } else { &empty };
    Ok(match part {
        MapPart::Count => MapPartReply::Count(map.fields().filter(|(_, entry)| entry.exists()).count() as u64),
        MapPart::Fields(names) => MapPartReply::Fields(
            names
                .iter()
                .map(|name| map.field(name).map_or(Ok(None), meridian_crdt::Entry::read))
                .collect::<std::result::Result<_, _>>()?,
        ),
        MapPart::Page { after, limit } => {
            let mut items = Vec::new();
            for (name, entry) in map.fields().filter(|(name, _)| after.as_ref().is_none_or(|after| *name > after)) {
                let shown = entry.read()?.map(|value| {
                    let len = meridian_crdt::codec::encode(&(name, &value)).len();
                    ((name.clone(), value), len)
                });
                items.push((name.clone(), shown));
            }
            let want = budget.want(*limit);
            let (fields, next) = take_page(items.into_iter(), want, budget.max_bytes);
            MapPartReply::Page { fields, next }
        }
    })
}

/// A page from `items` (each a record's name, and what a read shows of it with its encoded size,
/// `None` for a record that shows nothing): at most `want` records are consumed, and no more once
/// the shown items reach `max_bytes` (at least one shown item is always taken). The cursor is the
/// last consumed record's name when any record remains.
fn take_page<N, T>(
    items: impl Iterator<Item = (N, Option<(T, usize)>)>,
    want: usize,
    max_bytes: usize,
) -> (Vec<T>, Option<N>) {
    let mut page = Vec::new();
    let (mut consumed, mut bytes, mut last) = (0usize, 0usize, None);
    for (name, shown) in items {
        let len = shown.as_ref().map_or(0, |(_, len)| *len);
        if consumed == want || (bytes + len > max_bytes && !page.is_empty()) {
            return (page, last);
        }
        consumed += 1;
        last = Some(name);
        if let Some((item, len)) = shown {
            bytes += len;
            page.push(item);
        }
    }
    (page, None)
}

/// Where a part read stands after reading the key's `Data` value.
enum Start<R> {
    /// Answered from the value alone (nothing stored, stored whole, another type, deleted).
    Answered(Option<PartRead<R>>),
    /// A collection of the kind asked about, kept per part: its parts are to be read.
    Split(SplitHeader),
}

fn start<R>(
    data_key: &[u8],
    bytes: Option<Vec<u8>>,
    kind: Kind,
    whole: &impl Fn(&Stored) -> Result<Option<R>>,
) -> Result<Start<R>> {
    let Some(bytes) = bytes else { return Ok(Start::Answered(None)) };
    Ok(match decode(data_key, &bytes)? {
        StateRecord::Whole(stored) => {
            Start::Answered(Some(PartRead { reply: whole(&stored)?, header: header_of(&stored) }))
        }
        StateRecord::Split(header) if kind_of(&header.stored) != Some(kind) => {
            Start::Answered(Some(PartRead { header: header.stored, reply: None }))
        }
        // A deleted collection answers as an empty one: its header holds no part.
        StateRecord::Split(header) if !header.stored.entry.exists() => {
            Start::Answered(Some(PartRead { reply: whole(&header.stored)?, header: header.stored }))
        }
        StateRecord::Split(header) => Start::Split(header),
    })
}

/// Reads the parts `names` (each `None` if it has no record) and answers from them and the header.
fn read_points<R>(
    engine: &dyn Engine,
    data_key: &[u8],
    kind: Kind,
    names: &[&[u8]],
    whole: impl Fn(&Stored) -> Result<Option<R>>,
    answer: impl Fn(&SplitHeader, Vec<Option<PartValue>>) -> Result<R>,
) -> Result<Option<PartRead<R>>> {
    for _ in 0..ASSEMBLY_ATTEMPTS {
        let header = match start(data_key, engine.get(Space::Data, data_key)?, kind, &whole)? {
            Start::Answered(read) => return Ok(read),
            Start::Split(header) => header,
        };
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            let bytes = engine.get(Space::Elements, &layout::element_key(data_key, name))?;
            found.push(bytes.map(|bytes| decode_part(kind, data_key, &bytes)).transpose()?);
        }
        // The gets were separate reads: the header read again says whether a write came between.
        let unchanged = names.is_empty()
            || match engine.get(Space::Data, data_key)?.map(|bytes| decode(data_key, &bytes)).transpose()? {
                Some(StateRecord::Split(now)) => now.writes == header.writes,
                _ => false,
            };
        if unchanged {
            let reply = answer(&header, found)?;
            return Ok(Some(PartRead { header: header.stored, reply: Some(reply) }));
        }
    }
    Err(StateError::Busy(layout::show_data_key(data_key)))
}

/// Reads the header and up to `want + 1` part records after `after` from one snapshot (one more
/// than a page, to know whether any remain) and answers from them.
fn read_page<R>(
    engine: &dyn Engine,
    data_key: &[u8],
    kind: Kind,
    after: Option<&[u8]>,
    want: usize,
    whole: impl Fn(&Stored) -> Result<Option<R>>,
    answer: impl FnOnce(Vec<(Vec<u8>, PartValue)>) -> Result<R>,
) -> Result<Option<PartRead<R>>> {
    let prefix = layout::elements_prefix(data_key);
    let first = match after {
        Some(after) => [prefix.as_slice(), after, &[0]].concat(),
        None => prefix.clone(),
    };
    let end = layout::prefix_end(&prefix);
    let (bytes, scanned) =
        engine.get_and_scan((Space::Data, data_key), (Space::Elements, &first, end.as_deref(), want + 1))?;
    let header = match start(data_key, bytes, kind, &whole)? {
        Start::Answered(read) => return Ok(read),
        Start::Split(header) => header,
    };
    let parts = scanned
        .into_iter()
        .map(|(key, value)| Ok((key[prefix.len()..].to_vec(), decode_part(kind, data_key, &value)?)))
        .collect::<Result<Vec<_>>>()?;
    let reply = answer(parts)?;
    Ok(Some(PartRead { header: header.stored, reply: Some(reply) }))
}
