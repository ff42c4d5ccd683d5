//! A group's member DNs read in bounded pieces, so that a group of a million members never
//! sits in memory as one entry (ldap3 decodes an entry whole: every value of `member`).
//!
//! Two ways, chosen by the caller ([`MemberRead`]):
//! * **Ranged** (Active Directory, Samba AD): base reads of `member;range=N-(N+step-1)`,
//!   one chunk after the other, until the chunk named `member;range=N-*`. The range is
//!   always asked explicitly, since Samba does not enforce `MaxValRange` but honours an
//!   asked range (`ldap/range.rs`).
//! * **Member side** (`memberOf`): a paged search of each base for `(memberOf=<group DN>)`,
//!   entry DNs only. Only as true as the directory's `memberOf` (AD's back link; OpenLDAP's
//!   memberof overlay, 389-DS's MemberOf plugin): the operator chooses it, the agent
//!   never assumes it. Members outside the bases are not found, which is what the caller
//!   wants of a scope.
//!
//! Invariant: a read that does not end as it must (a failed page, a size limit, a missing
//! range end, a chunk out of place or short, the group gone mid-way) ends the stream with
//! an error, never early with `None`: the members seen so far are not the group's.

use std::collections::VecDeque;

use super::{filter, range, worker::Request, Directory, EntryStream, LdapError, Scope};

/// Values asked per ranged read (AD's default `MaxValRange`).
pub const RANGE_STEP: u32 = 1500;

/// How a group's members are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRead {
    /// With the group entry, whole (the directory offers nothing bounded).
    Entry,
    /// Ranged reads of `member` (AD, Samba AD).
    Ranged,
    /// A paged search for `(memberOf=<group>)` (a directory that keeps `memberOf`).
    MemberOf,
}

/// The member DNs of one group, in pieces (see the module doc).
pub struct MemberDns {
    dir: Directory,
    group: String,
    way: Way,
}

enum Way {
    Ranged {
        next: Option<u64>,
    },
    MemberOf {
        bases: VecDeque<String>,
        search: Option<EntryStream>,
    },
}

impl Directory {
    /// The member DNs of `group_dn`, read the `how` way (`bases`: where a member-side
    /// search looks). [`MemberRead::Entry`] is read as ranged here (callers read such a
    /// group's members from its entry).
    pub fn member_dns(&self, group_dn: &str, how: MemberRead, bases: &[String]) -> MemberDns {
        let way = match how {
            MemberRead::MemberOf => Way::MemberOf {
                bases: bases.iter().cloned().collect(),
                search: None,
            },
            MemberRead::Ranged | MemberRead::Entry => Way::Ranged { next: Some(0) },
        };
        MemberDns {
            dir: self.clone(),
            group: group_dn.to_string(),
            way,
        }
    }

    /// A base read without range completion.
    async fn read_raw(
        &self,
        dn: &str,
        attrs: Vec<String>,
    ) -> Result<Option<super::wire::RawEntry>, LdapError> {
        let (reply, answer) = smol::channel::bounded(1);
        let gone = || LdapError::Worker {
            detail: "the LDAP client thread stopped".into(),
        };
        self.inner
            .requests
            .send(Request::ReadRaw {
                dn: dn.to_owned(),
                attrs,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.recv().await.map_err(|_| gone())?
    }
}

impl MemberDns {
    /// The next piece of member DNs (in server order; a piece may be empty); `None` after
    /// the last one, once the read has ended as it must; `Some(Err)` when it did not.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<String>, LdapError>> {
        match &mut self.way {
            Way::Ranged { next } => {
                let low = (*next)?;
                let r = ranged(&self.dir, &self.group, low).await;
                *next = match &r {
                    Ok((_, n)) => *n,
                    Err(_) => None,
                };
                Some(r.map(|(dns, _)| dns))
            }
            Way::MemberOf { bases, search } => loop {
                if search.is_none() {
                    let base = bases.pop_front()?;
                    let f = format!("(memberOf={})", filter::escape_value(&self.group));
                    *search = Some(self.dir.search(&base, Scope::Subtree, &f, &["1.1"]));
                }
                let s = search.as_mut()?;
                let mut dns = Vec::new();
                while dns.len() < 1000 {
                    match s.next().await {
                        Some(Ok(e)) => dns.push(e.dn),
                        Some(Err(e)) => {
                            bases.clear();
                            *search = None;
                            return Some(Err(e));
                        }
                        None => {
                            *search = None;
                            break;
                        }
                    }
                }
                if !dns.is_empty() {
                    return Some(Ok(dns));
                }
            },
        }
    }
}

/// One ranged read of the group's `member` from index `low`.
async fn ranged(
    dir: &Directory,
    group: &str,
    low: u64,
) -> Result<(Vec<String>, Option<u64>), LdapError> {
    let attr = "member";
    let range_error = |detail: String| LdapError::Range {
        dn: group.to_owned(),
        attribute: attr.to_owned(),
        detail,
    };
    let ask = range::range_request(attr, low, Some(RANGE_STEP));
    let Some(raw) = dir.read_raw(group, vec![ask]).await? else {
        return Err(range_error("the group disappeared during the read".into()));
    };
    let (values, next) = range::take_chunk(raw, attr, low).map_err(range_error)?;
    let dns = values
        .into_iter()
        .map(|v| String::from_utf8(v).map_err(|_| range_error("a value is not UTF-8".into())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dns, next))
}
