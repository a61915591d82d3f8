//! Retention classes, the rules that pick one for an event, and the retain-until rule.
//!
//! A *retention class* is a named period (SEC 17a-4(a): 6 years, ...). Rules map action
//! patterns to classes; every event gets exactly one class:
//!
//! 1. the *rule class*: the longest period among the classes of all rules whose pattern
//!    matches the event's `action`, or the default class when none matches;
//! 2. an explicit `retention_class` on the event is honoured when its period is not shorter
//!    than the rule class's for that event; otherwise the rule class is applied and the event's
//!    result carries a note saying so (the event is still archived: refusing it would risk
//!    losing a record over a classification disagreement).
//!
//! **Retain-until rule.** Events are grouped into segments by (UTC day D, class C). A segment
//! of day D and class C with period P is locked until
//!
//! ```text
//! retain_until = max( (D + 1 day at 00:00:00Z) + P ,  sealed_at + 1 day ), rounded up to a second
//! ```
//!
//! Every event in the segment occurred before D+1 00:00Z, and adding a period is monotonic,
//! so `retain_until ≥ occurred_at + P` for every event in it. The second term only matters
//! for a backfill of records already older than their period: they are still locked for a day
//! rather than written with a retain-until in the past (which AWS refuses).
//!
//! Adding a period adds calendar years and months, then days. A date that does not exist
//! (29 February in a common year, 31 April) moves forward to the first day of the next month,
//! never back, so the lock is never shorter than the period.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{Datelike, Months, NaiveDate};

use crate::timestamp::{Day, Timestamp};

/// A retention period in calendar units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    #[serde(default)]
    pub years: u32,
    #[serde(default)]
    pub months: u32,
    #[serde(default)]
    pub days: u32,
}

impl Period {
    pub const fn years(years: u32) -> Period {
        Period {
            years,
            months: 0,
            days: 0,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.years == 0 && self.months == 0 && self.days == 0
    }

    /// `t + self`, rounding a non-existent date forward (see the module docs).
    pub fn add_to(&self, t: Timestamp) -> Timestamp {
        let day = t.day();
        let time_of_day = t.as_micros() - day.start().as_micros();
        let date = day.date();
        let months = self.years * 12 + self.months;
        let shifted = date
            .checked_add_months(Months::new(months))
            .expect("date in range");
        // chrono clamps 31 Jan + 1 month to 28/29 Feb; we round forward instead.
        let shifted = if shifted.day() != date.day() {
            let (y, m) = (shifted.year(), shifted.month());
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            NaiveDate::from_ymd_opt(y, m, 1).expect("first of month")
        } else {
            shifted
        };
        let shifted = shifted + chrono::Days::new(u64::from(self.days));
        Day::from_date(shifted).start().plus_micros(time_of_day)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (n, unit) in [
            (self.years, "year"),
            (self.months, "month"),
            (self.days, "day"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
            }
        }
        if parts.is_empty() {
            parts.push("0 days".into());
        }
        f.write_str(&parts.join(" "))
    }
}

/// The classes every deployment has, with the periods their rules require. Configuration may
/// lengthen these or add classes; it may not shorten them.
pub const SHIPPED_CLASSES: &[(&str, Period, &str)] = &[
    (
        "sec-17a-4-a",
        Period::years(6),
        "SEC Rule 17a-4(a): records kept for not less than six years",
    ),
    (
        "sec-17a-4-b",
        Period::years(3),
        "SEC Rule 17a-4(b): records kept for not less than three years",
    ),
    (
        "finra-4511",
        Period::years(6),
        "FINRA Rule 4511(b): six years where no other period is specified",
    ),
    (
        "cftc-1-31",
        Period::years(5),
        "CFTC Regulation 1.31: regulatory records kept for five years",
    ),
];

/// The class used when no rule matches and the configuration names none: the longest of the
/// shipped classes, so that an unclassified record is never under-retained.
pub const SHIPPED_DEFAULT_CLASS: &str = "sec-17a-4-a";

/// The name of a retention class. Names are interned: each distinct name is stored once for
/// the life of the process, so a name is `Copy` and every record, lane and batch carries one
/// without a shared reference count. (With `Arc<str>`, each record's clone and drop of its
/// class was an atomic operation on a cache line that every pipeline thread writes: 80 % of
/// the time spent dropping a record, in `perf`.) Names come only from the configuration and
/// from the daemon's own spool, outbox and state, so the interned set stays that small. A
/// name is never made from text an upstream sent (an event's `retention_class` is looked up
/// among the configured classes, not interned), which is also why there is no `Deserialize`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassName(&'static str);

impl ClassName {
    pub fn new(name: &str) -> ClassName {
        static NAMES: std::sync::Mutex<BTreeSet<&'static str>> =
            std::sync::Mutex::new(BTreeSet::new());
        let mut names = NAMES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&interned) = names.get(name) {
            return ClassName(interned);
        }
        let interned: &'static str = Box::leak(Box::from(name));
        names.insert(interned);
        ClassName(interned)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::ops::Deref for ClassName {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl AsRef<str> for ClassName {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl std::borrow::Borrow<str> for ClassName {
    fn borrow(&self) -> &str {
        self.0
    }
}

impl From<&str> for ClassName {
    fn from(name: &str) -> ClassName {
        ClassName::new(name)
    }
}

impl fmt::Display for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.0)
    }
}

impl fmt::Debug for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl serde::Serialize for ClassName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionClass {
    pub name: ClassName,
    pub period: Period,
    pub description: String,
}

/// One action-pattern rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub pattern: String,
    pub class: ClassName,
}

/// The resolved retention policy (classes, rules, default).
#[derive(Clone, Debug)]
pub struct RetentionPolicy {
    classes: BTreeMap<ClassName, RetentionClass>,
    rules: Vec<Rule>,
    default_class: ClassName,
}

/// The class chosen for one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub class: ClassName,
    /// Set when an explicit class was overridden by a longer rule class.
    pub note: Option<String>,
}

impl RetentionPolicy {
    /// Builds a policy, checking that every name resolves and no shipped class is shortened.
    pub fn new(
        extra_classes: Vec<RetentionClass>,
        rules: Vec<Rule>,
        default_class: Option<String>,
    ) -> Result<RetentionPolicy, String> {
        let mut classes: BTreeMap<ClassName, RetentionClass> = SHIPPED_CLASSES
            .iter()
            .map(|&(name, period, description)| {
                let name = ClassName::new(name);
                (
                    name,
                    RetentionClass {
                        name,
                        period,
                        description: description.into(),
                    },
                )
            })
            .collect();
        for class in extra_classes {
            validate_class_name(&class.name)?;
            if class.period.is_zero() {
                return Err(format!(
                    "retention class {:?} has a zero period",
                    class.name
                ));
            }
            if let Some(shipped) = classes.get(&class.name) {
                let probe = Day::parse("2024-02-29").expect("valid").start();
                if class.period.add_to(probe) < shipped.period.add_to(probe) {
                    return Err(format!(
                        "retention class {:?} is configured as {} but its rule requires at least {}; \
                         a shipped class can be lengthened, never shortened",
                        class.name, class.period, shipped.period
                    ));
                }
            }
            classes.insert(class.name, class);
        }
        let lookup = |name: &str, what: &str| -> Result<ClassName, String> {
            classes.get(name).map(|c| c.name).ok_or_else(|| {
                format!(
                    "{what} names the unknown retention class {name:?}; known classes: {}",
                    classes
                        .keys()
                        .map(|k| k.as_ref())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        };
        let default_class = lookup(
            default_class.as_deref().unwrap_or(SHIPPED_DEFAULT_CLASS),
            "default_class",
        )?;
        let mut checked = Vec::with_capacity(rules.len());
        for rule in rules {
            if rule.pattern.is_empty() {
                return Err("a retention rule has an empty action pattern".into());
            }
            let class = lookup(&rule.class, &format!("the rule for {:?}", rule.pattern))?;
            checked.push(Rule {
                pattern: rule.pattern,
                class,
            });
        }
        Ok(RetentionPolicy {
            classes,
            rules: checked,
            default_class,
        })
    }

    /// The shipped classes and no rules.
    pub fn shipped() -> RetentionPolicy {
        RetentionPolicy::new(Vec::new(), Vec::new(), None).expect("shipped policy is valid")
    }

    pub fn classes(&self) -> impl Iterator<Item = &RetentionClass> {
        self.classes.values()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_class(&self) -> &ClassName {
        &self.default_class
    }

    pub fn class(&self, name: &str) -> Option<&RetentionClass> {
        self.classes.get(name)
    }

    /// The longest period among the classes of all longest-matching rules, or the default.
    fn rule_class(&self, action: &str, occurred_at: Timestamp) -> &RetentionClass {
        let mut best: Option<&RetentionClass> = None;
        for rule in &self.rules {
            if glob_match(&rule.pattern, action) {
                let c = &self.classes[&rule.class];
                if best.is_none_or(|b| c.period.add_to(occurred_at) > b.period.add_to(occurred_at))
                {
                    best = Some(c);
                }
            }
        }
        best.unwrap_or(&self.classes[&self.default_class])
    }

    /// Chooses the class of one event. `Err` carries the reason an explicit class is unknown.
    pub fn resolve(
        &self,
        action: &str,
        explicit: Option<&str>,
        occurred_at: Timestamp,
    ) -> Result<Resolution, String> {
        let rule = self.rule_class(action, occurred_at);
        let Some(explicit) = explicit else {
            return Ok(Resolution {
                class: rule.name,
                note: None,
            });
        };
        let Some(asked) = self.classes.get(explicit) else {
            return Err(format!(
                "unknown retention class {explicit:?}; known classes: {}",
                self.classes
                    .keys()
                    .map(|k| k.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if asked.period.add_to(occurred_at) >= rule.period.add_to(occurred_at) {
            Ok(Resolution {
                class: asked.name,
                note: None,
            })
        } else {
            Ok(Resolution {
                class: rule.name,
                note: Some(format!(
                    "retention_class {:?} ({}) is shorter than {:?} ({}) required for action {:?}; \
                     {:?} was applied",
                    asked.name, asked.period, rule.name, rule.period, action, rule.name
                )),
            })
        }
    }

    /// The retain-until date of a segment of `day` and `class` sealed at `sealed_at`.
    pub fn segment_retain_until(&self, day: Day, class: &str, sealed_at: Timestamp) -> Timestamp {
        let period = self.classes[class].period;
        retain_until(day, period, sealed_at)
    }

    /// The longest period of any class, added to `t`.
    pub fn longest_from(&self, t: Timestamp) -> Timestamp {
        self.classes
            .values()
            .map(|c| c.period.add_to(t))
            .max()
            .unwrap_or(t)
    }
}

/// The retain-until rule of the module docs.
pub fn retain_until(day: Day, period: Period, sealed_at: Timestamp) -> Timestamp {
    let by_period = period.add_to(day.next().start());
    let floor = sealed_at.plus_micros(86_400_000_000);
    by_period.max(floor).ceil_to_second()
}

fn validate_class_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "retention class name {name:?} must be 1-64 characters of a-z, 0-9 and `-`"
        ))
    }
}

/// Matches an action against a glob pattern: `*` any run of characters (including none and
/// dots), `?` exactly one character; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    /// A name is stored once however often it is made, and behaves as its text everywhere.
    #[test]
    fn class_names_are_interned_and_behave_as_their_text() {
        let a = ClassName::new("finra-4511");
        let b = ClassName::new(&String::from("finra-4511"));
        assert_eq!(a, b);
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr(), "one copy");
        assert_ne!(a, ClassName::new("finra-4512"));
        assert_eq!(a.to_string(), "finra-4511");
        assert_eq!(
            format!("[{a:<12}]"),
            "[finra-4511  ]",
            "a width, as for any text"
        );
        assert_eq!(format!("{a:?}"), "\"finra-4511\"");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"finra-4511\"");
        // Ordered and looked up by text.
        let map: BTreeMap<ClassName, u8> = [("b", 2), ("a", 1)]
            .into_iter()
            .map(|(k, v)| (ClassName::new(k), v))
            .collect();
        assert_eq!(map.get("a"), Some(&1));
        assert_eq!(
            map.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn periods_round_forward_never_back() {
        assert_eq!(
            Period::years(6).add_to(ts("2026-11-20T14:03:11Z")),
            ts("2032-11-20T14:03:11Z")
        );
        assert_eq!(
            Period::years(1).add_to(ts("2024-02-29T12:00:00Z")),
            ts("2025-03-01T12:00:00Z")
        );
        assert_eq!(
            Period::years(4).add_to(ts("2024-02-29T12:00:00Z")),
            ts("2028-02-29T12:00:00Z")
        );
        let m = Period {
            years: 0,
            months: 1,
            days: 0,
        };
        assert_eq!(
            m.add_to(ts("2026-01-31T00:00:00Z")),
            ts("2026-03-01T00:00:00Z")
        );
        let d = Period {
            years: 0,
            months: 0,
            days: 30,
        };
        assert_eq!(
            d.add_to(ts("2026-12-15T08:00:00Z")),
            ts("2027-01-14T08:00:00Z")
        );
    }

    #[test]
    fn retain_until_covers_every_event_of_the_day() {
        let day = Day::parse("2024-02-28").unwrap();
        let sealed = ts("2024-03-01T00:00:05Z");
        let until = retain_until(day, Period::years(6), sealed);
        assert_eq!(
            until,
            ts("2030-03-01T00:00:00Z"),
            "29 Feb 2030 does not exist: forward"
        );
        for t in ["2024-02-28T00:00:00Z", "2024-02-28T23:59:59.999999Z"] {
            assert!(until >= Period::years(6).add_to(ts(t)));
        }
        // A backfill older than its period is still locked for at least a day.
        let old = retain_until(Day::parse("2001-01-01").unwrap(), Period::years(3), sealed);
        assert_eq!(old, ts("2024-03-02T00:00:05Z"));
    }

    #[test]
    fn rules_pick_the_longest_and_explicit_classes_cannot_shorten() {
        let policy = RetentionPolicy::new(
            vec![],
            vec![
                Rule {
                    pattern: "trade.*".into(),
                    class: "sec-17a-4-a".into(),
                },
                Rule {
                    pattern: "*.comm".into(),
                    class: "sec-17a-4-b".into(),
                },
                Rule {
                    pattern: "swap.*".into(),
                    class: "cftc-1-31".into(),
                },
            ],
            Some("sec-17a-4-b".into()),
        )
        .unwrap();
        let t = ts("2026-11-20T00:00:00Z");
        let r = |a: &str, e: Option<&str>| policy.resolve(a, e, t).unwrap();
        assert_eq!(&*r("trade.amend", None).class, "sec-17a-4-a");
        assert_eq!(
            &*r("trade.comm", None).class,
            "sec-17a-4-a",
            "longest of two matches"
        );
        assert_eq!(&*r("login", None).class, "sec-17a-4-b", "default");
        assert_eq!(
            &*r("login", Some("finra-4511")).class,
            "finra-4511",
            "longer explicit honoured"
        );
        let shorter = r("trade.amend", Some("sec-17a-4-b"));
        assert_eq!(&*shorter.class, "sec-17a-4-a");
        assert!(shorter.note.unwrap().contains("shorter"));
        assert!(
            policy
                .resolve("x", Some("nope"), t)
                .unwrap_err()
                .contains("unknown retention class")
        );
    }

    #[test]
    fn shipped_classes_cannot_be_shortened() {
        let short = RetentionClass {
            name: "sec-17a-4-a".into(),
            period: Period::years(5),
            description: String::new(),
        };
        assert!(
            RetentionPolicy::new(vec![short], vec![], None)
                .unwrap_err()
                .contains("never shortened")
        );
        let bad_rule = Rule {
            pattern: "a".into(),
            class: "missing".into(),
        };
        assert!(
            RetentionPolicy::new(vec![], vec![bad_rule], None)
                .unwrap_err()
                .contains("unknown")
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("trade.*", "trade.amend"));
        assert!(glob_match("trade.*", "trade."));
        assert!(!glob_match("trade.*", "trades.amend"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*.cancel", "order.leg.cancel"));
        assert!(glob_match("order.?", "order.x"));
        assert!(!glob_match("order.?", "order.xy"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }
}
