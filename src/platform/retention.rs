//! Retention, with restic's semantics: over an org's completed scheduled exports,
//! keep the newest one of each of the last `daily` days that have one, of the last
//! `weekly` ISO weeks (Monday to Sunday) that have one, and of the last `monthly`
//! months that have one, in the platform timezone. The three sets are unioned, and
//! the newest export is always kept. A pure function: the pruner and the previews
//! call it with what the database holds.

use std::fmt;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;

pub use crate::settings::Policy;

/// Why an export is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Newest,
    Daily,
    Weekly,
    Monthly,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Newest => "newest",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
        })
    }
}

/// One export's fate: the rules that keep it, or none ("will be removed").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<K> {
    pub id: K,
    pub at: DateTime<Utc>,
    pub keep: Vec<Rule>,
}

impl<K> Decision<K> {
    pub fn is_kept(&self) -> bool {
        !self.keep.is_empty()
    }

    /// "kept: daily, weekly" or "will be removed".
    pub fn describe(&self) -> String {
        if self.keep.is_empty() {
            "will be removed".to_string()
        } else {
            format!("kept: {}", self.keep.iter().map(Rule::to_string).collect::<Vec<_>>().join(", "))
        }
    }
}

/// The period an instant falls in, per rule, in the platform timezone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Period {
    Day(i32, u32),
    Week(i32, u32),
    Month(i32, u32),
}

fn period(rule: Rule, at: DateTime<Utc>, tz: Tz) -> Period {
    let local = at.with_timezone(&tz);
    match rule {
        Rule::Daily => Period::Day(local.year(), local.ordinal()),
        Rule::Weekly => {
            let w = local.iso_week();
            Period::Week(w.year(), w.week())
        }
        Rule::Monthly | Rule::Newest => Period::Month(local.year(), local.month()),
    }
}

/// Decides, newest first, which exports to keep. `exports` may come in any order;
/// equal instants are ordered by id, the larger (later ULID) first.
pub fn decide<K: Clone + Ord>(exports: &[(K, DateTime<Utc>)], policy: Policy, tz: Tz) -> Vec<Decision<K>> {
    let mut sorted: Vec<&(K, DateTime<Utc>)> = exports.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut buckets =
        [(Rule::Daily, policy.daily, None), (Rule::Weekly, policy.weekly, None), (Rule::Monthly, policy.monthly, None)];
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, (id, at))| {
            let mut keep = Vec::new();
            if i == 0 {
                keep.push(Rule::Newest);
            }
            for (rule, remaining, last) in buckets.iter_mut() {
                if *remaining == 0 {
                    continue;
                }
                let p = period(*rule, *at, tz);
                if *last != Some(p) {
                    keep.push(*rule);
                    *last = Some(p);
                    *remaining -= 1;
                }
            }
            Decision { id: id.clone(), at: *at, keep }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Rule::*, *};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Runs `decide` over exports named by their instants and returns, newest first,
    /// (instant, rules).
    fn run(instants: &[&str], policy: (u32, u32, u32), tz: Tz) -> Vec<(String, Vec<Rule>)> {
        let exports: Vec<(usize, DateTime<Utc>)> = instants.iter().enumerate().map(|(i, s)| (i, utc(s))).collect();
        let policy = Policy { daily: policy.0, weekly: policy.1, monthly: policy.2 };
        decide(&exports, policy, tz).into_iter().map(|d| (instants[d.id].to_string(), d.keep)).collect()
    }

    fn kept(result: &[(String, Vec<Rule>)]) -> Vec<&str> {
        result.iter().filter(|(_, k)| !k.is_empty()).map(|(s, _)| s.as_str()).collect()
    }

    struct Case {
        name: &'static str,
        tz: &'static str,
        policy: (u32, u32, u32),
        exports: &'static [&'static str],
        /// (instant, rules) for every export, newest first.
        expect: &'static [(&'static str, &'static [Rule])],
    }

    const CASES: &[Case] = &[
        Case { name: "empty", tz: "UTC", policy: (7, 4, 6), exports: &[], expect: &[] },
        Case {
            name: "all counts zero keeps only the newest",
            tz: "UTC",
            policy: (0, 0, 0),
            exports: &["2026-11-01T02:00:00Z", "2026-11-02T02:00:00Z", "2026-11-03T02:00:00Z"],
            expect: &[
                ("2026-11-03T02:00:00Z", &[Newest]),
                ("2026-11-02T02:00:00Z", &[]),
                ("2026-11-01T02:00:00Z", &[]),
            ],
        },
        Case {
            name: "several exports on one day: the day's newest counts",
            tz: "UTC",
            policy: (2, 0, 0),
            exports: &[
                "2026-11-02T00:00:00Z",
                "2026-11-02T12:00:00Z",
                "2026-11-03T00:00:00Z",
                "2026-11-03T12:00:00Z",
                "2026-11-01T12:00:00Z",
            ],
            expect: &[
                ("2026-11-03T12:00:00Z", &[Newest, Daily]),
                ("2026-11-03T00:00:00Z", &[]),
                ("2026-11-02T12:00:00Z", &[Daily]),
                ("2026-11-02T00:00:00Z", &[]),
                ("2026-11-01T12:00:00Z", &[]),
            ],
        },
        Case {
            name: "gaps: days without an export do not use up the count",
            tz: "UTC",
            policy: (3, 0, 0),
            exports: &["2026-11-20T02:00:00Z", "2026-11-10T02:00:00Z", "2026-11-01T02:00:00Z", "2026-10-01T02:00:00Z"],
            expect: &[
                ("2026-11-20T02:00:00Z", &[Newest, Daily]),
                ("2026-11-10T02:00:00Z", &[Daily]),
                ("2026-11-01T02:00:00Z", &[Daily]),
                ("2026-10-01T02:00:00Z", &[]),
            ],
        },
        Case {
            // 2026-11-29 is a Sunday, 2026-11-30 a Monday: a new ISO week starts there.
            name: "ISO weeks run Monday to Sunday",
            tz: "UTC",
            policy: (0, 2, 0),
            exports: &[
                "2026-11-23T02:00:00Z", // Monday, week 48
                "2026-11-29T02:00:00Z", // Sunday, week 48
                "2026-11-30T02:00:00Z", // Monday, week 49
                "2026-11-22T02:00:00Z", // Sunday, week 47
            ],
            expect: &[
                ("2026-11-30T02:00:00Z", &[Newest, Weekly]),
                ("2026-11-29T02:00:00Z", &[Weekly]),
                ("2026-11-23T02:00:00Z", &[]),
                ("2026-11-22T02:00:00Z", &[]),
            ],
        },
        Case {
            // 2027-01-01 is a Friday in ISO week 53 of 2026; so are Dec 28 to 31.
            name: "ISO week across the year end",
            tz: "UTC",
            policy: (0, 2, 0),
            exports: &["2027-01-01T02:00:00Z", "2026-12-28T02:00:00Z", "2026-12-27T02:00:00Z", "2027-01-04T02:00:00Z"],
            expect: &[
                ("2027-01-04T02:00:00Z", &[Newest, Weekly]),
                ("2027-01-01T02:00:00Z", &[Weekly]),
                ("2026-12-28T02:00:00Z", &[]),
                ("2026-12-27T02:00:00Z", &[]),
            ],
        },
        Case {
            name: "month ends: the last day of each month is that month's newest",
            tz: "UTC",
            policy: (0, 0, 3),
            exports: &[
                "2026-01-31T02:00:00Z",
                "2026-02-01T02:00:00Z",
                "2026-02-28T02:00:00Z",
                "2026-03-01T02:00:00Z",
                "2026-03-31T02:00:00Z",
                "2026-04-01T02:00:00Z",
            ],
            expect: &[
                ("2026-04-01T02:00:00Z", &[Newest, Monthly]),
                ("2026-03-31T02:00:00Z", &[Monthly]),
                ("2026-03-01T02:00:00Z", &[]),
                ("2026-02-28T02:00:00Z", &[Monthly]),
                ("2026-02-01T02:00:00Z", &[]),
                ("2026-01-31T02:00:00Z", &[]),
            ],
        },
        Case {
            // 23:30 UTC on Jan 31 is already Feb 1 in Berlin.
            name: "month boundary in the platform timezone",
            tz: "Europe/Berlin",
            policy: (0, 0, 2),
            exports: &["2026-01-31T23:30:00Z", "2026-01-31T22:30:00Z", "2026-01-15T02:00:00Z"],
            expect: &[
                ("2026-01-31T23:30:00Z", &[Newest, Monthly]),
                ("2026-01-31T22:30:00Z", &[Monthly]),
                ("2026-01-15T02:00:00Z", &[]),
            ],
        },
        Case {
            // Berlin, 2026-03-29: clocks jump 02:00 -> 03:00. 22:30 UTC on the 28th
            // is 23:30 CET on the 28th; 22:30 UTC on the 29th is 00:30 CEST on the 30th.
            name: "DST spring forward in a non-UTC zone",
            tz: "Europe/Berlin",
            policy: (3, 0, 0),
            exports: &["2026-03-28T22:30:00Z", "2026-03-29T00:30:00Z", "2026-03-29T21:59:00Z", "2026-03-29T22:30:00Z"],
            expect: &[
                ("2026-03-29T22:30:00Z", &[Newest, Daily]), // Mar 30, 00:30 CEST
                ("2026-03-29T21:59:00Z", &[Daily]),         // Mar 29, 23:59 CEST
                ("2026-03-29T00:30:00Z", &[]),              // Mar 29, 01:30 CET
                ("2026-03-28T22:30:00Z", &[Daily]),         // Mar 28, 23:30 CET
            ],
        },
        Case {
            // New York, 2026-11-01: clocks fall back 02:00 -> 01:00 (EDT -> EST). The
            // day is 25 hours long: 04:00 UTC to 05:00 UTC next day.
            name: "DST fall back in a non-UTC zone",
            tz: "America/New_York",
            policy: (2, 0, 0),
            exports: &["2026-11-01T04:30:00Z", "2026-11-02T04:30:00Z", "2026-11-02T05:30:00Z", "2026-10-31T12:00:00Z"],
            expect: &[
                ("2026-11-02T05:30:00Z", &[Newest, Daily]), // Nov 2, 00:30 EST
                ("2026-11-02T04:30:00Z", &[Daily]),         // Nov 1, 23:30 EST
                ("2026-11-01T04:30:00Z", &[]),              // Nov 1, 00:30 EDT
                ("2026-10-31T12:00:00Z", &[]),
            ],
        },
        Case {
            name: "the three rules union",
            tz: "UTC",
            policy: (2, 2, 2),
            exports: &[
                "2026-10-30T02:00:00Z",
                "2026-11-20T02:00:00Z",
                "2026-11-27T02:00:00Z",
                "2026-11-28T02:00:00Z",
                "2026-11-29T02:00:00Z",
            ],
            expect: &[
                ("2026-11-29T02:00:00Z", &[Newest, Daily, Weekly, Monthly]),
                ("2026-11-28T02:00:00Z", &[Daily]),
                ("2026-11-27T02:00:00Z", &[]),
                ("2026-11-20T02:00:00Z", &[Weekly]),
                ("2026-10-30T02:00:00Z", &[Monthly]),
            ],
        },
    ];

    #[test]
    fn table() {
        for case in CASES {
            let tz: Tz = case.tz.parse().unwrap();
            let got = run(case.exports, case.policy, tz);
            let want: Vec<(String, Vec<Rule>)> = case.expect.iter().map(|(s, r)| (s.to_string(), r.to_vec())).collect();
            assert_eq!(got, want, "case: {}", case.name);
        }
    }

    #[test]
    fn order_of_input_does_not_matter_and_ties_break_by_id() {
        let a = run(&["2026-11-02T02:00:00Z", "2026-11-01T02:00:00Z"], (1, 0, 0), chrono_tz::UTC);
        let b = run(&["2026-11-01T02:00:00Z", "2026-11-02T02:00:00Z"], (1, 0, 0), chrono_tz::UTC);
        assert_eq!(a, b);
        let same = [("A".to_string(), utc("2026-11-01T02:00:00Z")), ("B".to_string(), utc("2026-11-01T02:00:00Z"))];
        let d = decide(&same, Policy { daily: 1, weekly: 0, monthly: 0 }, chrono_tz::UTC);
        assert_eq!(d[0].id, "B");
        assert_eq!(d[0].keep, vec![Newest, Daily]);
        assert!(!d[1].is_kept());
    }

    #[test]
    fn pruning_twice_removes_nothing_more() {
        let instants = [
            "2026-09-01T02:00:00Z",
            "2026-10-05T02:00:00Z",
            "2026-11-20T02:00:00Z",
            "2026-11-26T02:00:00Z",
            "2026-11-26T14:00:00Z",
            "2026-11-27T02:00:00Z",
        ];
        let first = run(&instants, (2, 1, 2), chrono_tz::UTC);
        let survivors = kept(&first);
        assert_eq!(survivors, vec!["2026-11-27T02:00:00Z", "2026-11-26T14:00:00Z", "2026-10-05T02:00:00Z"]);
        let second = run(&survivors, (2, 1, 2), chrono_tz::UTC);
        assert_eq!(kept(&second), survivors);
    }

    #[test]
    fn descriptions() {
        let d = Decision { id: 1, at: utc("2026-11-27T02:00:00Z"), keep: vec![Newest, Daily] };
        assert_eq!(d.describe(), "kept: newest, daily");
        let d = Decision { id: 1, at: utc("2026-11-27T02:00:00Z"), keep: vec![] };
        assert_eq!(d.describe(), "will be removed");
    }
}
