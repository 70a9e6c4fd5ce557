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
        let (dense, sorted) = match &self.index {
            Index::Dense { first, versions } => (Some((*first, versions)), None),
            Index::Sorted(sorted) => (None, Some(sorted)),
        };
        let dense = dense.into_iter().flat_map(|(first, versions)| {
            versions
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != 0)
                .filter_map(move |(i, _)| MemberId::new(first + i as i64).ok())
        });
        dense.chain(sorted.into_iter().flatten().map(|(m, _)| *m))
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
        assert!(empty.is_empty() && empty.get(m(1)).is_none() && empty.members().next().is_none());
    }
}
