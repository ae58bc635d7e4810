//! [`Metrics`]: the Prometheus text served at `/metrics`.

use std::fmt::Write as _;

/// Prometheus text exposition (format 0.0.4), built by the binaries on each
/// request to `/metrics`.
///
/// Samples of one name are grouped under one `# HELP` and `# TYPE` (the
/// first call for a name sets them), in the order names first appear.
/// Names are made valid (other characters become `_`), help text and label
/// values are escaped.
#[derive(Default)]
pub struct Metrics {
    /// Families in order of first appearance.
    families: Vec<Family>,
}

/// One metric name with its samples.
struct Family {
    name: String,
    help: String,
    kind: &'static str,
    /// Sample lines, each ending in a newline.
    samples: String,
}

impl Metrics {
    /// Adds counter `name` (by convention ending in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        let (name, samples) = self.family(name, help, "counter");
        let _ = writeln!(samples, "{name} {value}");
        self
    }

    /// Adds gauge `name`.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.gauge_labeled(name, help, &[], value)
    }

    /// Adds one sample of gauge `name` with `labels`; call it once per
    /// label set.
    pub fn gauge_labeled(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Self {
        let (name, samples) = self.family(name, help, "gauge");
        samples.push_str(&name);
        if !labels.is_empty() {
            samples.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    samples.push(',');
                }
                samples.push_str(&sanitize(k, false));
                samples.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => samples.push_str("\\\\"),
                        '"' => samples.push_str("\\\""),
                        '\n' => samples.push_str("\\n"),
                        c => samples.push(c),
                    }
                }
                samples.push('"');
            }
            samples.push('}');
        }
        let _ = writeln!(samples, " {}", float(value));
        self
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for f in self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            out.push_str(&f.samples);
        }
        out
    }

    /// The (valid) name and sample lines of family `name`, created on first use.
    fn family(&mut self, name: &str, help: &str, kind: &'static str) -> (String, &mut String) {
        let name = sanitize(name, true);
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name: name.clone(),
                    help: help.replace('\\', "\\\\").replace('\n', "\\n"),
                    kind,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        (name, &mut self.families[i].samples)
    }
}

/// `name` as a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or, without
/// `colon`, label name (no `:`).
fn sanitize(name: &str, colon: bool) -> String {
    let mut s: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => c,
            ':' if colon => c,
            _ => '_',
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// A sample value as Prometheus writes it.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_follows_the_exposition_format() {
        let mut m = Metrics::default();
        m.counter("p2p_bytes_total", "Bytes sent.", 42)
            .gauge_labeled(
                "p2p_peer_rtt_seconds",
                "RTT \\ per peer.\nIn seconds.",
                &[("peer", "a\"b\\c\nd"), ("bad-label", "x")],
                0.25,
            )
            .gauge("p2p_viewers", "Viewers.", 3.0)
            .gauge_labeled(
                "p2p_peer_rtt_seconds",
                "ignored",
                &[("peer", "e")],
                f64::INFINITY,
            )
            .gauge("9 bad", "Odd.", f64::NAN)
            .gauge("neg", "Negative.", f64::NEG_INFINITY);
        assert_eq!(
            m.finish(),
            "# HELP p2p_bytes_total Bytes sent.\n\
             # TYPE p2p_bytes_total counter\n\
             p2p_bytes_total 42\n\
             # HELP p2p_peer_rtt_seconds RTT \\\\ per peer.\\nIn seconds.\n\
             # TYPE p2p_peer_rtt_seconds gauge\n\
             p2p_peer_rtt_seconds{peer=\"a\\\"b\\\\c\\nd\",bad_label=\"x\"} 0.25\n\
             p2p_peer_rtt_seconds{peer=\"e\"} +Inf\n\
             # HELP p2p_viewers Viewers.\n\
             # TYPE p2p_viewers gauge\n\
             p2p_viewers 3\n\
             # HELP _9_bad Odd.\n\
             # TYPE _9_bad gauge\n\
             _9_bad NaN\n\
             # HELP neg Negative.\n\
             # TYPE neg gauge\n\
             neg -Inf\n"
        );
        assert_eq!(Metrics::default().finish(), "");
    }
}
