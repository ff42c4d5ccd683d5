//! `approve-deletes` and `retry`: the operator's answers to what `run` held or parked.

use super::*;

/// `approve-deletes`: releases the held deletes. With the agent running (it holds the
/// state lock) an approval file is left for it; otherwise they are sent from here.
/// `list_only` prints them and changes nothing.
pub fn approve_deletes(c: &Config, list_only: bool) -> i32 {
    // The lock may be held by the running agent (then an approval file is left for it),
    // but a state directory that fails its check is never written to.
    if let Err(e) = crate::state_dir::prepare(&c.agent.state_dir) {
        eprintln!("error: {e}");
        return exit::FAILURE;
    }
    let gate = match open_gate(c) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    let held = gate.held().to_vec();
    if held.is_empty() {
        crate::outln!("no deletes are held");
        return exit::OK;
    }
    for t in held.iter().take(if list_only { usize::MAX } else { 20 }) {
        crate::outln!("{} {}: {}", t.kind.word(), t.dn, t.reason);
    }
    if !list_only && held.len() > 20 {
        crate::outln!(
            "... and {} more (`approve-deletes --list` shows all)",
            held.len() - 20
        );
    }
    if list_only {
        crate::outln!("{} deletes held; nothing changed", held.len());
        return exit::OK;
    }
    let lock = lock_state_dir(&c.agent.state_dir);
    let Ok(_lock) = lock else {
        // The agent runs: it picks the approval up within seconds.
        return match gate.write_approval() {
            Ok(()) => {
                crate::outln!(
                    "approved {} deletes; the running agent sends them within seconds (see its log)",
                    held.len()
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        };
    };
    install_audit(c);
    let mut gate = gate;
    smol::block_on(async {
        let (_, scim) = match scim_client(c) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        let mut index = match load_index(c) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        let targets = gate.release_all();
        if let Err(e) = gate.save() {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
        let s = crate::sync::deletes::send_approved(&scim, &mut index, c.sync.user_delete, targets)
            .await;
        if let Err(e) = index.save() {
            eprintln!("error: anchor index: {e}");
            return exit::FAILURE;
        }
        for (dn, why) in &s.failed {
            eprintln!("  delete of {dn} failed: {why}");
        }
        crate::outln!(
            "approved deletes: {} sent, {} failed (failed ones are found again by the next full pass)",
            s.sent,
            s.failed.len()
        );
        if s.failed.is_empty() {
            exit::OK
        } else {
            exit::PARTIAL
        }
    })
}

/// `retry [DN|--all]`: makes parked objects due now. With the agent running (it holds the
/// state lock) a request file is left for it; otherwise the parked list is updated and the
/// next `run` sends them first.
pub fn retry_parked(c: &Config, dn: Option<&str>) -> i32 {
    use crate::sync::follow::parking::{self, Parking};
    let dir = &c.agent.state_dir;
    if let Err(e) = crate::state_dir::prepare(dir) {
        eprintln!("error: {e}");
        return exit::FAILURE;
    }
    let mut parked = match Parking::open(dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: parked objects: {e}");
            return exit::FAILURE;
        }
    };
    let wanted = match dn {
        None => parked.len(),
        Some(d) => usize::from(
            parked
                .find("", Some(&crate::ldap::dn::normalize(d)))
                .is_some(),
        ),
    };
    if wanted == 0 {
        match dn {
            None => crate::outln!("no objects are parked"),
            Some(d) => {
                eprintln!("error: {d} is not parked (`idrelay status` lists parked objects)")
            }
        }
        return if dn.is_some() {
            exit::FAILURE
        } else {
            exit::OK
        };
    }
    let Ok(_lock) = lock_state_dir(dir) else {
        // The agent runs: it picks the request up within seconds.
        return match parking::request_retry(dir, dn) {
            Ok(()) => {
                crate::outln!(
                    "asked the running agent to retry {wanted} parked {} now (see its log)",
                    if wanted == 1 { "object" } else { "objects" }
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        };
    };
    parked.make_due(dn, parking::unix_now());
    match parked.save() {
        Ok(()) => {
            crate::outln!(
                "{wanted} parked {} due now; the next `idrelay run` sends {} first",
                if wanted == 1 {
                    "object is"
                } else {
                    "objects are"
                },
                if wanted == 1 { "it" } else { "them" }
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}
