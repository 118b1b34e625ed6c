//! Service-level objectives declared on journeys (or agent-wide), and
//! `vantage slo generate`: Prometheus recording and alerting rules, their
//! `promtool test rules` cases, and the same objectives for Sloth and OpenSLO.
//!
//! The rules read the names `/metrics` and the Collector's translation share
//! (`synthetics_journey_runs_total`, `synthetics_journey_duration_seconds`,
//! `synthetics_journey_last_run_timestamp_seconds`; labels `journey_name`,
//! `synthetics_location`, `outcome`, `error_type`, `le`).

pub mod formats;
pub mod rules;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_saphyr::Location;

use crate::config::{AgentConfig, Diagnostic, Journey};
pub use crate::config::slo as spec;
pub use spec::{AgentSloSpec, SloSpec};

const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_MIN_LOCATIONS: u32 = 2;

/// One journey's objectives, resolved from its own `slo` and the agent's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct JourneySlo {
    pub journey: String,
    pub team: String,
    pub interval: Duration,
    /// Objective as a ratio (0.995), and the SLO period.
    pub availability: Option<(f64, Duration)>,
    /// Objective ratio, threshold in seconds, period.
    pub latency: Option<(f64, f64, Duration)>,
    pub min_locations: u32,
    /// Locations expected to run the journey (journey `locations`, else the agent's `slo.locations`).
    pub locations: Vec<String>,
}

/// Everything the generator needs besides the time profile.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub journeys: Vec<JourneySlo>,
    /// Every location the fleet should report from.
    pub locations: Vec<String>,
    /// Team for alerts about a whole location (agent `slo.team`).
    pub fleet_team: String,
    /// Annotation name → Prometheus template (e.g. a trace search URL).
    pub links: BTreeMap<String, String>,
}

/// Resolves every journey's objectives; reports every inconsistency (a latency
/// threshold that is not a bucket bound, more `min_locations` than locations, …)
/// with the file, line and column it comes from.
pub fn resolve(agent: &AgentConfig, agent_file: Option<&Path>, journeys: &[Journey]) -> Result<Plan, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let d = &agent.slo;
    let agent_file = agent_file.map(Path::to_path_buf).unwrap_or_else(|| "agent config".into());
    let mut at = |file: &Path, (line, column): (u64, u64), message: String| diags.push(Diagnostic { file: file.to_path_buf(), line, column, message });
    let pos = |l: Location| (l.line().max(1), l.column().max(1));
    if let Some(a) = &d.availability {
        if let Err(m) = spec::check_objective(a.objective.value) {
            at(&agent_file, pos(a.objective.referenced), format!("`slo.availability.objective`: {m}"));
        }
    }
    if let Some(l) = &d.latency {
        if let Err(m) = spec::check_objective(l.objective.value) {
            at(&agent_file, pos(l.objective.referenced), format!("`slo.latency.objective`: {m}"));
        }
    }
    if d.min_locations == Some(0) {
        at(&agent_file, (1, 1), "`slo.min_locations`: expected at least 1".into());
    }
    let mut out = Vec::new();
    for j in journeys {
        let (file, here) = split_source(&j.source);
        let own = j.slo.as_ref();
        for (field, o) in [
            ("availability", own.and_then(|s| s.availability.as_ref()).map(|a| &a.objective)),
            ("latency", own.and_then(|s| s.latency.as_ref()).map(|l| &l.objective)),
        ] {
            if let Some(Err(m)) = o.map(|o| spec::check_objective(o.value)) {
                at(Path::new(&file), pos(o.map(|o| o.referenced).unwrap_or(Location::UNKNOWN)), format!("journey `{}`: `slo.{field}.objective`: {m}", j.name));
            }
        }
        let avail = own.and_then(|s| s.availability.as_ref()).or(d.availability.as_ref());
        let lat_own = own.and_then(|s| s.latency.as_ref());
        let latency = lat_own.or(d.latency.as_ref());
        let window = |w: &Option<crate::config::Dur>| w.map(|w| w.0).unwrap_or(DEFAULT_WINDOW);
        let availability = avail.map(|a| (a.objective.value / 100.0, window(&a.window)));
        let mut lat = None;
        if let Some(l) = latency {
            let t = l.threshold.value.0.as_secs_f64();
            let bounds = j.buckets.clone().unwrap_or_default();
            if !bounds.iter().any(|b| (b - t).abs() < 1e-9) {
                let (f, loc) =
                    if lat_own.is_some() { (std::path::PathBuf::from(&file), l.threshold.referenced) } else { (agent_file.clone(), l.threshold.referenced) };
                let shown: Vec<String> = bounds.iter().map(|b| crate::telemetry::prometheus::fmt_num(*b)).collect();
                at(
                    Path::new(&f),
                    pos(loc),
                    format!(
                        "journey `{}`: `slo.latency.threshold`: expected one of the journey's `buckets` bounds, so the histogram can count runs under it; got {} (buckets: [{}]); add {} to `buckets`",
                        j.name,
                        humantime::format_duration(l.threshold.value.0),
                        shown.join(", "),
                        crate::telemetry::prometheus::fmt_num(t)
                    ),
                );
            }
            let w = availability.map(|a| a.1).unwrap_or(DEFAULT_WINDOW);
            lat = Some((l.objective.value / 100.0, t, l.window.map(|x| x.0).unwrap_or(w)));
        }
        let locations = j.locations.clone().unwrap_or_else(|| d.locations.clone());
        let min_locations = own.and_then(|s| s.min_locations).or(d.min_locations).unwrap_or(DEFAULT_MIN_LOCATIONS);
        if let Some(s) = own {
            if s.min_locations == Some(0) {
                at(Path::new(&file), here, format!("journey `{}`: `slo.min_locations`: expected at least 1", j.name));
            }
        }
        if (availability.is_some() || lat.is_some()) && !locations.is_empty() && min_locations as usize > locations.len() {
            at(
                Path::new(&file),
                here,
                format!(
                    "journey `{}`: `slo.min_locations` is {min_locations} but only {} location(s) are expected ({}): the page could never fire; lower it or list more `locations`",
                    j.name,
                    locations.len(),
                    locations.join(", ")
                ),
            );
        }
        let team = own.and_then(|s| s.team.clone()).or_else(|| j.labels.get("team").cloned()).or_else(|| d.team.clone()).unwrap_or_default();
        out.push(JourneySlo { journey: j.name.clone(), team, interval: j.interval, availability, latency: lat, min_locations, locations });
    }
    let mut locations: Vec<String> = d.locations.clone();
    for j in &out {
        locations.extend(j.locations.iter().cloned());
    }
    locations.sort();
    locations.dedup();
    if diags.is_empty() {
        Ok(Plan { journeys: out, locations, fleet_team: d.team.clone().unwrap_or_default(), links: d.links.clone() })
    } else {
        Err(diags)
    }
}

/// `file:line:column` → (file, (line, column)).
fn split_source(source: &str) -> (String, (u64, u64)) {
    let mut parts = source.rsplitn(3, ':');
    let (col, line, file) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(source));
    (file.to_string(), (line.parse().unwrap_or(1).max(1), col.parse().unwrap_or(1).max(1)))
}

/// Output of `vantage slo generate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Prometheus recording + alerting rules, and `promtool test rules` cases for them.
    Prometheus,
    /// A Sloth `prometheus/v1` spec.
    Sloth,
    /// OpenSLO v1 `SLO` documents.
    Openslo,
}

/// What `vantage slo generate` was asked for.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub config: Option<std::path::PathBuf>,
    pub paths: Vec<std::path::PathBuf>,
    pub out: Option<std::path::PathBuf>,
    pub format: Format,
    pub windows: Option<String>,
    pub time_scale: u32,
    pub interval: Option<Duration>,
}

/// Writes the files; `Ok(Err(problems))` when the config or objectives are wrong.
pub fn generate(o: &GenerateOptions) -> anyhow::Result<Result<(), Vec<Diagnostic>>> {
    use anyhow::Context;
    let loaded = match crate::config::load(o.config.as_deref(), &o.paths) {
        Ok(l) => l,
        Err(d) => return Ok(Err(d)),
    };
    let plan = match resolve(&loaded.agent, o.config.as_deref(), &loaded.journeys) {
        Ok(p) => p,
        Err(d) => return Ok(Err(d)),
    };
    let mut profile = Profile::default();
    if let Some(w) = &o.windows {
        profile = profile.with_windows(w).map_err(anyhow::Error::msg)?;
    }
    let mut profile = profile.scaled(o.time_scale);
    if let Some(i) = o.interval {
        profile.interval = i;
    }
    if profile.windows()[0] < profile.interval * 2 {
        anyhow::bail!(
            "the shortest window ({}) must span at least two evaluation intervals ({}): rate() needs two samples",
            prom_duration(profile.windows()[0]),
            prom_duration(profile.interval)
        );
    }
    let with_slo = plan.journeys.iter().filter(|j| j.availability.is_some() || j.latency.is_some()).count();
    let header = format!(
        "Written by `vantage slo generate` (vantage {}) for {} journeys ({with_slo} with objectives).\nDo not edit: change the journeys' `slo` (or the agent's) and generate again.\nWindows: page {}, ticket {}{}.",
        env!("CARGO_PKG_VERSION"),
        plan.journeys.len(),
        windows_text(&profile.page),
        windows_text(&profile.ticket),
        if profile.scale > 1 { format!("; time-compressed 1/{} (tests only)", profile.scale) } else { String::new() }
    );
    let write = |path: &Path, text: &str| -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    let text = match o.format {
        Format::Prometheus => rules::to_yaml(&rules::generate(&plan, &profile), &header),
        Format::Sloth => formats::sloth(&plan),
        Format::Openslo => formats::openslo(&plan),
    };
    let Some(out) = &o.out else {
        print!("{text}");
        return Ok(Ok(()));
    };
    match o.format {
        Format::Prometheus => {
            // Tests live in their own directory: a `rules/*.yaml` glob must never load them as rules.
            let rules_path = out.join("rules").join("vantage-slo.yaml");
            write(&rules_path, &text)?;
            eprintln!("wrote {}", rules_path.display());
            if let Some(t) = rules::tests_yaml(&plan, &profile, "../rules/vantage-slo.yaml") {
                let tests_path = out.join("tests").join("vantage-slo.test.yaml");
                write(&tests_path, &t)?;
                eprintln!("wrote {} (run: promtool test rules {})", tests_path.display(), tests_path.display());
            }
        }
        Format::Sloth | Format::Openslo => {
            let name = if o.format == Format::Sloth { "vantage-slo.sloth.yaml" } else { "vantage-slo.openslo.yaml" };
            let path = out.join(name);
            write(&path, &text)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(Ok(()))
}

fn windows_text(w: &[BurnWindow]) -> String {
    w.iter()
        .map(|w| format!("{}/{}@{}", prom_duration(w.long), prom_duration(w.short), crate::telemetry::prometheus::fmt_num(w.factor)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One multiwindow burn-rate condition: both windows above `factor` × budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurnWindow {
    pub long: Duration,
    pub short: Duration,
    pub factor: f64,
}

/// The time profile of the generated rules. Production uses the SRE
/// workbook's windows; tests divide every duration by `scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub page: Vec<BurnWindow>,
    pub ticket: Vec<BurnWindow>,
    /// Rule evaluation interval of the generated groups.
    pub interval: Duration,
    /// `for:` of pages, tickets and no-result alerts.
    pub page_for: Duration,
    pub ticket_for: Duration,
    pub silence_for: Duration,
    /// Every window and `for` above is already divided by it; SLO periods are divided too.
    pub scale: u32,
}

impl Default for Profile {
    fn default() -> Self {
        let w = |l: u64, s: u64, f: f64| BurnWindow { long: Duration::from_secs(l), short: Duration::from_secs(s), factor: f };
        Profile {
            page: vec![w(3600, 300, 14.4), w(6 * 3600, 1800, 6.0)],
            ticket: vec![w(24 * 3600, 2 * 3600, 3.0), w(3 * 24 * 3600, 6 * 3600, 1.0)],
            interval: Duration::from_secs(60),
            page_for: Duration::from_secs(120),
            ticket_for: Duration::from_secs(900),
            silence_for: Duration::from_secs(300),
            scale: 1,
        }
    }
}

impl Profile {
    /// Parses `--windows`: page pairs `;` ticket pairs, each `LONG/SHORT@FACTOR`,
    /// e.g. the default `1h/5m@14.4,6h/30m@6;1d/2h@3,3d/6h@1`.
    pub fn with_windows(mut self, spec: &str) -> Result<Profile, String> {
        let (page, ticket) =
            spec.split_once(';').ok_or_else(|| format!("`--windows`: expected PAGE;TICKET pairs like `1h/5m@14.4,6h/30m@6;1d/2h@3,3d/6h@1`, got `{spec}`"))?;
        let pairs = |s: &str| -> Result<Vec<BurnWindow>, String> {
            s.split(',')
                .map(|p| {
                    let bad = || format!("`--windows`: expected LONG/SHORT@FACTOR like `1h/5m@14.4`, got `{p}`");
                    let (ws, f) = p.trim().split_once('@').ok_or_else(bad)?;
                    let (l, sh) = ws.split_once('/').ok_or_else(bad)?;
                    let long = humantime::parse_duration(l.trim()).map_err(|_| bad())?;
                    let short = humantime::parse_duration(sh.trim()).map_err(|_| bad())?;
                    let factor: f64 = f.trim().parse().map_err(|_| bad())?;
                    if short.is_zero() || long < short || factor <= 0.0 {
                        return Err(format!("`--windows`: `{p}`: expected 0 < SHORT <= LONG and a positive factor"));
                    }
                    Ok(BurnWindow { long, short, factor })
                })
                .collect()
        };
        self.page = pairs(page)?;
        self.ticket = pairs(ticket)?;
        Ok(self)
    }

    /// Divides every duration by `scale` (a time-compressed profile for tests).
    pub fn scaled(mut self, scale: u32) -> Profile {
        let s = scale.max(1);
        let d = |x: Duration| Duration::from_millis((x.as_millis() as u64 / s as u64).max(1));
        for w in self.page.iter_mut().chain(self.ticket.iter_mut()) {
            w.long = d(w.long);
            w.short = d(w.short);
        }
        self.interval = d(self.interval);
        self.page_for = d(self.page_for);
        self.ticket_for = d(self.ticket_for);
        self.silence_for = d(self.silence_for);
        self.scale = s;
        self
    }

    /// An SLO period under this profile's scale.
    pub fn period(&self, p: Duration) -> Duration {
        Duration::from_millis((p.as_millis() as u64 / self.scale as u64).max(1))
    }

    /// Every window used, shortest first; the shortest is the base rate window.
    pub fn windows(&self) -> Vec<Duration> {
        let mut w: Vec<Duration> = self.page.iter().chain(&self.ticket).flat_map(|b| [b.long, b.short]).collect();
        w.sort();
        w.dedup();
        w
    }
}

/// A duration the way PromQL writes it: `5m`, `1h30m`, `2500ms`.
pub fn prom_duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("y", 365 * 86_400_000u64), ("w", 7 * 86_400_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_promql() {
        assert_eq!(prom_duration(Duration::from_secs(300)), "5m");
        assert_eq!(prom_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(prom_duration(Duration::from_millis(2500)), "2s500ms");
        assert_eq!(prom_duration(Duration::from_secs(3 * 86400)), "3d");
        assert_eq!(prom_duration(Duration::from_secs(30 * 86400)), "4w2d");
    }

    #[test]
    fn windows_parse_and_scale() {
        let p = Profile::default().with_windows("1h/5m@14.4,6h/30m@6;1d/2h@3,3d/6h@1").unwrap();
        assert_eq!(p, Profile::default());
        let s = p.scaled(60);
        assert_eq!(s.page[0].long, Duration::from_secs(60));
        assert_eq!(s.page[0].short, Duration::from_secs(5));
        assert_eq!(s.windows()[0], Duration::from_secs(5));
        assert_eq!(s.period(Duration::from_secs(30 * 86400)), Duration::from_secs(12 * 3600));
        assert!(Profile::default().with_windows("1h/5m@14.4").is_err());
        assert!(Profile::default().with_windows("5m/1h@2;1d/2h@3").unwrap_err().contains("SHORT <= LONG"));
    }

    #[test]
    fn sources_split_into_file_and_position() {
        assert_eq!(split_source("probes/a:b.yaml:3:5"), ("probes/a:b.yaml".into(), (3, 5)));
    }
}
