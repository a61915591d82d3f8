//! `wormvault bucket check`: is the configured bucket fit to hold a WORM archive?
//!
//! Five properties, each reported with what was expected and what was found:
//!
//! | property             | expected                                                      |
//! |----------------------|---------------------------------------------------------------|
//! | `versioning`         | `Enabled`                                                     |
//! | `object_lock`        | enabled (possible only when the bucket is created)            |
//! | `default_mode`       | `COMPLIANCE` (GOVERNANCE can be bypassed)                     |
//! | `default_retention`  | at least `[upload] min_default_retention_days`                |
//! | `locked_delete`      | deleting a locked version is refused to these credentials     |
//!
//! An anchor mirror (`[anchor.mirror]`) is held to the same properties.
//!
//! The last is proved, not read from configuration: a canary is written under `preflight/`
//! and its deletion attempted ([`crate::store::canary`]). The daemon runs the whole check at
//! start-up (and will not start on a bucket that fails it), the configuration part every
//! few seconds for `/readyz`, and the whole check (canary and mirror) again once a day.

use serde::Serialize;

use crate::layout::{Layout, WriterId};
use crate::store::canary::{Canary, CanaryOutcome};
use crate::store::{BucketLock, LockMode, StoreError, WormStore};
use crate::timestamp::Timestamp;

/// The property proved by the canary: deleting a locked version is refused.
const LOCKED_DELETE: &str = "locked_delete";

/// One property of the bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Property {
    pub name: &'static str,
    pub ok: bool,
    pub expected: String,
    pub found: String,
    /// A plain sentence; for a failing property, what is wrong and what to do.
    pub sentence: String,
}

impl Property {
    fn new(
        name: &'static str,
        ok: bool,
        expected: impl Into<String>,
        found: impl Into<String>,
        sentence: impl Into<String>,
    ) -> Property {
        Property {
            name,
            ok,
            expected: expected.into(),
            found: found.into(),
            sentence: sentence.into(),
        }
    }
}

/// The result of a check.
#[derive(Clone, Debug, Serialize)]
pub struct BucketReport {
    pub store: String,
    pub checked_at: String,
    pub min_default_retention_days: u32,
    /// Whether this store and the mirror (if any) pass.
    pub passed: bool,
    pub properties: Vec<Property>,
    /// The anchors' mirror (`[anchor.mirror]`), held to the same properties.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Box<BucketReport>>,
}

impl BucketReport {
    fn new(store: &dyn WormStore, min_days: u32, properties: Vec<Property>) -> BucketReport {
        BucketReport {
            store: store.describe(),
            checked_at: Timestamp::now().to_string(),
            min_default_retention_days: min_days,
            passed: properties.iter().all(|p| p.ok),
            properties,
            mirror: None,
        }
    }

    /// Adds the mirror's report.
    pub fn with_mirror(mut self, mirror: BucketReport) -> BucketReport {
        self.passed &= mirror.passed;
        self.mirror = Some(Box::new(mirror));
        self
    }

    /// The failing properties, as sentences (the mirror's prefixed `mirror `).
    pub fn problems(&self) -> Vec<String> {
        self.own_problems(|_| true)
            .chain(self.mirror_problems())
            .collect()
    }

    /// The problems only the whole check finds: the canary's `locked_delete`, and every
    /// problem of the mirror. Between two whole checks (a day apart) they stand.
    pub fn problems_of_the_whole_check(&self) -> Vec<String> {
        self.own_problems(|p| p.name == LOCKED_DELETE)
            .chain(self.mirror_problems())
            .collect()
    }

    fn own_problems<'a>(
        &'a self,
        which: impl Fn(&Property) -> bool + 'a,
    ) -> impl Iterator<Item = String> + 'a {
        self.properties
            .iter()
            .filter(move |p| !p.ok && which(p))
            .map(|p| format!("{}: {}", p.name, p.sentence))
    }

    fn mirror_problems(&self) -> impl Iterator<Item = String> + '_ {
        self.mirror
            .iter()
            .flat_map(|m| m.problems())
            .map(|p| format!("mirror {p}"))
    }

    /// The report for a terminal.
    pub fn summary(&self) -> String {
        let mut out = self.summary_of_store();
        if let Some(m) = &self.mirror {
            out.push_str("anchor mirror: ");
            out.push_str(&m.summary_of_store());
        }
        let failing = self.problems().len();
        if failing == 0 {
            out.push_str("the bucket is fit for the archive\n");
        } else {
            out.push_str(&format!(
                "{failing} propert{} failing: the bucket is NOT fit for the archive\n",
                if failing == 1 { "y" } else { "ies" }
            ));
        }
        out
    }

    fn summary_of_store(&self) -> String {
        let mut out = format!("bucket check of {}\n", self.store);
        for p in &self.properties {
            out.push_str(&format!(
                "  {} {:<18} {}\n",
                if p.ok { "ok  " } else { "FAIL" },
                p.name,
                p.sentence
            ));
            if !p.ok {
                out.push_str(&format!(
                    "       {:<18} expected {}; found {}\n",
                    "", p.expected, p.found
                ));
            }
        }
        out
    }
}

/// The configuration properties (versioning, lock, default mode and period).
pub fn lock_properties(lock: &BucketLock, min_days: u32) -> Vec<Property> {
    let mut out = Vec::new();
    let versioning = lock.versioning.as_deref().unwrap_or("never enabled");
    out.push(if lock.versioning.as_deref() == Some("Enabled") {
        Property::new(
            "versioning",
            true,
            "Enabled",
            versioning,
            "versioning is enabled",
        )
    } else {
        Property::new(
            "versioning",
            false,
            "Enabled",
            versioning,
            format!("versioning is {versioning}; Object Lock needs it enabled"),
        )
    });
    out.push(if lock.lock_enabled {
        Property::new("object_lock", true, "enabled", "enabled", "Object Lock is enabled")
    } else {
        Property::new(
            "object_lock",
            false,
            "enabled",
            "not enabled",
            "Object Lock is not enabled; it can only be enabled when a bucket is created, so create a new bucket (terraform/modules/aws-archive or minio-archive)",
        )
    });
    let mode = match lock.default_mode {
        Some(LockMode::Compliance) => "COMPLIANCE",
        Some(LockMode::Governance) => "GOVERNANCE",
        None => "none",
    };
    out.push(match lock.default_mode {
        Some(LockMode::Compliance) => Property::new(
            "default_mode",
            true,
            "COMPLIANCE",
            mode,
            "the default retention mode is COMPLIANCE",
        ),
        Some(LockMode::Governance) => Property::new(
            "default_mode",
            false,
            "COMPLIANCE",
            mode,
            "the default retention mode is GOVERNANCE, which anyone with s3:BypassGovernanceRetention can lift; set it to COMPLIANCE",
        ),
        None => Property::new(
            "default_mode",
            false,
            "COMPLIANCE",
            mode,
            "the bucket has no default retention; set a COMPLIANCE default so that nothing written to it is ever unlocked",
        ),
    });
    let expected = format!("at least {min_days} days");
    out.push(match lock.default_days {
        Some(d) if d >= min_days => Property::new(
            "default_retention",
            true,
            expected,
            days(d),
            format!("the default retention is {}", days(d)),
        ),
        Some(d) => Property::new(
            "default_retention",
            false,
            expected,
            days(d),
            format!(
                "the default retention is {}, below the configured minimum of {min_days} days ([upload] min_default_retention_days)",
                days(d)
            ),
        ),
        None => Property::new(
            "default_retention",
            false,
            expected,
            "none",
            "the bucket has no default retention period",
        ),
    });
    out
}

fn days(d: u32) -> String {
    if d == u32::MAX {
        "unlimited (every object carries its own)".into()
    } else {
        format!("{d} days")
    }
}

/// The delete probe's property.
pub fn canary_property(outcome: &CanaryOutcome) -> Property {
    let expected = "deleting a COMPLIANCE-locked version is refused";
    match outcome {
        CanaryOutcome::Undeletable {
            key,
            version_id,
            refusal,
        } => Property::new(
            LOCKED_DELETE,
            true,
            expected,
            format!("refused: {refusal}"),
            format!("deleting the locked canary {key} (version {version_id}) was refused"),
        ),
        CanaryOutcome::NotApplicable(why) => {
            Property::new(LOCKED_DELETE, true, expected, "not applicable", why.clone())
        }
        CanaryOutcome::Deleted { key, version_id } => Property::new(
            LOCKED_DELETE,
            false,
            expected,
            "deleted",
            format!(
                "these credentials DELETED the locked canary {key} (version {version_id}): records in this bucket can be destroyed"
            ),
        ),
        CanaryOutcome::NotSealed { key, problem } => Property::new(
            LOCKED_DELETE,
            false,
            expected,
            format!("the canary was not sealed: {problem}"),
            format!(
                "the canary {key} was written but the store did not lock it as asked, so nothing it holds is protected"
            ),
        ),
        CanaryOutcome::PutRefused { key, error } => Property::new(
            LOCKED_DELETE,
            false,
            expected,
            format!("the sealed write was refused: {error}"),
            format!(
                "a sealed write of the canary {key} was refused, so the archive cannot be written"
            ),
        ),
    }
}

/// The configuration part only: cheap, for `/readyz`.
pub async fn check_configuration(
    store: &dyn WormStore,
    min_days: u32,
) -> Result<BucketReport, StoreError> {
    let lock = store.bucket_lock().await?;
    Ok(BucketReport::new(
        store,
        min_days,
        lock_properties(&lock, min_days),
    ))
}

/// The whole check, canary included. `Err` means it could not run (the store unreachable).
pub async fn check(
    store: &dyn WormStore,
    layout: &Layout,
    who: &WriterId,
    min_days: u32,
) -> Result<BucketReport, StoreError> {
    let lock = store.bucket_lock().await?;
    let mut properties = lock_properties(&lock, min_days);
    properties.push(if lock.lock_enabled {
        let canary = Canary::new(layout, who, Timestamp::now());
        canary_property(&store.probe_canary(layout, &canary).await?)
    } else {
        Property::new(
            LOCKED_DELETE,
            false,
            "deleting a COMPLIANCE-locked version is refused",
            "not tried",
            "not proved: without Object Lock nothing can be locked, so nothing stops a delete",
        )
    });
    Ok(BucketReport::new(store, min_days, properties))
}

/// [`check`] of the configured store and, when `[anchor.mirror]` is set, of the mirror (the
/// daemon writes every anchor there too).
pub async fn check_configured(
    settings: &crate::config::Settings,
    store: &dyn WormStore,
    who: &WriterId,
) -> Result<BucketReport, String> {
    let min_days = settings.server.min_default_retention_days;
    let report = check(store, &settings.layout, who, min_days)
        .await
        .map_err(|e| e.to_string())?;
    let Some((mirror, layout)) = settings.anchor.as_ref().and_then(|a| a.mirror.as_ref()) else {
        return Ok(report);
    };
    let mirror = crate::archive::open_store_at(mirror)
        .await
        .map_err(|e| format!("anchor.mirror: {e}"))?;
    let m = check(&*mirror, layout, who, min_days)
        .await
        .map_err(|e| format!("anchor.mirror: {e}"))?;
    Ok(report.with_mirror(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(mode: Option<LockMode>, days: Option<u32>) -> BucketLock {
        BucketLock {
            versioning: Some("Enabled".into()),
            lock_enabled: true,
            default_mode: mode,
            default_days: days,
        }
    }

    fn failing(props: &[Property]) -> Vec<&'static str> {
        props.iter().filter(|p| !p.ok).map(|p| p.name).collect()
    }

    /// Between two whole checks only what the whole check alone finds carries over: the
    /// canary's property and the mirror's problems, not the configuration's.
    #[test]
    fn the_whole_checks_own_problems() {
        let report = |props: Vec<Property>| BucketReport {
            store: "s".into(),
            checked_at: String::new(),
            min_default_retention_days: 1,
            passed: false,
            properties: props,
            mirror: None,
        };
        let mut props = lock_properties(&lock(Some(LockMode::Governance), Some(2192)), 1095);
        props.push(Property::new(
            LOCKED_DELETE,
            false,
            "refused",
            "deleted",
            "it was deleted",
        ));
        let mirror = report(lock_properties(
            &lock(Some(LockMode::Compliance), Some(1)),
            1095,
        ));
        let whole = report(props).with_mirror(mirror);
        assert_eq!(whole.problems().len(), 3, "{:?}", whole.problems());
        assert_eq!(
            whole.problems_of_the_whole_check(),
            [
                "locked_delete: it was deleted".to_owned(),
                format!("mirror {}", whole.mirror.as_ref().unwrap().problems()[0])
            ]
        );
    }

    #[test]
    fn each_configuration_property_fails_on_its_own() {
        let fit = lock(Some(LockMode::Compliance), Some(2192));
        assert!(failing(&lock_properties(&fit, 1095)).is_empty());
        assert_eq!(
            failing(&lock_properties(
                &lock(Some(LockMode::Governance), Some(2192)),
                1095
            )),
            ["default_mode"]
        );
        assert_eq!(
            failing(&lock_properties(
                &lock(Some(LockMode::Compliance), Some(30)),
                1095
            )),
            ["default_retention"]
        );
        assert_eq!(
            failing(&lock_properties(&lock(None, None), 1)),
            ["default_mode", "default_retention"]
        );
        let unversioned = BucketLock {
            versioning: None,
            lock_enabled: false,
            default_mode: None,
            default_days: None,
        };
        let props = lock_properties(&unversioned, 1);
        assert_eq!(
            failing(&props),
            [
                "versioning",
                "object_lock",
                "default_mode",
                "default_retention"
            ]
        );
        assert_eq!(props[0].found, "never enabled");
    }

    #[test]
    fn a_deleted_canary_is_the_loudest_failure() {
        let p = canary_property(&CanaryOutcome::Deleted {
            key: "preflight/w/1.json".into(),
            version_id: "v1".into(),
        });
        assert!(!p.ok);
        assert_eq!(p.found, "deleted");
        assert!(
            p.sentence
                .contains("DELETED the locked canary preflight/w/1.json (version v1)")
        );
        let p = canary_property(&CanaryOutcome::NotSealed {
            key: "k".into(),
            problem: "it is not locked".into(),
        });
        assert!(!p.ok && p.found.contains("it is not locked"));
        let p = canary_property(&CanaryOutcome::Undeletable {
            key: "k".into(),
            version_id: "v".into(),
            refusal: "AccessDenied".into(),
        });
        assert!(p.ok && p.found == "refused: AccessDenied");
    }
}
