//! [`MemberVersions`]: the members of one connection and the agreement version each approved.

use super::{AgreementVersion, MemberId};

/// Each member's approved agreement version with one connection: what every write and read
/// of the connection looks up, row by row. Member uids are the catalog's own sequence, so
/// they are held in an array indexed by uid: 4 bytes a member, and the neighbouring uids a
/// utility's body of meter readings holds sit in neighbouring memory (a hash map took two
/// cache misses a row at a million members, a tenth of ingest). Uids too sparse for that
/// are held sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberVersions {
    index: Index,
    len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Index {
    /// `versions[uid - first]`, 0 for a member without an agreement.
    Dense { first: i64, versions: Vec<u32> },
    /// By member.
    Sorted(Vec<(MemberId, AgreementVersion)>),
}

impl Default for Index {
    fn default() -> Self {
        Index::Sorted(Vec::new())
    }
}

/// Uids may span this many times the members, plus a little, before the array would waste
/// more than the sorted list costs.
const DENSE_SPAN_PER_MEMBER: usize = 4;

impl MemberVersions {
    /// The version `member` approved, if it has an active agreement.
    pub fn get(&self, member: MemberId) -> Option<AgreementVersion> {
        match &self.index {
            Index::Dense { first, versions } => {
                let at = usize::try_from(member.get() - first).ok()?;
                let v = *versions.get(at)?;
                (v != 0).then(|| AgreementVersion::new(i64::from(v)).expect("stored versions are positive"))
            }
            Index::Sorted(sorted) => sorted.binary_search_by_key(&member, |(m, _)| *m).ok().map(|i| sorted[i].1),
        }
    }

    pub fn contains(&self, member: MemberId) -> bool {
        self.get(member).is_some()
    }

    /// How many members have an active agreement.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The members, ascending.
    pub fn members(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.iter().map(|(m, _)| m)
    }

    /// Each member and its version, ascending by member.
    fn iter(&self) -> impl Iterator<Item = (MemberId, AgreementVersion)> + '_ {
        let (dense, sorted) = match &self.index {
            Index::Dense { first, versions } => (Some((*first, versions)), None),
            Index::Sorted(sorted) => (None, Some(sorted)),
        };
        let dense = dense.into_iter().flat_map(|(first, versions)| {
            versions.iter().enumerate().filter(|(_, v)| **v != 0).filter_map(move |(i, v)| {
                Some((MemberId::new(first + i as i64).ok()?, AgreementVersion::new(i64::from(*v)).ok()?))
            })
        });
        dense.chain(sorted.into_iter().flatten().copied())
    }

    /// These versions with `changes` applied: a member's new version, or `None` for a member
    /// whose agreement is no longer active. A few changes to a million members copy the
    /// array once (4 MB) rather than reading the million again.
    pub fn with_changes(&self, changes: &[(MemberId, Option<AgreementVersion>)]) -> MemberVersions {
        if let Index::Dense { first, versions } = &self.index {
            let mut versions = versions.clone();
            let mut len = self.len;
            let patched = changes.iter().all(|(member, version)| {
                let slot = usize::try_from(member.get() - first).ok().and_then(|at| versions.get_mut(at));
                // 0 for no agreement; a version too wide for the array is built again.
                let new = match version {
                    None => Some(0),
                    Some(v) => u32::try_from(v.get()).ok(),
                };
                let (Some(slot), Some(new)) = (slot, new) else { return false };
                len = len + usize::from(new != 0) - usize::from(*slot != 0);
                *slot = new;
                true
            });
            if patched {
                return MemberVersions { index: Index::Dense { first: *first, versions }, len };
            }
        }
        // A change outside the array (or a sorted list): built again.
        let changed: std::collections::HashMap<MemberId, Option<AgreementVersion>> = changes.iter().copied().collect();
        let kept = self.iter().filter(|(m, _)| !changed.contains_key(m));
        kept.chain(changed.iter().filter_map(|(m, v)| Some((*m, (*v)?)))).collect()
    }
}

impl FromIterator<(MemberId, AgreementVersion)> for MemberVersions {
    fn from_iter<I: IntoIterator<Item = (MemberId, AgreementVersion)>>(iter: I) -> Self {
        let mut sorted: Vec<(MemberId, AgreementVersion)> = iter.into_iter().collect();
        sorted.sort_unstable_by_key(|(m, _)| *m);
        // A member named twice keeps its last version.
        sorted.reverse();
        sorted.dedup_by_key(|(m, _)| *m);
        sorted.reverse();
        let len = sorted.len();
        let (Some(&(first, _)), Some(&(last, _))) = (sorted.first(), sorted.last()) else {
            return MemberVersions::default();
        };
        let span = (last.get() - first.get()) as usize + 1;
        let fits = sorted.iter().all(|(_, v)| u32::try_from(v.get()).is_ok());
        if !fits || span > DENSE_SPAN_PER_MEMBER * len + 1024 {
            return MemberVersions { index: Index::Sorted(sorted), len };
        }
        let mut versions = vec![0u32; span];
        for (m, v) in sorted {
            versions[(m.get() - first.get()) as usize] = v.get() as u32;
        }
        MemberVersions { index: Index::Dense { first: first.get(), versions }, len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(uid: i64) -> MemberId {
        MemberId::new(uid).unwrap()
    }

    fn v(n: i64) -> AgreementVersion {
        AgreementVersion::new(n).unwrap()
    }

    #[test]
    fn dense_and_sparse_uids_answer_alike() {
        let dense: Vec<(MemberId, AgreementVersion)> =
            (1..=1000).filter(|u| u % 3 != 0).map(|u| (m(u), v(1 + u % 2))).collect();
        let sparse: Vec<(MemberId, AgreementVersion)> =
            dense.iter().map(|(u, ver)| (m(u.get() * 100_000), *ver)).collect();
        for (pairs, scale) in [(dense, 1), (sparse, 100_000)] {
            let versions: MemberVersions = pairs.iter().rev().copied().collect();
            assert_eq!(versions.len(), pairs.len());
            for uid in 1..=1001 {
                let expected = (uid % 3 != 0 && uid <= 1000).then(|| v(1 + uid % 2));
                assert_eq!(versions.get(m(uid * scale)), expected, "uid {}", uid * scale);
            }
            assert_eq!(versions.get(m(1001 * scale + 1)), None);
            assert_eq!(versions.members().collect::<Vec<_>>(), pairs.iter().map(|(u, _)| *u).collect::<Vec<_>>());
        }
        let empty = MemberVersions::default();
        assert_eq!(empty.with_changes(&[(m(5), Some(v(2))), (m(6), None)]), [(m(5), v(2))].into_iter().collect());
        assert!(empty.is_empty() && empty.get(m(1)).is_none() && empty.members().next().is_none());
    }

    #[test]
    fn changes_apply_as_if_read_again() {
        let pairs = |uids: &[i64]| uids.iter().map(|u| (m(*u), v(1))).collect::<Vec<_>>();
        let dense: MemberVersions = pairs(&(1..=1000).collect::<Vec<_>>()).into_iter().collect();
        let sparse: MemberVersions = pairs(&[1, 1_000_000, 2_000_000]).into_iter().collect();
        // A revocation, a new version, a member new inside the span, one far outside it, a
        // version too wide for the array, and a revocation of a member never there.
        let changes = [
            (m(1), None),
            (m(2), Some(v(2))),
            (m(999), Some(v(3))),
            (m(5_000_000), Some(v(1))),
            (m(3), Some(v(i64::from(u32::MAX) + 1))),
            (m(7_000_000), None),
        ];
        for base in [dense.clone(), sparse] {
            for changes in [&changes[..], &changes[..3]] {
                let expected: Vec<(MemberId, AgreementVersion)> = base
                    .iter()
                    .filter(|(u, _)| !changes.iter().any(|(c, _)| c == u))
                    .chain(changes.iter().filter_map(|(u, ver)| Some((*u, (*ver)?))))
                    .collect::<MemberVersions>()
                    .iter()
                    .collect();
                let changed = base.with_changes(changes);
                assert_eq!(changed.iter().collect::<Vec<_>>(), expected);
                assert_eq!(changed.len(), expected.len());
                assert!(expected.iter().all(|(u, ver)| changed.get(*u) == Some(*ver)));
                assert_eq!(changed.get(m(1)), None);
            }
        }
        // Changes inside the array's span patch it rather than build it again.
        let patched = dense.with_changes(&changes[..3]);
        assert!(matches!(patched.index, Index::Dense { first: 1, .. }) && patched.len() == 999);
    }
}
