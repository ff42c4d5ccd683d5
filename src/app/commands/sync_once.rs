//! `sync --once [--dry-run]`: one full pass, then exit.

use super::*;

/// `sync --once [--dry-run [--json]]`.
pub fn sync_once(c: &Config, dry_run: bool, json: bool, quiet: bool) -> i32 {
    let _lock = match lock_state_dir(&c.agent.state_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if !dry_run {
        install_audit(c);
    }
    smol::block_on(async {
        let src = match open_source(c).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        log::info!("directory {} is {}", c.directory.url, src.kind);
        settle_cloud_profile(c, &src.cloud, !dry_run);
        let scim = match scim_client(c) {
            Ok((_, s)) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        // Reaching the endpoint first turns "unreachable" into one clear error instead of
        // one failure per object.
        if let Err(e) = scim.service_provider_config().await {
            if e.status() != Some(404) {
                eprintln!("error: SCIM endpoint {}: {e}", c.scim.url);
                return exit::FAILURE;
            }
            log::warn!(
                "SCIM endpoint has no /ServiceProviderConfig (404); going on with plain SCIM"
            );
        }
        let mut index = match load_index(c) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        let mut gate = match open_gate(c) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        let mut settings = pass_settings(c, &src.profile, dry_run, quiet);
        settings.mode.dry_run_json = json;
        if !dry_run {
            // Deletes a stopped `run` left waiting in its settle window: this pass finds
            // those objects gone again and weighs them itself (sent once, not twice).
            let waiting = gate.forget_waiting();
            if waiting > 0 {
                log::info!("{waiting} deletes waiting to be weighed are left to this pass");
            }
        }
        match full_pass(
            &src.dir,
            &scim,
            &src.profile,
            &mut index,
            &mut gate,
            &settings,
        )
        .await
        {
            Ok(report) => {
                if !report.failures.is_empty() {
                    eprintln!("{} objects failed:", report.failures.len());
                    for f in report.failures.iter().take(50) {
                        eprintln!("  {}: {}", f.dn, f.reason);
                    }
                    if report.failures.len() > 50 {
                        eprintln!(
                            "  ... and {} more (see the log)",
                            report.failures.len() - 50
                        );
                    }
                }
                for (dn, why) in report.deletes.failed.iter().take(50) {
                    eprintln!("  delete of {dn} failed: {why}");
                }
                if let Some(list) = scim.not_kept().filter(|l| !l.is_empty()) {
                    crate::outln!(
                        "the endpoint accepted and did not keep as sent: {} (see the log)",
                        list.join(", ")
                    );
                }
                crate::outln!("{report}");
                explain_held(c, gate.held().len());
                if !dry_run {
                    crate::sync::follow::record_full_pass(&c.agent.state_dir);
                    crate::sync::kept::record(&c.agent.state_dir, &scim);
                }
                if !report.failures.is_empty() || !report.deletes.failed.is_empty() {
                    exit::PARTIAL
                } else if !gate.held().is_empty() {
                    exit::HELD
                } else {
                    exit::OK
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// preview DN
