//! Cron schedules of `triggers.schedule`: parsing (with croner) and the next fire time in a
//! timezone (with jiff).
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    tz: TimeZone,
}

impl CronSchedule {
    /// Parse a 5-field (or 6-field, seconds first) expression and an IANA timezone (UTC when
    /// `None`).
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| format!("bad cron expression {expr:?}: {e}"))?;
        let tz = match timezone {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|e| format!("unknown timezone {name:?}: {e}"))?
            }
        };
        Ok(CronSchedule { cron, tz })
    }

    /// Whether `at` falls in a minute (or second, with six fields) the expression matches:
    /// a deployment window is open at `at`.
    pub fn matches(&self, at: Timestamp) -> bool {
        let zoned = at.to_zoned(self.tz.clone());
        self.cron.is_time_matching(&zoned).unwrap_or(false)
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let zoned = after.to_zoned(self.tz.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_its_timezone() {
        let at: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        // 03:00 in Berlin (UTC+1 in winter) is 02:00 UTC.
        let s = CronSchedule::parse("0 3 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            s.next_after(at).unwrap().to_string(),
            "2026-03-01T02:00:00Z"
        );
        // Six fields: seconds first.
        let s = CronSchedule::parse("*/10 * * * * *", None).unwrap();
        assert_eq!(
            s.next_after(at).unwrap().to_string(),
            "2026-03-01T00:00:10Z"
        );
        assert!(
            CronSchedule::parse("61 * * * *", None)
                .unwrap_err()
                .contains("bad cron")
        );
        assert!(
            CronSchedule::parse("* * * * *", Some("Mars/Base"))
                .unwrap_err()
                .contains("unknown timezone")
        );
    }
}
