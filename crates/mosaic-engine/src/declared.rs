//! Dependencies declared on the blocker's side. An issue whose metadata says `Blocks: #9`
//! makes #9 wait for it exactly as if #9 said `Blocked by` (issue 4: edges are blocked-by
//! relations, wherever they were written down). Gitea's own dependency list is symmetric and
//! needs none of this; the metadata is not.
//!
//! The index is derived from the coordinated issues' records (target → the issues whose
//! metadata names it), so it is rebuilt with them at recovery and follows every installed
//! change.

use std::collections::{BTreeSet, HashMap};

use mosaic_domain::{IssueMetadata, IssueRef};
use mosaic_store::IssueRecord;

/// Whether `record`'s metadata says it blocks `target`.
pub(crate) fn declares(record: &IssueRecord, target: &IssueRef) -> bool {
    record
        .metadata
        .as_ref()
        .is_some_and(|metadata| metadata.blocks.contains(target))
}

/// Target → the issues whose metadata declares that they block it.
#[derive(Debug, Default, Clone)]
pub(crate) struct DeclaredBlocks {
    by_target: HashMap<IssueRef, BTreeSet<IssueRef>>,
}

impl DeclaredBlocks {
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a IssueRecord>) -> Self {
        let mut index = Self::default();
        for record in records {
            index.replace(&record.issue, None, record.metadata.as_ref());
        }
        index
    }

    /// Follows `issue`'s metadata from `old` to `new`.
    pub fn replace(
        &mut self,
        issue: &IssueRef,
        old: Option<&IssueMetadata>,
        new: Option<&IssueMetadata>,
    ) {
        if old.map(|m| &m.blocks) == new.map(|m| &m.blocks) {
            // Most changes keep what an issue declares (every installed change comes here).
            return;
        }
        let targets = |metadata: Option<&IssueMetadata>| -> Vec<IssueRef> {
            metadata
                .map(|m| m.blocks.iter().filter(|t| *t != issue).cloned().collect())
                .unwrap_or_default()
        };
        let (old, new) = (targets(old), targets(new));
        for target in old.iter().filter(|t| !new.contains(t)) {
            if let Some(blockers) = self.by_target.get_mut(target) {
                blockers.remove(issue);
                if blockers.is_empty() {
                    self.by_target.remove(target);
                }
            }
        }
        for target in new {
            self.by_target
                .entry(target)
                .or_default()
                .insert(issue.clone());
        }
    }

    /// Every target with the issues that declare they block it.
    pub fn iter(&self) -> impl Iterator<Item = (&IssueRef, &BTreeSet<IssueRef>)> {
        self.by_target.iter()
    }

    /// The issues that declare they block `target`.
    pub fn blockers_of<'a>(&'a self, target: &IssueRef) -> impl Iterator<Item = &'a IssueRef> {
        self.by_target.get(target).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use mosaic_domain::{Difficulty, IssueState, MetadataSource};

    fn issue(n: u64) -> IssueRef {
        format!("o/r#{n}").parse().unwrap()
    }

    fn record(n: u64, blocks: &[u64]) -> IssueRecord {
        let mut record = IssueRecord::new(issue(n), IssueState::Ready, chrono::Utc::now());
        record.metadata = Some(IssueMetadata {
            estimated_context: 1_000,
            difficulty: Difficulty::Low,
            recommended_agent: None,
            blocks: blocks.iter().map(|&b| issue(b)).collect(),
            blocked_by: Vec::new(),
            source: MetadataSource::Template,
            confidence: 1.0,
        });
        record
    }

    fn blockers(index: &DeclaredBlocks, target: u64) -> Vec<u64> {
        index
            .blockers_of(&issue(target))
            .map(|i| i.number)
            .collect()
    }

    #[test]
    fn the_index_follows_each_records_metadata() {
        let mut index = DeclaredBlocks::from_records(&[record(1, &[3, 4]), record(2, &[3, 2])]);
        assert_eq!(blockers(&index, 3), vec![1, 2]);
        assert_eq!(blockers(&index, 4), vec![1]);
        assert!(
            blockers(&index, 2).is_empty(),
            "an issue never blocks itself"
        );

        let old = record(1, &[3, 4]);
        let new = record(1, &[4, 5]);
        index.replace(&issue(1), old.metadata.as_ref(), new.metadata.as_ref());
        assert_eq!(blockers(&index, 3), vec![2]);
        assert_eq!(blockers(&index, 4), vec![1]);
        assert_eq!(blockers(&index, 5), vec![1]);
        assert!(declares(&new, &issue(5)));
        assert!(!declares(&new, &issue(3)));

        index.replace(&issue(1), new.metadata.as_ref(), None);
        assert!(blockers(&index, 4).is_empty());
        assert!(index.by_target.keys().all(|t| t.number == 3));
    }
}
